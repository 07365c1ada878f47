"""Clotho v2.1, and datasets written in its CSV layout (SynthMusic), from a local folder.

Published layout (Zenodo record 4783391): ``clotho_captions_{split}.csv`` with
``file_name,caption_1..caption_5`` and ``clotho_metadata_{split}.csv`` with
``file_name,keywords,sound_id,sound_link,start_end_samples,manufacturer,license`` (ISO-8859-1,
``;``-separated keywords). The audio archives unpack into ``{split}/``.
"""
from __future__ import annotations

import codecs
import csv
import io
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from hybrid_retrieval.data.items import CatalogueItem, safe_file_name
from hybrid_retrieval.data.spec import DatasetSpec
from hybrid_retrieval.deps import optional_import
from hybrid_retrieval.errors import BadInputError, NotFoundError

log = logging.getLogger("hybrid_retrieval")

CLOTHO_SPLITS = ("development", "validation", "evaluation")
CLOTHO_ALIASES = {"train": "development", "dev": "development", "val": "validation", "test": "evaluation",
                  "eval": "evaluation"}

# Where aac-datasets 0.7 puts Clotho v2.1 under its root (datasets/functional/clotho.py:
# _get_clotho_root, _get_csv_dpath, _get_audio_subset_dpath with _CLOTHO_AUDIO_DNAMES).
AAC_CLOTHO_DIR = "CLOTHO_v2.1"

_CAPTION_COLUMN = re.compile(r"caption_\d+")


# Python's csv module refuses fields over 128 KiB by default; a free-text description or a long
# keyword list may be longer, so CSVs are read with this limit (the largest a C long holds everywhere).
CSV_FIELD_LIMIT = 2**31 - 1
_UTF16_BOMS = {codecs.BOM_UTF16_LE: "UTF-16 (little-endian)", codecs.BOM_UTF16_BE: "UTF-16 (big-endian)"}


