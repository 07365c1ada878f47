"""`DatasetSpec`: what the toolkit knows of a dataset, in one place (aac-datasets' style).

Each dataset module defines its spec; `data.registry` lists them. Adding a dataset is one new
module (its loader, its spec) and one entry in the registry.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hybrid_retrieval.data.items import CatalogueItem

Loader = Callable[..., list[CatalogueItem]]  # loader(root, own_split, *, require_audio: bool)
Downloader = Callable[[Path, Sequence[str]], None]  # downloader(root, own_splits): fetch into root


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    splits: tuple[str, ...]  # the dataset's own split names
    loader: Loader
    aliases: dict[str, str] = field(default_factory=dict)  # friendly split names -> own names
    downloader: Downloader | None = None  # None: not downloadable (see `origin`)
    by_hand: str = ""  # how to place the files without downloading ("{root}" is filled in)
    origin: str = ""  # where the data comes from (shown when it cannot be downloaded)
    sample_rate: int | None = None  # of the published audio (the loaders resample on reading)
