"""Conditions of similarity and their labels: which tracks count as similar in which respect.

A condition is categorical (genre, mood, instrument: similar = same label, dissimilar = a
different one) or the tempo condition, named "tempo", whose labels are BPM values compared with a
tolerance (:class:`TempoTolerance`). Tracks without a tempo label get one from beat tracking
(:func:`estimate_tempo`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hybrid_retrieval.audio.io import SAMPLE_RATE, load_audio
from hybrid_retrieval.data.clotho import read_csv_lines
from hybrid_retrieval.data.items import safe_file_name
from hybrid_retrieval.deps import optional_import
from hybrid_retrieval.errors import BadInputError, NotFoundError

log = logging.getLogger("hybrid_retrieval")

TEMPO = "tempo"
DEFAULT_CONDITIONS = ("genre", "mood", "instrument", TEMPO)
# Columns of SynthMusic's factors_{split}.csv holding each condition's labels.
DEFAULT_LABEL_COLUMNS = {"genre": "genre", "mood": "mood", "instrument": "lead_instrument", TEMPO: "tempo_bpm"}


@dataclass(frozen=True)
class TempoTolerance:
    """When two tempi a, b (BPM) are the same or different, relative to the slower one.

    similar:   |a - b| <= positive * min(a, b)     (e.g. 100 and 104 BPM with positive = 0.04)
    different: |a - b| >= negative * min(a, b)     (e.g. 100 and 115 BPM with negative = 0.15)
    Pairs in between are neither, and never form a triplet. Both boundaries are inclusive; the
    comparison is made in float64. Half and double tempo count as different.
    """

    positive: float = 0.04
    negative: float = 0.15

    def __post_init__(self) -> None:
        if not 0.0 <= self.positive < self.negative:
            raise BadInputError(f"tempo tolerance needs 0 <= positive < negative, got {self.positive}, {self.negative}")


def tempo_relations(bpm: Tensor, ref_bpm: Tensor | None = None,
                    tolerance: TempoTolerance = TempoTolerance()) -> tuple[Tensor, Tensor]:
    """Boolean (n, m) matrices (similar, different) of tempi `bpm` against `ref_bpm` (default:
    `bpm` itself, whose diagonal is then not counted as similar)."""
    a = bpm.double()[:, None]
    b = (bpm if ref_bpm is None else ref_bpm).double()[None, :]
    gap, slower = (a - b).abs(), torch.minimum(a, b)
    similar = gap <= tolerance.positive * slower
    different = gap >= tolerance.negative * slower
    if ref_bpm is None:
        similar.fill_diagonal_(False)
    return similar, different


def encode_labels(condition: str, values: Sequence) -> Tensor:
    """Labels as a tensor: float64 BPM for the tempo condition, integer class codes otherwise."""
    if condition == TEMPO:
        return torch.tensor([float(v) for v in values], dtype=torch.float64)
    vocabulary = {label: i for i, label in enumerate(sorted(set(values)))}
    return torch.tensor([vocabulary[v] for v in values], dtype=torch.long)


def relations(condition: str, labels: Tensor, tolerance: TempoTolerance = TempoTolerance()) -> tuple[Tensor, Tensor]:
    """(similar, different) (n, n) matrices of encoded labels; a track is not similar to itself."""
    if condition == TEMPO:
        return tempo_relations(labels, tolerance=tolerance)
    similar = labels[:, None] == labels[None, :]
    different = ~similar
    similar.fill_diagonal_(False)
    return similar, different


def estimate_tempo(audio: str | Path | np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Tempo in BPM of a file or a mono waveform (at `sample_rate`) by librosa's beat tracker;
    0.0 when no beat is found (e.g. silence)."""
    # imported here: loading it costs a second, and only unlabelled audio needs it
    librosa = optional_import("librosa", "tempo", "estimating the tempo of tracks without a tempo label")

    if isinstance(audio, (str, Path)):
        wave, sample_rate = load_audio(audio), SAMPLE_RATE
    else:
        wave = np.asarray(audio, dtype=np.float32).reshape(-1)
    tempo, _beats = librosa.beat.beat_track(y=wave, sr=sample_rate)
    return float(np.atleast_1d(tempo)[0])


@dataclass
class LabelledTracks:
    """The audio files of a split and every condition's label per file (str, or BPM for tempo)."""

    paths: list[Path]
    labels: dict[str, list]

    def __len__(self) -> int:
        return len(self.paths)


def _bpm(cell: str, where: str) -> float:
    try:
        bpm = float(cell)
    except ValueError:
        raise BadInputError(f"{where}: tempo {cell!r} is not a number of beats per minute") from None
    if not 0 < bpm < float("inf"):
        raise BadInputError(f"{where}: tempo {cell!r} is not a positive number of beats per minute")
    return bpm


def load_labels(data_root: str | Path, split: str, conditions: Sequence[str] = DEFAULT_CONDITIONS,
                label_columns: dict[str, str] | None = None, limit: int | None = None) -> LabelledTracks:
    """Labels of a split in SynthMusic's layout: `factors_{split}.csv` (a file_name column and one
    column per condition, named by `label_columns`, default the condition's own name) beside the
    audio folder `clotho_audio_{split}/`. An empty tempo cell, or no tempo column at all, is filled
    by :func:`estimate_tempo`; a missing categorical column is an error. `limit`: first N rows."""
    root = Path(data_root)
    columns = {**DEFAULT_LABEL_COLUMNS, **(label_columns or {})}
    table = root / f"factors_{split}.csv"
    if not table.is_file():
        raise NotFoundError(f"no label table {table} (expected SynthMusic's layout: factors_{{split}}.csv "
                                f"beside clotho_audio_{{split}}/)")
    header, numbered = read_csv_lines(table)
    if "file_name" not in header:
        raise BadInputError(f"{table}: no 'file_name' column (header: {header})")
    numbered = numbered[:limit]
    rows = [row for _, row in numbered]
    paths = [root / f"clotho_audio_{split}" / safe_file_name(row["file_name"], f"{table}, line {line}")
             for line, row in numbered]
    labels: dict[str, list] = {}
    for condition in conditions:
        column = columns.get(condition, condition)
        if condition == TEMPO:
            cells = [row.get(column) or "" for row in rows]
            missing = [i for i, cell in enumerate(cells) if not cell.strip()]
            if missing:
                log.info("%s: estimating the tempo of %d tracks by beat tracking", table, len(missing))
            labels[condition] = [_bpm(cell, f"{table}, line {line}") if cell.strip() else estimate_tempo(path)
                                 for cell, path, (line, _) in zip(cells, paths, numbered)]
        else:
            if rows and column not in rows[0]:
                raise BadInputError(f"{table} has no column {column!r} for condition {condition!r}; "
                                 f"set label_columns.{condition}")
            labels[condition] = [row[column] for row in rows]
    return LabelledTracks(paths, labels)
