"""The unit every dataset loader produces: one catalogue item with its captions and metadata."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from hybrid_retrieval.errors import BadInputError

# Metadata kinds of Primus & Widmer (EUSIPCO 2024): closed-set tags, open-set keywords,
# and a free-form sentence. A loader fills the kinds its dataset has.
METADATA_KINDS = ("cs", "os", "fs")


def safe_file_name(name: str, where: str) -> str:
    """`name` if it stays inside the dataset folder it is joined to; a name from a dataset's CSV
    that is absolute or climbs out with `..` (which would read, or index, any file on the machine)
    is refused naming `where` it was found. Names are otherwise kept exactly (Clotho's may start
    with a space)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not name.strip() or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() \
            or PureWindowsPath(name).drive or ".." in parts or "\0" in name:
        raise BadInputError(f"{where}: file name {name!r} is empty, absolute or leaves the dataset folder")
    return name


@dataclass
class CatalogueItem:
    """One audio clip of a dataset split.

    item_id: the file name as the dataset's CSV spells it (Clotho names may start with a space).
    audio_path: where the audio is expected; it may be missing, loaders report that separately.
    captions: the reference captions (queries) of the clip; may be empty for a plain catalogue.
    metadata: kind -> value, with "cs" and "os" lists of tags and "fs" one sentence.
    freesound_id: the clip's Freesound sound id where it comes from Freesound (Clotho, WavCaps'
        FreeSound source), else "": what the DCASE exclusion lists name (`data/exclusion.py`).
    """

    item_id: str
    audio_path: Path
    captions: list[str] = field(default_factory=list)
    metadata: dict[str, list[str] | str] = field(default_factory=dict)
    freesound_id: str = ""

    def metadata_text(self, kinds: str | tuple[str, ...] | list[str]) -> str:
        """The item's metadata of the requested kinds as one text (empty when it has none).

        `kinds` is e.g. "os", "cs+os" or ("cs", "os"); tags are joined with ", " and kinds with ". ".
        """
        if isinstance(kinds, str):
            kinds = tuple(k for k in kinds.split("+") if k)
        unknown = [k for k in kinds if k not in METADATA_KINDS]
        if unknown:
            raise BadInputError(f"unknown metadata kind(s) {unknown}; expected a '+'-joined subset of {METADATA_KINDS}")
        parts = []
        for kind in kinds:
            value = self.metadata.get(kind)
            if not value:
                continue
            parts.append(", ".join(value) if isinstance(value, list) else value)
        return ". ".join(parts)


def caption_pairs(items: list[CatalogueItem]) -> tuple[list[int], list[str]]:
    """(item index of each pair, caption of each pair) over all captions of all items."""
    owners, captions = [], []
    for i, item in enumerate(items):
        for caption in item.captions:
            owners.append(i)
            captions.append(caption)
    return owners, captions
