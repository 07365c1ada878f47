"""Freesound exclusion lists: the sounds a training set must not contain because an evaluation set
holds them (the DCASE organisers publish one per year, e.g. `dcase2025_task6_excluded_freesound_ids.csv`:
a CSV with a `sound_id` column of Freesound ids). Items are matched by `CatalogueItem.freesound_id`,
so the list applies to every dataset whose loader fills it (Clotho, WavCaps' FreeSound source).
"""
from __future__ import annotations

from pathlib import Path

from hybrid_retrieval.data.clotho import read_csv
from hybrid_retrieval.data.items import CatalogueItem
from hybrid_retrieval.errors import BadInputError, NotFoundError

ID_COLUMN = "sound_id"


def read_freesound_ids(path: str | Path) -> frozenset[str]:
    """The Freesound ids of an exclusion CSV (its `sound_id` column; blank cells ignored)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"Freesound exclusion list not found: {path}")
    header, rows = read_csv(path)
    if ID_COLUMN not in header:
        raise BadInputError(f"{path}: no {ID_COLUMN!r} column (header: {header}); expected a CSV of Freesound ids "
                            f"like the DCASE organisers' dcase2025_task6_excluded_freesound_ids.csv")
    return frozenset(value for row in rows if (value := row[ID_COLUMN].strip()))


def drop_freesound_ids(items: list[CatalogueItem], excluded: frozenset[str]) -> list[CatalogueItem]:
    """The items whose Freesound id is not in `excluded` (items without one are always kept)."""
    return [item for item in items if not item.freesound_id or item.freesound_id not in excluded]
