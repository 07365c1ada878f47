"""One entry point for every dataset split: `load_split("clotho", root, "test")`."""
from __future__ import annotations

from pathlib import Path

from hybrid_retrieval.errors import BadInputError

from .audiocaps import AUDIOCAPS_SPLITS, load_audiocaps
from .clotho import CLOTHO_SPLITS, load_clotho
from .items import CatalogueItem

DATASETS = ("clotho", "audiocaps", "synthmusic")

_CLOTHO_ALIASES = {
    "train": "development",
    "dev": "development",
    "val": "validation",
    "test": "evaluation",
    "eval": "evaluation",
}
_AUDIOCAPS_ALIASES = {"validation": "val", "eval": "test", "evaluation": "test"}

# dataset -> (its own split names, friendly aliases -> own name)
SPLITS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "clotho": (CLOTHO_SPLITS, _CLOTHO_ALIASES),
    "audiocaps": (AUDIOCAPS_SPLITS, _AUDIOCAPS_ALIASES),
    "synthmusic": (CLOTHO_SPLITS, _CLOTHO_ALIASES),  # written in the Clotho layout
}


def resolve_split(dataset: str, split: str) -> str:
    """The dataset's own name for `split`, which may be its own name or an alias (train/val/test/eval)."""
    if dataset not in SPLITS:
        raise BadInputError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    own, aliases = SPLITS[dataset]
    if split in own:
        return split
    if split in aliases:
        return aliases[split]
    raise BadInputError(f"unknown {dataset} split {split!r}; expected one of {own} or an alias {sorted(aliases)}")


def load_split(dataset: str, root: str | Path, split: str, *, require_audio: bool = True) -> list[CatalogueItem]:
    """The items of `dataset`'s `split` under `root` (see load_clotho / load_audiocaps for layouts).

    With `require_audio` (for training and evaluation), items without an audio file are dropped
    and counted in one log line; without it every CSV row is returned.
    """
    own_split = resolve_split(dataset, split)
    if dataset == "audiocaps":
        return load_audiocaps(root, own_split, require_audio=require_audio)
    return load_clotho(root, own_split, require_audio=require_audio, name=dataset)
