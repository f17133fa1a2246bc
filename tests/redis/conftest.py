"""Every test in tests/redis needs a real Redis server: mark it ``redis``.

The marker is added at collection, before ``-m`` selects (``-m "not redis"`` leaves the folder
out), so that no test here can forget it. The fixtures are ``redis_url`` and
``redis_server`` from tests/harness/pytest_plugin.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.pytest_plugin import mark_folder


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_folder(items, Path(__file__).parent, pytest.mark.redis)
