"""Downloading datasets (optional extra `download`: aac-datasets does the work for Clotho,
AudioCaps and WavCaps; each dataset's spec names its downloader).

This module maps our split names and aliases onto the dataset's own and refuses to touch the
network in offline mode, saying what to place by hand instead. The files land under `root` in the
layout the dataset's loader reads.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hybrid_retrieval.data.registry import dataset_spec, resolve_split
from hybrid_retrieval.errors import BadInputError, OfflineError
from hybrid_retrieval.hub import offline_switches


def download_dataset(name: str, root: str | Path, splits: str | Sequence[str] | None = None) -> None:
    """Download splits of dataset `name` (all splits when None) into `root`."""
    spec = dataset_spec(name)
    if spec.downloader is None:
        raise BadInputError(f"cannot download dataset {name!r}: {spec.origin}")
    if splits is None:
        splits = spec.splits
    elif isinstance(splits, str):
        splits = [splits]
    own = [resolve_split(name, split) for split in splits]
    root = Path(root)
    switches = offline_switches()
    if switches:
        raise OfflineError(f"not downloading {name}: offline mode is on ({', '.join(switches)} set). Unset it to "
                           f"download, or place the files by hand: {spec.by_hand.replace('{root}', str(root))}.")
    root.mkdir(parents=True, exist_ok=True)  # aac-datasets refuses a missing root
    spec.downloader(root, own)
