"""Every dataset by name, and one entry point for their splits: `load_split("clotho", root, "test")`.

A dataset is a `DatasetSpec` defined in its own module; adding one is that module plus one entry
in `DATASETS` below.
"""
from __future__ import annotations

from pathlib import Path

from hybrid_retrieval.data.audiocaps import AUDIOCAPS
from hybrid_retrieval.data.clotho import CLOTHO
from hybrid_retrieval.data.items import CatalogueItem
from hybrid_retrieval.data.spec import DatasetSpec
from hybrid_retrieval.data.synthmusic import SYNTHMUSIC
from hybrid_retrieval.data.wavcaps import WAVCAPS
from hybrid_retrieval.errors import BadInputError

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (CLOTHO, AUDIOCAPS, SYNTHMUSIC, WAVCAPS)}


def dataset_spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASETS:
        raise BadInputError(f"unknown dataset {dataset!r}; expected one of {tuple(DATASETS)}")
    return DATASETS[dataset]


def resolve_split(dataset: str, split: str) -> str:
    """The dataset's own name for `split`, which may be its own name or an alias (train/val/test/eval)."""
    spec = dataset_spec(dataset)
    if split in spec.splits:
        return split
    if split in spec.aliases:
        return spec.aliases[split]
    raise BadInputError(f"unknown {dataset} split {split!r}; expected one of {spec.splits} or an alias "
                        f"{sorted(spec.aliases)}")


def load_split(dataset: str, root: str | Path, split: str, *, require_audio: bool = True) -> list[CatalogueItem]:
    """The items of `dataset`'s `split` under `root` (each loader documents its layouts).

    With `require_audio` (for training and evaluation), items without an audio file are dropped
    and counted in one log line; without it every CSV row is returned.
    """
    return dataset_spec(dataset).loader(root, resolve_split(dataset, split), require_audio=require_audio)
