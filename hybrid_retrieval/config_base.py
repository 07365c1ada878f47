"""Typed configs: dataclasses that refuse keys they do not know and values of the wrong type, and
flat experiment configs split between two of them (a model part and a training part)."""
from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, fields
from pathlib import Path
from typing import TypeVar

from hybrid_retrieval.errors import BadInputError, NotFoundError

C = TypeVar("C", bound="StrictConfig")


def _fits(value: object, annotation: object) -> bool:
    """Whether `value` (as JSON or YAML gives it) is of the type a config field declares: an int
    is a float too, a bool is not a number, a list is a tuple, and the items of a list of
    scalars (list[str], ...) are checked; lists of mappings are left to the config's own checks,
    which can say more about what each entry needs."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, member) for member in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is typing.Any:
        return True
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        scalars = args and args[0] in (str, int, float, bool)
        return not scalars or all(_fits(v, args[0]) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


class StrictConfig:
    """Mixin for config dataclasses: `from_dict` refuses unknown keys, naming them and the known
    ones, and values of another type than the field's, naming the key, the type and the value."""

    @classmethod
    def from_dict(cls: type[C], data: dict) -> C:
        if not isinstance(data, dict):
            raise BadInputError(f"a {cls.__name__} must be a mapping of keys to values, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            if not _fits(value, hints[key]):
                expected = hints[key].__name__ if isinstance(hints[key], type) else str(hints[key])
                raise BadInputError(f"{cls.__name__} key {key!r} must be {expected}, not {value!r}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def read_json_object(path: str | Path, what: str = "file") -> dict:
    """The JSON object in `path`: NotFoundError if missing, BadInputError naming the file (and the
    line of a syntax error) if it is unreadable, not JSON or not an object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFoundError(f"no {what} at {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read {what} {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    if not isinstance(data, dict):
        raise BadInputError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


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
