"""AudioCaps (v1) from a local folder, with AudioSet labels as closed-set tags.

Captions: ``{train,val,test}.csv`` with ``audiocap_id,youtube_id,start_time,caption``, one row
per caption; a clip is a (youtube_id, start_time) pair. Tags: AudioSet's segment CSVs (three
``#`` comment lines, then ``YTID, start_seconds, end_seconds, "mid,mid"``) and
``class_labels_indices.csv`` (``index,mid,display_name``).
"""
from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from hybrid_retrieval.data.clotho import drop_missing_audio, first_file
from hybrid_retrieval.data.items import CatalogueItem, safe_file_name
from hybrid_retrieval.data.spec import DatasetSpec
from hybrid_retrieval.deps import optional_import
from hybrid_retrieval.errors import BadInputError, NotFoundError

log = logging.getLogger("hybrid_retrieval")

AUDIOCAPS_SPLITS = ("train", "val", "test")
AUDIOCAPS_ALIASES = {"validation": "val", "eval": "test", "evaluation": "test"}
SEGMENT_CSVS = ("balanced_train_segments.csv", "unbalanced_train_segments.csv", "eval_segments.csv")
CLASS_LABELS_CSV = "class_labels_indices.csv"

# aac-datasets 0.7 (datasets/functional/audiocaps.py): everything under root/AUDIOCAPS
# (_get_audiocaps_root); CSVs in csv_files_v1/ or, from older versions, directly there
# (_get_captions_dpath); audio in audio_{sr}Hz/{split}/ (_get_audio_subset_dpath, default sr
# 32000) named {youtube_id}_{start_time}.flac (_AUDIO_FNAME_FORMAT, default audio_format flac);
# AudioSet CSVs next to the captions (_download_tags_files).
AAC_AUDIOCAPS_DIR = "AUDIOCAPS"
AAC_DEFAULT_AUDIO_DIR = "audio_32000Hz"

# Tried in this order; the first naming with at least one file in the split's folder is used.
AUDIO_NAMINGS = (
    "{ytid}.wav",
    "Y{ytid}.wav",
    "{ytid}_{start}.wav",
    "{ytid}_{start}.flac",
    "{ytid}.flac",
    "Y{ytid}.flac",
)

ClipKey = tuple[str, int]


def _start_seconds(text: str, path: Path, line: int) -> int:
    """AudioCaps writes whole seconds ("30"), AudioSet decimals ("30.000"): both as int."""
    try:
        return int(float(text))
    except ValueError:
        raise BadInputError(f"{path}, line {line}: start time {text!r} is not a number") from None


def _read_captions(path: Path) -> dict[ClipKey, list[str]]:
    """(youtube_id, start) -> captions in file order; clips in order of first appearance."""
    clips: dict[ClipKey, list[str]] = {}
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = {"youtube_id", "start_time", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise BadInputError(f"{path}: missing column(s) {sorted(missing)} (header: {reader.fieldnames})")
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            key = (safe_file_name(row["youtube_id"], where), _start_seconds(row["start_time"], path, reader.line_num))
            clips.setdefault(key, []).append(row["caption"])
    return clips


def _read_class_labels(path: Path) -> dict[str, str]:
    """AudioSet mid -> display name."""
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if not {"mid", "display_name"} <= set(reader.fieldnames or []):
            raise BadInputError(f"{path}: expected columns index,mid,display_name (header: {reader.fieldnames})")
        return {row["mid"]: row["display_name"] for row in reader}


def _read_segment_mids(path: Path, wanted: set[ClipKey]) -> dict[ClipKey, list[str]]:
    """(YTID, start) -> label mids, for the wanted clips only (the unbalanced file has ~2M rows)."""
    mids: dict[ClipKey, list[str]] = {}
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file, skipinitialspace=True)
        for row in reader:
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 4:
                raise BadInputError(f"{path}, line {reader.line_num}: expected YTID, start, end, \"labels\"; got {row}")
            key = (row[0], _start_seconds(row[1], path, reader.line_num))
            if key in wanted:
                mids[key] = [mid.strip() for mid in row[3].split(",") if mid.strip()]
    return mids


def _closed_set_tags(
    label: str,
    folders: list[Path],
    wanted: set[ClipKey],
    segments_csvs: Sequence[str | Path] | None,
    class_labels_csv: str | Path | None,
) -> dict[ClipKey, list[str]]:
    """Clip -> AudioSet display names; {} (and one warning) when the AudioSet CSVs are absent."""
    for given in [*(segments_csvs or []), *([class_labels_csv] if class_labels_csv is not None else [])]:
        if not Path(given).is_file():
            raise NotFoundError(f"{label}: AudioSet CSV not found: {given}")
    if segments_csvs is not None:
        segment_paths = [Path(path) for path in segments_csvs]
    else:
        segment_paths = [path for path in (first_file(folders, name) for name in SEGMENT_CSVS) if path]
    labels_path = Path(class_labels_csv) if class_labels_csv is not None else first_file(folders, CLASS_LABELS_CSV)
    if not segment_paths or labels_path is None:
        log.warning(
            "%s: no closed-set tags: AudioSet CSVs not found (one of %s plus %s, looked in %s)",
            label, ", ".join(SEGMENT_CSVS), CLASS_LABELS_CSV, ", ".join(map(str, folders)),
        )
        return {}

    names = _read_class_labels(labels_path)
    tags: dict[ClipKey, list[str]] = {}
    for path in segment_paths:
        for key, mids in _read_segment_mids(path, wanted).items():
            unknown = [mid for mid in mids if mid not in names]
            if unknown:
                raise BadInputError(f"{path}: label(s) {unknown} of clip {key[0]} are not in {labels_path}")
            clip_tags = tags.setdefault(key, [])
            clip_tags.extend(names[mid] for mid in mids if names[mid] not in clip_tags)
    return tags


