"""foxwork needs only `opentelemetry-api`: without the SDK (the `foxwork[otel]` extra) every
module imports, and `foxwork run --http-port` still answers /metrics, with each pool's own
counters, and says what to install for the rest."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

from tests.apps.process import FoxworkProcess, foxwork_env, run_foxwork

#: Put first on sys.path of the subprocess: every import of opentelemetry.sdk fails there,
#: as on an installation without the SDK.
BLOCKER = """
import importlib.abc
import sys


class _NoSdk(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry.sdk" or name.startswith("opentelemetry.sdk."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoSdk())
"""


def without_sdk(tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    return foxwork_env(PYTHONPATH=str(tmp_path), **extra)


async def test_every_module_imports_without_the_sdk(tmp_path: Path) -> None:
    code = (
        "import pkgutil, importlib, foxwork\n"
        "import opentelemetry.metrics\n"
        "skip = ('foxwork.telemetry.prometheus', 'foxwork.backends.redis', 'foxwork.testing')\n"
        "for info in pkgutil.walk_packages(foxwork.__path__, 'foxwork.'):\n"
        "    if not info.name.startswith(skip):\n"
        "        importlib.import_module(info.name)\n"
        "try:\n"
        "    import opentelemetry.sdk\n"
        "except ModuleNotFoundError:\n"
        "    print('no sdk')\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env=without_sdk(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "no sdk"  # the blocker works


async def test_run_serves_pool_counters_on_metrics_without_the_sdk(tmp_path: Path) -> None:
    from tests.rabbitmq.test_cli_run import http_get

    # Given `foxwork run --http-port 0` on an installation without the SDK
    env = without_sdk(tmp_path)
    async with FoxworkProcess(
        "run", "tests.cli_app:pool", "--memory", "--http-port", "0", env=env
    ) as foxwork:
        # Then it says what /metrics lacks and how to get it
        await foxwork.wait_for(r"pip install 'foxwork\[otel\]'")
        [serving] = await foxwork.wait_for(r"serving /health, /ready and /metrics on (\S+)")
        await foxwork.wait_for("stop it with Ctrl-C")
        # and /metrics answers with the pool's own counters
        status, body = await http_get(f"{serving[1]}/metrics")
        assert status == 200
        assert re.search(
            r'^foxwork_pool_messages_processed_total\{pool="cli-test"\} 0$', body, re.M
        )
        assert (await http_get(f"{serving[1]}/ready"))[0] == 200
        foxwork.send_signal(signal.SIGTERM)
        assert await foxwork.wait() == 0, foxwork.output


async def test_print_config_works_without_the_sdk(tmp_path: Path) -> None:
    done = await run_foxwork(
        "run", "tests.cli_app:pool", "--memory", "--print-config", env=without_sdk(tmp_path)
    )
    assert done.code == 0, done.output
