"""Names a package exports, imported when first used (PEP 562), so that importing the
package costs only what a program uses."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any


def exports(
    package: str, where: Mapping[str, str], names: Collection[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `package`.

    Args:
        package: the package's `__name__`.
        where: the module of each name imported on first use, relative to the package,
            as `.module` or `.module:attribute` when the attribute has another name.
        names: the package's `__all__`.

    Any other name is tried as a submodule (`package.<name>` after `import package` alone
    works as when the package imported its modules itself).
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        if name in where:
            module, _, attribute = where[name].partition(":")
            value = getattr(importlib.import_module(module, package), attribute or name)
        elif name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        else:
            try:
                value = importlib.import_module(f".{name}", package)
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *names, *where})

    return __getattr__, __dir__