def _audio_layout(root: Path, split: str, clips: Sequence[ClipKey]) -> tuple[Path, str, bool]:
    """(folder, naming, found): the first candidate folder and naming that hold any clip of the split."""
    aac_root = root / AAC_AUDIOCAPS_DIR
    other_rates = sorted(p for p in aac_root.glob("audio_*Hz") if p.name != AAC_DEFAULT_AUDIO_DIR)
    folders = [root / "audio" / split, aac_root / AAC_DEFAULT_AUDIO_DIR / split, *(p / split for p in other_rates)]
    for folder in folders:
        if not folder.is_dir():
            continue
        present = set(os.listdir(folder))
        for naming in AUDIO_NAMINGS:
            if any(naming.format(ytid=ytid, start=start) in present for ytid, start in clips):
                return folder, naming, True
    return folders[0], AUDIO_NAMINGS[0], False


def load_audiocaps(
    root: str | Path,
    split: str,
    *,
    require_audio: bool = True,
    segments_csvs: Sequence[str | Path] | None = None,
    class_labels_csv: str | Path | None = None,
) -> list[CatalogueItem]:
    """One item per AudioCaps clip of `split`, with all its captions, in order of first appearance.

    item_id is ``{youtube_id}_{start_time}``. The captions CSV is looked for as `root/{split}.csv`,
    `root/dataset/{split}.csv` (the AudioCaps repository) and aac-datasets'
    `root/AUDIOCAPS/csv_files_v1/{split}.csv` or `root/AUDIOCAPS/{split}.csv`. Audio: the first of
    `root/audio/{split}/` and `root/AUDIOCAPS/audio_{sr}Hz/{split}/` (32000 first) where one of
    AUDIO_NAMINGS matches a clip. Closed-set tags ("cs") are the AudioSet display names of the
    clip's labels, from the segment CSVs and class_labels_indices.csv found in `root`,
    `root/metadata` or `root/AUDIOCAPS`, or given explicitly; without them items have no "cs".
    `require_audio` drops (and counts in one log line) the clips whose audio file is missing.
    """
    if split not in AUDIOCAPS_SPLITS:
        raise BadInputError(f"unknown audiocaps split {split!r}; expected one of {AUDIOCAPS_SPLITS}")
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"audiocaps root folder not found: {root}")
    label = f"audiocaps/{split}"
    aac_root = root / AAC_AUDIOCAPS_DIR
    csv_candidates = [
        root / f"{split}.csv",
        root / "dataset" / f"{split}.csv",
        aac_root / "csv_files_v1" / f"{split}.csv",
        aac_root / f"{split}.csv",
    ]
    captions_path = next((path for path in csv_candidates if path.is_file()), None)
    if captions_path is None:
        raise NotFoundError(f"{label}: captions CSV not found; looked for {', '.join(map(str, csv_candidates))}")
    clips = _read_captions(captions_path)

    tags = _closed_set_tags(label, [root, root / "metadata", aac_root], set(clips), segments_csvs, class_labels_csv)
    folder, naming, found = _audio_layout(root, split, list(clips))
    items = [
        CatalogueItem(
            item_id=f"{ytid}_{start}",
            audio_path=folder / naming.format(ytid=ytid, start=start),
            captions=captions,
            metadata={"cs": tags[(ytid, start)]} if tags.get((ytid, start)) else {},
        )
        for (ytid, start), captions in clips.items()
    ]
    if not require_audio:
        return items
    where = str(folder)
    if not found:
        where = f"{root} (no clip found in {root / 'audio' / split} or {aac_root}/audio_*Hz/{split})"
    return drop_missing_audio(items, label, where)


def download_audiocaps(root: Path, splits: Sequence[str]) -> None:
    """Fetch AudioCaps v1 splits into `root` through aac-datasets (audio from YouTube: needs yt-dlp
    and ffmpeg, which aac-datasets checks), with the AudioSet tags."""
    functional = optional_import("aac_datasets.datasets.functional.audiocaps", "download", "downloading AudioCaps")
    # AudioCaps v1 is the default; aac-datasets 0.5 has no `version` argument here.
    functional.download_audiocaps_datasets(root=str(root), subsets=list(splits), verbose=1, with_tags=True)


AUDIOCAPS = DatasetSpec(
    "audiocaps", AUDIOCAPS_SPLITS, load_audiocaps, AUDIOCAPS_ALIASES, download_audiocaps, sample_rate=32_000,
    by_hand=("put train.csv, val.csv and test.csv from https://github.com/cdjkim/audiocaps (dataset/) in {root}, "
             "the clips as {root}/audio/{split}/{youtube_id}_{start_time}.wav (or .flac), and for closed-set tags "
             "AudioSet's *_segments.csv and class_labels_indices.csv in {root}/metadata"),
    origin="https://github.com/cdjkim/audiocaps (captions) and YouTube (audio)")
