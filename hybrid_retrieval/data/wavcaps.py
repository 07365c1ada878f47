"""WavCaps (Mei et al. 2023) from a local folder: one ChatGPT-written caption per clip, from four sources.

Published layout (Hugging Face dataset ``cvssp/WavCaps``): ``json_files/<Source>/<x>_final.json``
for the sources FreeSound (``fsd_final.json``), BBC_Sound_Effects (``bbc_final.json``), SoundBible
(``sb_final.json``) and AudioSet_SL (``as_final.json``). Each file is an object whose ``data`` list
holds one entry per clip with ``id``, ``caption`` and ``duration``, plus source-specific fields
(``audio``, ``author``, ``description``, ``download_link``, ``file_name``, ``href``, ``tags``); the
audio comes as zipped FLAC in ``Zip_files/<Source>/``.

aac-datasets (``datasets/functional/wavcaps.py``: ``_get_wavcaps_root``, ``_get_json_dpath``,
``_get_audio_subset_dpath``, and the file names built in ``_load_wavcaps_dataset_impl``) puts it
under ``root/WavCaps/`` (a link to its Hugging Face snapshot) with the audio unzipped into
``root/WavCaps/Audio/<Source>/<id>.flac``; AudioSet_SL ids are file names (``Y<youtube id>.wav``)
whose ``.wav`` becomes ``.flac``. This loader reads that layout and the plain one (``root/json_files``,
``root/Audio/<Source>`` or ``root/audio/<Source>``).

Splits: WavCaps has no official ones. ``train`` is all four sources; each source is a split of its
own under its folder name, with the short aliases aac-datasets uses (``freesound``/``fsd``, ``bbc``,
``soundbible``/``sb``, ``audioset``/``as``). Beware the overlaps aac-datasets warns about:
AudioSet_SL holds AudioCaps' val and test clips, FreeSound holds Clotho's sounds (drop those with a
Freesound exclusion list: `exclude_freesound_ids`, see data/exclusion.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hybrid_retrieval.data.clotho import drop_missing_audio
from hybrid_retrieval.data.items import CatalogueItem, safe_file_name
from hybrid_retrieval.data.spec import DatasetSpec
from hybrid_retrieval.deps import optional_import
from hybrid_retrieval.errors import BadInputError, NotFoundError

# Source folder -> its JSON table, in the order aac-datasets' card lists them.
WAVCAPS_SOURCES = {
    "AudioSet_SL": "as_final.json",
    "BBC_Sound_Effects": "bbc_final.json",
    "FreeSound": "fsd_final.json",
    "SoundBible": "sb_final.json",
}
WAVCAPS_SPLITS = ("train", *WAVCAPS_SOURCES)
WAVCAPS_ALIASES = {"all": "train", "freesound": "FreeSound", "fsd": "FreeSound", "bbc": "BBC_Sound_Effects",
                   "soundbible": "SoundBible", "sb": "SoundBible", "audioset": "AudioSet_SL", "as": "AudioSet_SL"}
AAC_WAVCAPS_DIR = "WavCaps"
_COLUMNS = ("id", "caption", "description", "tags")  # the fields the items are built from


def _base_folder(root: Path) -> Path:
    """The folder holding json_files/: aac-datasets' root/WavCaps, else root itself."""
    candidates = [root / AAC_WAVCAPS_DIR, root]
    base = next((folder for folder in candidates if (folder / "json_files").is_dir()), None)
    if base is None:
        looked = ", ".join(str(folder / "json_files") for folder in candidates)
        raise NotFoundError(f"wavcaps: no json_files folder under {root}; looked for {looked}")
    return base


def _read_table(path: Path) -> dict[str, list]:
    """The entries of one WavCaps JSON file as columns (those of _COLUMNS it has).

    Read with Hugging Face `datasets`, which converts the file to Arrow once and keeps that in its
    cache ($HF_DATASETS_CACHE, else ~/.cache/huggingface/datasets), keyed by the file's path and
    modification time: a 400,000-entry table is parsed on first use only, and offline as well.
    """
    import datasets  # imported when used: it is slow to import and most commands never need it

    table = datasets.load_dataset("json", data_files=str(path), field="data", split="train")
    missing = {"id", "caption"} - set(table.column_names)
    if missing:
        raise BadInputError(f"{path}: entries lack {sorted(missing)} (fields: {table.column_names})")
    return table.select_columns([c for c in _COLUMNS if c in table.column_names]).to_dict()


