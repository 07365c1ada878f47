"""Name -> item-encoder class, so one config flag (`fusion=none|late|mid|...`) selects the fusion."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fusion.base import ItemEncoder
from hybrid_retrieval.errors import BadInputError

FUSIONS: dict[str, type[ItemEncoder]] = {}


def register_fusion(name: str) -> Callable[[type[ItemEncoder]], type[ItemEncoder]]:
    def add(cls: type[ItemEncoder]) -> type[ItemEncoder]:
        if name in FUSIONS:
            raise ValueError(f"fusion {name!r} is registered twice")
        FUSIONS[name] = cls
        return cls

    return add


def create_fusion(name: str, audio_dim: int, text_dim: int, embed_dim: int,
                  metadata_projection: nn.Module | None = None, **options) -> ItemEncoder:
    """Instantiate the item encoder registered as `name`; `options` are its keyword arguments.

    metadata_projection: the projection metadata embeddings go through, for fusions that project
    pooled metadata into the query space (`uses_text_projection`); None gives them their own.
    """
    if name not in FUSIONS:
        raise BadInputError(f"unknown fusion {name!r}; available: {sorted(FUSIONS)}")
    cls = FUSIONS[name]
    if cls.uses_text_projection:
        options["metadata_projection"] = metadata_projection
    try:
        return cls(audio_dim=audio_dim, text_dim=text_dim, embed_dim=embed_dim, **options)
    except TypeError as exc:
        raise BadInputError(f"bad options for fusion={name!r}: {exc}") from exc