def _decode_csv(path: Path, raw: bytes) -> str:
    """UTF-8 (with or without BOM), else ISO-8859-1; UTF-16/32 and binary files are refused, naming
    what they look like, since they would otherwise be read as Latin-1 noise."""
    for bom, name in _UTF16_BOMS.items():
        if raw.startswith(bom):
            raise BadInputError(f"{path} is encoded as {name}; save it as UTF-8 (or ISO-8859-1) and try again")
    if b"\x00" in raw:
        raise BadInputError(f"{path} holds NUL bytes: it is not a text CSV (UTF-16 without a byte-order mark, "
                            "or binary); save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("iso-8859-1")


def read_csv_lines(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """As :func:`read_csv`, with each row's line number in the file (its last line, for a row
    whose quoted fields span several)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"CSV file not found: {path}") from exc
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror}") from exc
    reader = csv.DictReader(io.StringIO(_decode_csv(path, raw), newline=""), restval="")
    rows = []
    previous_limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        for row in reader:
            if None in row:
                raise BadInputError(f"{path}, line {reader.line_num}: more fields than the header has "
                                    f"({reader.fieldnames})")
            rows.append((reader.line_num, row))
        header = list(reader.fieldnames or [])
    except csv.Error as exc:
        raise BadInputError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from exc
    finally:
        csv.field_size_limit(previous_limit)
    return header, rows


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV, decoded as UTF-8, or as ISO-8859-1 when it is not valid UTF-8.

    Clotho's metadata CSVs are ISO-8859-1, its caption CSVs and our generated files UTF-8. Latin-1
    text with non-ASCII characters is practically never valid UTF-8, so trying UTF-8 first reads
    both correctly. Short rows are padded with ""; a row with more fields than the header, a
    malformed file and a UTF-16 one raise BadInputError naming the file (and line).
    """
    header, rows = read_csv_lines(path)
    return header, [row for _, row in rows]


def duplicate_names(rows: list[tuple[int, dict[str, str]]], path: Path, column: str = "file_name") -> None:
    """Refuse a CSV naming a file twice, with the lines of the first duplicate."""
    lines: dict[str, list[int]] = {}
    for line, row in rows:
        lines.setdefault(row[column], []).append(line)
    twice = {name: where for name, where in lines.items() if len(where) > 1}
    if twice:
        name, where = next(iter(twice.items()))
        more = f" ({len(twice) - 1} more names appear twice)" if len(twice) > 1 else ""
        raise BadInputError(f"{path}: {column} {name!r} appears on lines {', '.join(map(str, where))}{more}")


def drop_missing_audio(items: list[CatalogueItem], label: str, where: str) -> list[CatalogueItem]:
    """The items whose audio file exists; one warning with the count when some are dropped.

    Dropping at load time is what keeps a training or evaluation run from failing mid-epoch on a
    clip that was never downloaded (removed YouTube videos, partial extractions).
    """
    kept = [item for item in items if item.audio_path.is_file()]
    if len(kept) < len(items):
        log.warning(
            "%s: skipped %d of %d clips whose audio is missing under %s",
            label, len(items) - len(kept), len(items), where,
        )
    return kept


def split_tags(text: str) -> list[str]:
    """`a; b;;c` -> ["a", "b", "c"]: `;`-separated tags, stripped, empty entries dropped."""
    return [tag.strip() for tag in text.split(";") if tag.strip()]


def first_file(folders: Iterable[Path], name: str) -> Path | None:
    """`folder / name` for the first folder that has that file."""
    return next((folder / name for folder in folders if (folder / name).is_file()), None)


def _metadata_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a metadata CSV, which must have a `file_name` column."""
    header, rows = read_csv_lines(path)
    if "file_name" not in header:
        raise BadInputError(f"{path}: no 'file_name' column (header: {header})")
    duplicate_names(rows, path)
    return [row for _, row in rows]


def _metadata_kinds(row: dict[str, str]) -> dict[str, list[str] | str]:
    """keywords -> "os"; SynthMusic's closed_tags -> "cs", description -> "fs"."""
    kinds: dict[str, list[str] | str] = {}
    if keywords := split_tags(row.get("keywords", "")):
        kinds["os"] = keywords
    if closed := split_tags(row.get("closed_tags", "")):
        kinds["cs"] = closed
    if description := row.get("description", "").strip():
        kinds["fs"] = description
    return kinds


def read_metadata_csv(path: Path) -> dict[str, dict[str, list[str] | str]]:
    """file_name -> metadata kinds: keywords -> "os"; SynthMusic's closed_tags -> "cs", description -> "fs"."""
    return {row["file_name"]: _metadata_kinds(row) for row in _metadata_rows(path)}


def load_clotho(
    root: str | Path, split: str, *, require_audio: bool = True, name: str = "clotho", freesound: bool = True
) -> list[CatalogueItem]:
    """The items of one split of a Clotho-layout dataset under `root`, in captions-CSV order.

    The CSVs are looked for in `root`, `root/clotho_csv_files` and aac-datasets'
    `root/CLOTHO_v2.1/clotho_csv_files`; the audio folder is the first existing one of
    `root/clotho_audio_{split}`, `root/{split}`, `root/clotho_audio_files/{split}` and
    `root/CLOTHO_v2.1/clotho_audio_files/{split}`. The captions CSV is required; without a metadata
    CSV items have empty metadata. `require_audio` drops (and counts in one log line) the items
    whose audio file is missing; turn it off to inspect the CSVs alone. `name` labels messages
    (SynthMusic is read by this loader too). With `freesound` (Clotho's clips are Freesound
    sounds), each item's `freesound_id` is the metadata CSV's `sound_id`; SynthMusic writes its
    own numbers there, which name no Freesound sound, so it turns this off.
    """
    if split not in CLOTHO_SPLITS:
        raise BadInputError(f"unknown {name} split {split!r}; expected one of {CLOTHO_SPLITS}")
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"{name} root folder not found: {root}")

    csv_dirs = [root, root / "clotho_csv_files", root / AAC_CLOTHO_DIR / "clotho_csv_files"]
    captions_name = f"clotho_captions_{split}.csv"
    captions_path = first_file(csv_dirs, captions_name)
    if captions_path is None:
        looked = ", ".join(str(folder / captions_name) for folder in csv_dirs)
        raise NotFoundError(f"{name}/{split}: captions CSV not found; looked for {looked}")
    metadata_path = first_file([captions_path.parent, *csv_dirs], f"clotho_metadata_{split}.csv")
    metadata_rows = _metadata_rows(metadata_path) if metadata_path else []
    metadata = {row["file_name"]: _metadata_kinds(row) for row in metadata_rows}
    sound_ids = {row["file_name"]: row.get("sound_id", "").strip() for row in metadata_rows} if freesound else {}

    audio_dirs = [
        root / f"clotho_audio_{split}",
        root / split,
        root / "clotho_audio_files" / split,
        root / AAC_CLOTHO_DIR / "clotho_audio_files" / split,
    ]
    # Without any audio folder, items point where the published archives unpack.
    audio_dir = next((folder for folder in audio_dirs if folder.is_dir()), root / split)

    header, rows = read_csv_lines(captions_path)
    caption_columns = [column for column in header if _CAPTION_COLUMN.fullmatch(column)]
    if "file_name" not in header or not caption_columns:
        raise BadInputError(f"{captions_path}: expected columns file_name,caption_1,... (header: {header})")
    duplicate_names(rows, captions_path)
    items: list[CatalogueItem] = []
    for line, row in rows:
        # kept exactly (a leading space is part of some names), but never outside the audio folder
        file_name = safe_file_name(row["file_name"], f"{captions_path}, line {line}")
        items.append(
            CatalogueItem(
                item_id=file_name,
                audio_path=audio_dir / file_name,
                captions=[row[column] for column in caption_columns if row[column]],
                metadata=metadata.get(file_name, {}),
                freesound_id=sound_ids.get(file_name, ""),
            )
        )
    if not require_audio:
        return items
    where = str(audio_dir)
    if not audio_dir.is_dir():
        where = f"{root} (no audio folder; looked for {', '.join(map(str, audio_dirs))})"
    return drop_missing_audio(items, f"{name}/{split}", where)


# Our split names -> aac-datasets 0.7's ClothoSubset names.
_AAC_SUBSETS = {"development": "dev", "validation": "val", "evaluation": "eval"}


def download_clotho(root: Path, splits: Sequence[str]) -> None:
    """Fetch Clotho v2.1 splits into `root` through aac-datasets (archives, checksums), in its layout."""
    functional = optional_import("aac_datasets.datasets.functional.clotho", "download", "downloading Clotho")
    functional.download_clotho_datasets(root=str(root), subsets=[_AAC_SUBSETS[s] for s in splits], verbose=1,
                                        version="v2.1")


CLOTHO = DatasetSpec(
    "clotho", CLOTHO_SPLITS, load_clotho, CLOTHO_ALIASES, download_clotho, sample_rate=44_100,
    by_hand=("download Clotho v2.1 from https://zenodo.org/record/4783391 and put clotho_captions_{split}.csv and "
             "clotho_metadata_{split}.csv in {root}, and unpack clotho_audio_{split}.7z there (it creates "
             "{root}/{split}/), for split in development, validation, evaluation"),
    origin="Zenodo record 4783391")
