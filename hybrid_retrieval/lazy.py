"""Package attributes imported on first use, so importing a package stays cheap."""
from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` that imports `exports[name]` (a module path) when `name` is first read."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__


def import_object(path: str) -> object:
    """The object a registry names as "package.module:attribute", imported now."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