def _audio_name(source: str, clip_id: str) -> str:
    """aac-datasets' file name: `<id>.flac`; AudioSet_SL ids are `<name>.wav` files, renamed `<name>.flac`."""
    if source == "AudioSet_SL" and clip_id.endswith(".wav"):
        return clip_id[: -len(".wav")] + ".flac"
    return f"{clip_id}.flac"


def _metadata(source: str, description: str | None, tags: list[str] | None) -> dict[str, list[str] | str]:
    """FreeSound: tags -> "os", description -> "fs"; BBC and SoundBible: description -> "fs"; AudioSet_SL: none."""
    kinds: dict[str, list[str] | str] = {}
    if source == "FreeSound" and (keywords := [tag.strip() for tag in tags or [] if tag.strip()]):
        kinds["os"] = keywords
    if source != "AudioSet_SL" and (sentence := (description or "").strip()):
        kinds["fs"] = sentence
    return kinds


def _source_items(base: Path, source: str) -> tuple[list[CatalogueItem], Path]:
    """All items of one source, and the folder their audio is expected in."""
    json_path = base / "json_files" / source / WAVCAPS_SOURCES[source]
    if not json_path.is_file():
        raise NotFoundError(f"wavcaps/{source}: JSON file not found: {json_path}")
    audio_dirs = [base / "Audio" / source, base / "audio" / source]
    audio_dir = next((folder for folder in audio_dirs if folder.is_dir()), audio_dirs[0])
    table = _read_table(json_path)
    n = len(table["id"])
    descriptions, tags = table.get("description", [None] * n), table.get("tags", [None] * n)
    items = []
    for clip_id, caption, description, clip_tags in zip(table["id"], table["caption"], descriptions, tags):
        clip_id = str(clip_id)
        name = safe_file_name(_audio_name(source, clip_id), str(json_path))
        items.append(CatalogueItem(
            item_id=f"{source}/{name}",
            audio_path=audio_dir / name,
            captions=[caption] if caption else [],
            metadata=_metadata(source, description, clip_tags),
            freesound_id=clip_id if source == "FreeSound" else "",
        ))
    return items, audio_dir


def load_wavcaps(root: str | Path, split: str, *, require_audio: bool = True) -> list[CatalogueItem]:
    """The items of a WavCaps split (`train`: the four sources in WAVCAPS_SOURCES order; or one
    source) under `root`, in JSON order. item_id is `<Source>/<audio file name>`; FreeSound items
    carry their Freesound id. `require_audio` drops (and counts in one log line per source) the
    clips whose audio file is missing."""
    if split not in WAVCAPS_SPLITS:
        raise BadInputError(f"unknown wavcaps split {split!r}; expected one of {WAVCAPS_SPLITS}")
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"wavcaps root folder not found: {root}")
    base = _base_folder(root)
    items: list[CatalogueItem] = []
    for source in WAVCAPS_SOURCES if split == "train" else (split,):
        source_items, audio_dir = _source_items(base, source)
        if require_audio:
            source_items = drop_missing_audio(source_items, f"wavcaps/{source}", str(audio_dir))
        items += source_items
    return items


# Our split names -> aac-datasets' WavCaps subsets (0.5 and later).
_AAC_SUBSETS = {"AudioSet_SL": "audioset", "BBC_Sound_Effects": "bbc", "FreeSound": "freesound",
                "SoundBible": "soundbible"}


def download_wavcaps(root: Path, splits: Sequence[str]) -> None:
    """Fetch WavCaps sources into `root` through aac-datasets (the Hugging Face snapshot, its zips
    merged and unpacked: needs the `zip` program), in its layout under root/WavCaps."""
    functional = optional_import("aac_datasets.datasets.functional.wavcaps", "download", "downloading WavCaps")
    sources = [source for split in splits for source in (WAVCAPS_SOURCES if split == "train" else (split,))]
    subsets = list(dict.fromkeys(_AAC_SUBSETS[source] for source in sources))
    functional.download_wavcaps_datasets(root=str(root), subsets=subsets, verbose=1)


WAVCAPS = DatasetSpec(
    "wavcaps", WAVCAPS_SPLITS, load_wavcaps, WAVCAPS_ALIASES, download_wavcaps, sample_rate=32_000,
    by_hand=("download json_files/ and Zip_files/ of the Hugging Face dataset cvssp/WavCaps into {root}, and unzip "
             "each source's archive (split archives: `zip -FF <Source>.zip --out merged.zip` first) so that its "
             "audio is {root}/Audio/<Source>/<id>.flac (AudioSet_SL: the id with .wav replaced by .flac)"),
    origin="Hugging Face dataset cvssp/WavCaps")
