"""The released package: what `python -m build` makes is what a user gets.

One module-scoped build (sdist and wheel, as a release makes them) and one fresh virtual
environment with only the wheel installed, no extra: `twine check` accepts both files, the
wheel carries `py.typed`, every module imports without the dev, bench or other extras
(except those documented as needing one, which then name what is missing), and the
installed `foxwork` command reports the version of pyproject.toml and runs the demo.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: Seconds the build, or the install into the fresh venv, may take.
STEP_TIMEOUT = 300.0

#: Modules that need an extra (or a tool), and what their ImportError must name then.
OPTIONAL_MODULES = {
    "foxwork.backends.redis": "pip install 'foxwork[redis]'",
    "foxwork.telemetry.prometheus": "pip install 'foxwork[otel]'",
    "foxwork.testing": "pytest",
}

_IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
import foxwork
results = {}
for info in pkgutil.walk_packages(foxwork.__path__, "foxwork."):
    try:
        importlib.import_module(info.name)
    except ImportError as exc:
        results[info.name] = f"{type(exc).__name__}: {exc}"
    else:
        results[info.name] = None
print(json.dumps(results))
"""


def _project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as file:
        version: str = tomllib.load(file)["project"]["version"]
    return version


def _run(*command: str | Path, timeout: float = STEP_TIMEOUT) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob("foxwork-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Path]:
    """The bin directory of a fresh venv holding the wheel and its dependencies only."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, with_pip=True)
    bin_dir = env / "bin"
    _run(
        bin_dir / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel
    )
    yield bin_dir


def test_twine_accepts_the_sdist_and_the_wheel(dist: Path) -> None:
    files = sorted(dist.iterdir(), key=lambda f: f.name.endswith(".whl"))
    assert [f.name.endswith(".tar.gz") for f in files] == [True, False]
    output = _run(sys.executable, "-m", "twine", "check", "--strict", *files)
    assert output.count("PASSED") == 2, output


def test_the_wheel_ships_the_typing_marker_and_no_tests(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "foxwork/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))]
    assert wheel.name.startswith(f"foxwork-{_project_version()}-")


def test_every_module_imports_without_any_extra(installed: Path) -> None:
    import json

    results: dict[str, str | None] = json.loads(
        _run(installed / "python", "-c", _IMPORT_EVERY_MODULE, timeout=60)
    )
    assert "foxwork.cli" in results  # the walk found the package's modules
    for name, error in results.items():
        optional = next((m for p, m in OPTIONAL_MODULES.items() if name.startswith(p)), None)
        if optional is None:
            assert error is None, f"{name} does not import from the wheel: {error}"
        elif error is not None:
            assert optional in error, f"{name} needs {optional}, but says: {error}"


def test_the_installed_command_has_the_project_version_and_runs_the_demo(installed: Path) -> None:
    assert _run(installed / "foxwork", "--version").strip() == f"foxwork {_project_version()}"
    output = _run(installed / "foxwork", "demo", "--messages", "5", "--seed", "1", timeout=60)
    assert "Replay this run" in output
