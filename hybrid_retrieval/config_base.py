"""Typed configs: dataclasses that refuse keys they do not know, and flat experiment configs
split between two of them (a model part and a training part)."""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import TypeVar

from hybrid_retrieval.errors import BadInputError

C = TypeVar("C", bound="StrictConfig")


class StrictConfig:
    """Mixin for config dataclasses: `from_dict` refuses unknown keys, naming them and the known ones."""

    @classmethod
    def from_dict(cls: type[C], data: dict) -> C:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def partition_keys(flat: dict, model_class: type, train_class: type) -> tuple[dict, dict]:
    """The keys of a flat experiment config (sacred's) that are fields of each dataclass; a key
    of neither is an error listing both key sets (keys starting with "_" are sacred's own)."""
    model_keys = {f.name for f in fields(model_class)}
    train_keys = {f.name for f in fields(train_class)}
    unknown = sorted(k for k in flat if k not in model_keys | train_keys and not k.startswith("_"))
    if unknown:
        raise BadInputError(f"unknown config key(s) {unknown}; model keys: {sorted(model_keys)}; "
                            f"training keys: {sorted(train_keys)}")
    return ({k: v for k, v in flat.items() if k in model_keys}, {k: v for k, v in flat.items() if k in train_keys})
