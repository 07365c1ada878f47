"""Catalogues to index or search: the audio files of a folder, or a dataset split, with metadata.

A source is a folder, whose audio files (AUDIO_SUFFIXES, searched recursively) become items with
their path relative to the folder as id, or `DATASET:ROOT:SPLIT` (e.g.
`synthmusic:data/synthmusic:evaluation`, `clotho:/data/clotho:evaluation`): the split's items with
the dataset's metadata. A metadata CSV in Clotho's layout (a `file_name` column and any of
keywords, closed_tags, description) can replace the metadata of the items it names.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hybrid_retrieval.audio.io import usable_audio
from hybrid_retrieval.data.clotho import read_metadata_csv
from hybrid_retrieval.data.items import CatalogueItem
from hybrid_retrieval.data.registry import DATASETS, load_split
from hybrid_retrieval.errors import BadInputError, NotFoundError
from hybrid_retrieval.terminal import printable

log = logging.getLogger("hybrid_retrieval")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")


def audio_files(folder: str | Path) -> list[Path]:
    """The audio files under `folder` (by suffix, recursively), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def load_catalogue(source: str | Path, metadata_csv: str | Path | None = None) -> list[CatalogueItem]:
    """The items of a folder or dataset split (see the module docstring), with the metadata of
    `metadata_csv` where it names them (matched by id, else by file name). Files that cannot be
    used as audio (`io.check_audio`: not audio, empty, no finite sample) are skipped with one
    warning each and a count, so a broken file does not stop a long build half way."""
    folder = Path(source)
    if folder.is_dir():
        items = [CatalogueItem(p.relative_to(folder).as_posix(), p) for p in audio_files(folder)]
    else:
        dataset, _, rest = str(source).partition(":")
        root, _, split = rest.rpartition(":")
        if dataset not in DATASETS or not root or not split:
            raise BadInputError(f"{source!r} is neither a folder nor a dataset split DATASET:ROOT:SPLIT "
                                f"(DATASET one of {tuple(DATASETS)}, e.g. synthmusic:data/synthmusic:evaluation)")
        items = load_split(dataset, root, split)
    if metadata_csv is not None:
        table = read_metadata_csv(Path(metadata_csv))
        matched = 0
        for item in items:
            kinds = table.get(item.item_id, table.get(Path(item.item_id).name))
            if kinds is not None:
                item.metadata, matched = kinds, matched + 1
        if matched < len(items):
            log.warning("%s: no metadata row for %d of %d items", metadata_csv, len(items) - matched, len(items))
    return usable_items(items, f"files of {source}")


def usable_items(items: list[CatalogueItem], what: str) -> list[CatalogueItem]:
    """The items whose audio file can be used (`io.usable_audio`: one warning per file it drops,
    then a count of `what` skipped), so that a bad file is dropped when a catalogue or training
    set is loaded, not when a batch reaches it."""
    usable = usable_audio([item.audio_path for item in items], what)
    return [item for item, ok in zip(items, usable) if ok]


def audio_inputs(inputs: Sequence[str | Path]) -> list[CatalogueItem]:
    """The items of the audio files and folders named on a command line (`classify`, `rank-text`,
    `embed`): a folder's audio files (recursively) with ids relative to it when it is the only
    input, as `index build` names them, else under the folder's name as given; a file under its
    name as given. A name that is neither a file nor a folder is one NotFoundError; files that
    cannot be used as audio are skipped with one warning each (`usable_items`), and none left is
    one BadInputError."""
    items = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            items += [CatalogueItem((p.relative_to(path) if len(inputs) == 1 else p).as_posix(), p)
                      for p in audio_files(path)]
        elif path.exists():
            items.append(CatalogueItem(str(given), path))
        else:
            raise NotFoundError(f"no audio file or folder {printable(given)}")
    usable = usable_items(items, f"files of {', '.join(printable(given) for given in inputs)}")
    if not usable:
        raise BadInputError(f"no usable audio files in {', '.join(printable(given) for given in inputs)}")
    return usable
