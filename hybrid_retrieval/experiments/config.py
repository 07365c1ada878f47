"""Named experiment configs: YAML files shipped with the package, composed the way sacred does.

A named config is a flat mapping of experiment keys (for retrieval runs the fields of `ModelConfig`
and `TrainConfig`, for disentangled-similarity runs those of `CSNConfig` and `CSNTrainConfig`).
The files live in the package (`hybrid_retrieval/configs/`; the repository's top-level `configs/`
is a link to that folder), one group per folder: `retrieval` configs at its top (datasets such as
`synthmusic`, table rows such as `late_os`), `disentangled` configs in `disentangled/`. They are
read through importlib.resources, so an installed (non-editable) package finds them as well.

`compose(["synthmusic", "late_os"], {"seed": 1})` merges left to right, later values winning and
nested mappings merged key by key (`fusion_options.mid.width` of a later config keeps the
earlier `fusion_options.mid.layers`), which is what sacred does with `with synthmusic late_os`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from typing import TYPE_CHECKING

import yaml

from hybrid_retrieval.errors import BadInputError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

GROUPS = {"retrieval": "", "disentangled": "disentangled"}  # group -> folder inside the configs package


def _folder(group: str) -> Traversable:
    if group not in GROUPS:
        raise BadInputError(f"unknown config group {group!r}; known: {sorted(GROUPS)}")
    folder = resources.files("hybrid_retrieval").joinpath("configs")
    return folder.joinpath(GROUPS[group]) if GROUPS[group] else folder


def list_named(group: str = "retrieval") -> list[str]:
    """Names of the named configs of `group`."""
    return sorted(p.name[: -len(".yaml")] for p in _folder(group).iterdir() if p.name.endswith(".yaml"))


def load_named(name: str, group: str = "retrieval") -> dict:
    """The flat mapping of one named config."""
    path = _folder(group).joinpath(f"{name}.yaml")
    if not path.is_file():
        raise BadInputError(f"no named {group} config {name!r}; known: {list_named(group)}")
    data = yaml.safe_load(path.read_text("utf-8")) or {}
    if not isinstance(data, dict):
        raise BadInputError(f"named config {name!r} is not a mapping of keys to values")
    return data


def merge(*configs: Mapping) -> dict:
    """Later mappings win; nested mappings are merged key by key, recursively."""
    out: dict = {}
    for config in configs:
        for key, value in config.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge(out[key], value)
            else:
                out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


def compose(names: Iterable[str], overrides: Mapping | None = None, group: str = "retrieval") -> dict:
    """The named configs `names`, then `overrides`, merged left to right (see `merge`)."""
    return merge(*(load_named(name, group) for name in names), overrides or {})


def register_named_configs(experiment, group: str = "retrieval") -> None:
    """Make every named config of `group` a sacred named config of `experiment` (`with NAME`)."""
    for name in list_named(group):
        experiment.add_named_config(name, load_named(name, group))
