"""Every example script and every marked snippet of the documentation runs and exits 0.

Conventions:
    examples/*.py: each file is run as `python examples/NAME.py`. A line
        `# requires: rabbitmq` in it means it needs a broker: it then runs with
        `FOXWORK_URL` set to the test broker, and is marked `rabbitmq`.
    README.md and docs/**/*.md (the documentation site): a ```python block directly after
        `<!-- test: run -->` is run as a script;
        after `<!-- test: run rabbitmq -->` it runs with `FOXWORK_URL` set to the test
        broker, and is marked `rabbitmq`; after `<!-- test: compile -->` (code of another
        library, for comparison) it is compiled, not run. Every ```python block carries one
        of the markers.
        A block directly after `<!-- example: examples/NAME.py -->` must be that file,
        verbatim; the file itself is run here and type-checked by mypy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: The pages whose python blocks are tested: the README and the documentation site.
DOCUMENTS = [README, *sorted((ROOT / "docs").rglob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
#: Seconds one example or snippet may run.
RUN_TIMEOUT = 60.0

_REQUIRES_BROKER = re.compile(r"^# requires: rabbitmq\s*$", re.MULTILINE)
_MARKER = re.compile(
    r"<!--\s*(test:\s*run(?P<broker>\s+rabbitmq)?|(?P<compile>test:\s*compile)"
    r"|example:\s*(?P<path>\S+))\s*-->"
)
_FENCE = re.compile(r"^```python\n(?P<code>.*?)^```", re.MULTILINE | re.DOTALL)


def _needs_broker(path: Path) -> bool:
    return bool(_REQUIRES_BROKER.search(path.read_text()))


def _fences(document: Path) -> list[tuple[int, re.Match[str] | None, str]]:
    """(line number, marker or None, code) of every ```python block in `document`."""
    text = document.read_text()
    fences = []
    for fence in _FENCE.finditer(text):
        before = text[: fence.start()].rstrip().rsplit("\n", 1)[-1]
        line = text.count("\n", 0, fence.start()) + 1
        fences.append((line, _MARKER.fullmatch(before.strip()), fence.group("code")))
    return fences


def _where(document: Path, line: int) -> str:
    return f"{document.relative_to(ROOT)}:{line}"


def _blocks() -> list[tuple[str, str | None, bool, str]]:
    """(where, example path or None for `test: run`, needs a broker, code) of each marked
    block of every document."""
    return [
        (_where(document, line), marker.group("path"), marker.group("broker") is not None, code)
        for document in DOCUMENTS
        for line, marker, code in _fences(document)
        if marker is not None and marker.group("compile") is None
    ]


def _compiled_blocks() -> list[tuple[str, str]]:
    """(where, code) of each block marked `test: compile`."""
    return [
        (_where(document, line), code)
        for document in DOCUMENTS
        for line, marker, code in _fences(document)
        if marker is not None and marker.group("compile") is not None
    ]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def _env_without_broker() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "FOXWORK_URL"}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, id=p.name, marks=[pytest.mark.rabbitmq] if _needs_broker(p) else [])
        for p in EXAMPLES
    ],
)
def test_example_runs_and_exits_0(path: Path, request: pytest.FixtureRequest):
    # Given an example script, and a broker when it says it needs one
    env = _env_without_broker()
    if _needs_broker(path):
        env["FOXWORK_URL"] = request.getfixturevalue("rabbitmq_url")
    # When it is run as a user runs it
    result = _run([str(path.relative_to(ROOT))], env)
    # Then it exits 0
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize(
    ("where", "broker", "code"),
    [
        pytest.param(where, broker, code, id=where, marks=[pytest.mark.rabbitmq] if broker else [])
        for where, path, broker, code in _blocks()
        if path is None
    ],
)
def test_runnable_snippet_exits_0(
    where: str, broker: bool, code: str, tmp_path: Path, request: pytest.FixtureRequest
):
    # Given a documentation snippet marked runnable, and a broker when it says it needs one
    script = tmp_path / "snippet.py"
    script.write_text(code)
    env = _env_without_broker()
    if broker:
        env["FOXWORK_URL"] = request.getfixturevalue("rabbitmq_url")
    # When it is run as a script
    result = _run([str(script)], env)
    # Then it exits 0
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize(
    ("where", "code"), [pytest.param(where, code, id=where) for where, code in _compiled_blocks()]
)
def test_comparison_snippet_is_valid_python(where: str, code: str):
    # Given another library's code, shown for comparison: it is at least valid Python
    compile(code, where, "exec")


@pytest.mark.parametrize(
    ("where", "path", "code"),
    [
        pytest.param(where, path, code, id=where)
        for where, path, _, code in _blocks()
        if path is not None
    ],
)
def test_example_block_is_the_example_file_verbatim(where: str, path: str, code: str):
    # Given a documentation block that shows an example file
    example = ROOT / path
    # Then it is that file, word for word (so what readers copy is run and type-checked)
    assert example.is_file(), f"{where} refers to missing {path}"
    assert code == example.read_text(), f"{where} differs from {path}"


def test_the_quick_start_is_a_tested_example():
    # The quick start is what most readers copy: the README's is run, and the getting
    # started page shows examples/quickstart.py, which is run and type-checked.
    assert any(where.startswith("README.md:") and path is None for where, path, _, _ in _blocks())
    started = [path for where, path, _, _ in _blocks() if where.startswith("docs/getting-started")]
    assert "examples/quickstart.py" in started


def test_the_documents_hold_tested_snippets():
    # The scan finds the site's pages and their blocks (a moved docs folder fails here).
    assert len(DOCUMENTS) > 5
    assert sum(1 for where, *_ in _blocks() if where.startswith("docs/")) >= 5


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_python_block_is_run_or_is_an_example_file(document: Path):
    # A python block a reader may copy must be one the suite runs (or an example file).
    unmarked = [line for line, marker, _ in _fences(document) if marker is None]
    assert unmarked == [], f"{document.name}: python blocks at lines {unmarked} are not tested"
