"""The aio-pika / aiormq versions foxwork admits are the ones whose behaviour it relies on.

`settle_on` (backends/rabbitmq/_io.py) waits on `channel.closing` and cancels it afterwards.
From aiormq 7.2 on, `closing` is an independent observer and cancelling it is harmless; in
aiormq 6.x (pulled in by aio-pika 9.x) and 7.0 to 7.1 it is the channel's own closing future,
and cancelling it marks a live channel closed: later acks fail and buffered deliveries stay
unacked. So the declared requirements must not admit those versions.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"

#: The first aiormq whose `closing` is an independent observer of the channel's closure.
AIORMQ_INDEPENDENT_CLOSING = Version("7.2.4")
#: The first aio-pika that itself requires that aiormq.
AIO_PIKA_FLOOR = Version("10.2")


def declared() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = (Requirement(spec) for spec in project["dependencies"])
    return {requirement.name: requirement for requirement in requirements}


def lowest_admitted(requirement: Requirement, candidates: list[str]) -> Version:
    admitted = [Version(v) for v in candidates if requirement.specifier.contains(v)]
    assert admitted, f"{requirement} admits none of {candidates}"
    return min(admitted)


def test_aiormq_is_a_declared_dependency_with_a_floor_where_closing_is_independent() -> None:
    # foxwork imports aiormq and pamqp itself, so it declares them itself
    requirements = declared()
    assert {"aiormq", "pamqp"} <= requirements.keys()
    # and no aiormq whose `closing` is the channel's own future is admitted
    lowest = lowest_admitted(requirements["aiormq"], ["6.8.0", "7.0.0", "7.1.0", "7.2.4", "7.3"])
    assert lowest >= AIORMQ_INDEPENDENT_CLOSING


def test_aio_pika_9_which_pulls_in_aiormq_6_is_not_admitted() -> None:
    lowest = lowest_admitted(declared()["aio-pika"], ["9.4.0", "9.6.2", "10.0.0", "10.2.1"])
    assert lowest >= AIO_PIKA_FLOOR


def test_the_installed_aiormq_is_one_foxwork_admits() -> None:
    assert declared()["aiormq"].specifier.contains(version("aiormq"))
