"""Optional dependencies: import one, or say in one line which extra installs it."""
from __future__ import annotations

import importlib
from types import ModuleType

from hybrid_retrieval.errors import MissingDependencyError


def optional_import(module: str, extra: str, feature: str) -> ModuleType:
    """`import module`, or MissingDependencyError naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f'{feature} needs the optional dependency {module.split(".")[0]}: '
            f'pip install "hybrid_retrieval[{extra}]" ({exc})') from exc
