"""The public surface: `foxwork`, `foxwork.middleware` and `foxwork.backends`.

Each has an explicit, sorted `__all__` that is exactly its public names. What "public"
means is derived from the code rather than listed here, so a class added to a module's
`__all__` but forgotten in the package's fails this test:

- `foxwork.middleware` and `foxwork.backends` are plug-in families: every class and function
  in the `__all__` of each of their public modules is exported (a nested package, such as
  `backends.rabbitmq`, counts with its own curated `__all__`).
- `foxwork` re-exports from the top-level modules it chose (errors, message, pool, ...):
  once a module contributes one name, every class and function in its `__all__` is exported.
  Modules used as namespaces (`foxwork.wire`, `foxwork.cli`) contribute none.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import inspect
import pkgutil
from types import ModuleType
from typing import Any

import pytest

import foxwork
from foxwork.telemetry import names

PACKAGES = ("foxwork", "foxwork.middleware", "foxwork.backends")

#: Names public in their own module but deliberately not re-exported: tools for people
#: writing a backend or a middleware, imported from the module itself.
MODULE_ONLY = {
    "foxwork.message.Settler": "what a backend implements to settle deliveries",
    "foxwork.middleware.base.build_chain": "folds a middleware list; the pool calls it",
    "foxwork.middleware.base.current_pool": "tells a layer shared by pools which one it serves",
    "foxwork.settlement.settle_failure": "the pool's and AckNack's settlement of a failure",
    "foxwork.settlement.check_policy": "validates an AckPolicy setting, for its owners",
    "foxwork.middleware.base.holds_failed_probe": "asked by layers that settle failures",
    "foxwork.backends.base.copy_properties": "properties of a republished copy, for backends",
    "foxwork.backends.base.retry_properties": "properties of a retry copy, for backends",
    "foxwork.backends.memory.StoredMessage": "what MemoryBackend inspection methods return",
    # `foxwork.backends` must import without the optional `redis` extra installed.
    "foxwork.backends.redis.RedisStreamsBackend": "needs foxwork[redis]; from its package",
    "foxwork.backends.redis.RedisStreamsConfig": "needs foxwork[redis]; from its package",
}

#: Names a package re-exports from a core module of foxwork: defined in the core because the
#: core uses them too (a core module never imports a middleware), public where users look.
FROM_CORE = {
    "foxwork.middleware.AckPolicy": "foxwork.settlement",
}

#: Contract names (DESIGN.md, and `Publisher` from the publishing issue) that exist today;
#: names added later are covered by derivation.
CONTRACT = {
    "foxwork": {
        "ConfigurationError",
        "DeadLetter",
        "Drop",
        "LoadBalancingStrategy",
        "Message",
        "MessageProperties",
        "Publisher",
        "RetryLater",
        "Worker",
        "WorkerError",
        "WorkerPool",
        "WorkerPoolBuilder",
    },
    "foxwork.middleware": {
        "AckNackMiddleware",
        "AckPolicy",
        "CallNext",
        "Middleware",
        "RetryMiddleware",
    },
    "foxwork.backends": {"Backend", "MemoryBackend"},
}


def module_surface(module: ModuleType) -> dict[str, Any]:
    """Classes and functions defined in `module` (or its package) and listed in its
    `__all__`, by name."""
    surface: dict[str, Any] = {}
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if obj.__module__ == module.__name__ or obj.__module__.startswith(module.__name__ + "."):
            surface[name] = obj
    return surface


def public_submodules(package: ModuleType) -> list[ModuleType]:
    return [
        importlib.import_module(f"{package.__name__}.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_")
    ]


def expected_exports(package_name: str) -> dict[str, str]:
    """Qualified origin of every name `package_name` must export, by name."""
    package = importlib.import_module(package_name)
    exported = set(package.__all__)
    expected: dict[str, str] = {}
    for module in public_submodules(package):
        if package_name == "foxwork" and module.__name__ in (
            "foxwork.middleware",
            "foxwork.backends",
        ):
            continue
        surface = module_surface(module)
        if package_name == "foxwork" and not exported & surface.keys():
            continue  # a namespace module, used as foxwork.<module>
        for name in surface:
            origin = f"{module.__name__}.{name}"
            if origin not in MODULE_ONLY:
                expected[name] = origin
    return expected


@pytest.mark.parametrize("package_name", PACKAGES)
def test_all_is_sorted_and_free_of_duplicates(package_name: str) -> None:
    names = importlib.import_module(package_name).__all__
    assert list(names) == sorted(set(names))


@pytest.mark.parametrize("package_name", PACKAGES)
def test_every_name_in_all_is_importable(package_name: str) -> None:
    # Given
    package = importlib.import_module(package_name)
    namespace: dict[str, Any] = {}

    # When
    exec(f"from {package_name} import *", namespace)

    # Then
    missing = [name for name in package.__all__ if name not in namespace]
    assert not missing
    assert all(namespace[name] is getattr(package, name) for name in package.__all__)


@pytest.mark.parametrize("package_name", PACKAGES)
def test_every_public_class_and_function_of_the_package_is_exported(package_name: str) -> None:
    # Given
    package = importlib.import_module(package_name)

    # When
    expected = expected_exports(package_name)

    # Then
    missing = {name: origin for name, origin in expected.items() if name not in package.__all__}
    assert not missing, (
        f"add these to {package_name}.__all__ (or to MODULE_ONLY here, with a reason): {missing}"
    )


@pytest.mark.parametrize("package_name", PACKAGES)
def test_nothing_but_foxwork_names_is_exported(package_name: str) -> None:
    # Given
    package = importlib.import_module(package_name)

    # When
    foreign = {
        name: obj.__module__
        for name in package.__all__
        if inspect.isclass(obj := getattr(package, name)) or inspect.isfunction(obj)
        if not obj.__module__.startswith(package_name)
        and FROM_CORE.get(f"{package_name}.{name}") != obj.__module__
    }

    # Then
    assert not foreign


@pytest.mark.parametrize("package_name", PACKAGES)
def test_the_package_has_no_public_class_or_function_missing_from_all(
    package_name: str,
) -> None:
    # Given
    package = importlib.import_module(package_name)

    # When
    unlisted = [
        name
        for name, obj in vars(package).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and name not in package.__all__
    ]

    # Then
    assert not unlisted


@pytest.mark.parametrize("package_name", PACKAGES)
def test_the_contract_names_are_exported(package_name: str) -> None:
    package = importlib.import_module(package_name)
    assert CONTRACT[package_name] <= set(package.__all__)


def test_every_module_only_name_still_exists() -> None:
    for origin in MODULE_ONLY:
        module_name, _, name = origin.rpartition(".")
        assert name in importlib.import_module(module_name).__all__, origin


def test_every_name_from_the_core_is_defined_there() -> None:
    for exported, origin in FROM_CORE.items():
        package_name, _, name = exported.rpartition(".")
        assert getattr(importlib.import_module(package_name), name).__module__ == origin


def test_the_package_ships_its_type_information() -> None:
    assert (importlib.resources.files("foxwork") / "py.typed").is_file()


def test_the_version_is_the_installed_distributions_everywhere() -> None:
    # One source (pyproject.toml, through the installed metadata): the package, the
    # telemetry scope and `foxwork --version` (which prints `foxwork.__version__`) agree.
    assert foxwork.__version__ == names.VERSION == importlib.metadata.version("foxwork")
