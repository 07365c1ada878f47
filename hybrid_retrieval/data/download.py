"""Downloading Clotho and AudioCaps through aac-datasets (optional extra `download`).

The maintained library handles archives, checksums and YouTube extraction; this module only maps
our dataset and split names onto it and refuses to touch the network in offline mode. The files
land under `root` in aac-datasets' layout, which `load_split` reads as is.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hybrid_retrieval.errors import BadInputError, MissingDependencyError, OfflineError
from hybrid_retrieval.hub import offline_switches

from .registry import SPLITS, resolve_split

# Our split names -> aac-datasets 0.7 subset names (ClothoSubset, AudioCapsSubset).
_AAC_SUBSETS = {
    "clotho": {"development": "dev", "validation": "val", "evaluation": "eval"},
    "audiocaps": {"train": "train", "val": "val", "test": "test"},
}

_BY_HAND = {
    "clotho": (
        "download Clotho v2.1 from https://zenodo.org/record/4783391 and put "
        "clotho_captions_{split}.csv and clotho_metadata_{split}.csv in {root}, and unpack "
        "clotho_audio_{split}.7z there (it creates {root}/{split}/), for split in development, "
        "validation, evaluation"
    ),
    "audiocaps": (
        "put train.csv, val.csv and test.csv from https://github.com/cdjkim/audiocaps (dataset/) in "
        "{root}, the clips as {root}/audio/{split}/{youtube_id}_{start_time}.wav (or .flac), and for "
        "closed-set tags AudioSet's *_segments.csv and class_labels_indices.csv in {root}/metadata"
    ),
}


def download_dataset(name: str, root: str | Path, splits: str | Sequence[str] | None = None) -> None:
    """Download splits of `name` ("clotho" or "audiocaps"; all splits when None) into `root`.

    Accepts our split names and aliases (train/val/test/eval). AudioCaps audio comes from YouTube
    and needs yt-dlp and ffmpeg (aac-datasets checks); its AudioSet tags are fetched too.
    """
    if name not in _AAC_SUBSETS:
        generated = " (synthmusic is generated locally, not downloaded)" if name == "synthmusic" else ""
        raise BadInputError(f"cannot download dataset {name!r}{generated}; downloadable: {tuple(_AAC_SUBSETS)}")
    if splits is None:
        splits = SPLITS[name][0]
    elif isinstance(splits, str):
        splits = [splits]
    subsets = [_AAC_SUBSETS[name][resolve_split(name, split)] for split in splits]
    root = Path(root)

    switches = offline_switches()
    if switches:
        by_hand = _BY_HAND[name].replace("{root}", str(root))
        raise OfflineError(
            f"not downloading {name}: offline mode is on ({', '.join(switches)} set). Unset it to "
            f"download, or place the files by hand: {by_hand}."
        )
    try:
        if name == "clotho":
            from aac_datasets.datasets.functional.clotho import download_clotho_datasets
        else:
            from aac_datasets.datasets.functional.audiocaps import download_audiocaps_datasets
    except ImportError as exc:
        raise MissingDependencyError(
            f'downloading needs the optional dependency aac-datasets: pip install "hybrid_retrieval[download]" ({exc})'
        ) from exc

    root.mkdir(parents=True, exist_ok=True)  # aac-datasets refuses a missing root
    if name == "clotho":
        download_clotho_datasets(root=str(root), subsets=subsets, verbose=1, version="v2.1")
    else:
        # AudioCaps v1 is the default; aac-datasets 0.5 has no `version` argument here.
        download_audiocaps_datasets(root=str(root), subsets=subsets, verbose=1, with_tags=True)
