"""What segments are cut from: per-track feature sequences, and the rules for cutting them.

Two sources of (frames, dim) sequences per track:

* :class:`TowerTokens` (default): frame tokens of a frozen audio tower, one per 320 ms for
  EfficientAT's MobileNets, read through the project's feature cache. A 3-s segment is a window of
  9 consecutive tokens of the whole clip's token sequence, so training needs no audio decoding or
  tower passes at all. The price: each token's receptive field reaches beyond its 320 ms, so a
  token window sees a little context outside its segment, and two "non-overlapping" windows of one
  track are not perfectly independent. Running the tower on each 3-s waveform segment instead would
  be exact, but costs a tower pass per segment and epoch (see docs/disentangled.md).
* :class:`LogMelFrames`: log-mel frames (64 bands, 20 ms hop) for a CNN trained from scratch.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hybrid_retrieval.audio.frontend import FrontendConfig, LogMelFrontend
from hybrid_retrieval.audio.io import load_audio
from hybrid_retrieval.audio.tower import AudioTower, create_audio_tower
from hybrid_retrieval.cache import FeatureCache, audio_key
from hybrid_retrieval.disentangled.conditions import LabelledTracks, load_labels
from hybrid_retrieval.embedding import audio_outputs, require_outputs
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.outputs import TowerOutput

# EfficientAT's MobileNetV3 halves the time axis five times: one token per 32 mel frames.
EFFICIENTAT_TIME_STRIDE = 32
MEL_FRONTEND = FrontendConfig(n_mels=64, hop_length=640, win_length=1280, n_fft=2048)


class TowerTokens:
    """Frame tokens of a frozen audio tower. `window_seconds`: clips longer than this go through
    the tower in windows whose tokens are concatenated (bounds memory on long files)."""

    def __init__(self, tower: AudioTower, window_seconds: float | None = None) -> None:
        if not tower.spec.startswith("efficientat:"):
            raise BadInputError(f"token segments need an EfficientAT tower (known time stride), got {tower.spec}")
        self.tower = tower.eval()
        self.window_seconds = window_seconds
        self.dim = tower.embed_dim
        config = tower.frontend.config
        self.frame_seconds = config.hop_length * EFFICIENTAT_TIME_STRIDE / config.sample_rate

    def fingerprint(self) -> dict:
        return {"source": "tokens", **self.tower.fingerprint()}

    def sequences(self, paths: Sequence[str | Path], cache_dir: str | Path | None = None,
                  progress: bool = False) -> list[Tensor]:
        outputs = require_outputs(audio_outputs(self.tower, paths, cache_dir, window_seconds=self.window_seconds,
                                                progress=progress), paths)
        return [o.tokens[0] for o in outputs]


class LogMelFrames:
    """Log-mel frames (eval-mode front end: no augmentation) for a CNN trained from scratch."""

    def __init__(self, config: FrontendConfig = MEL_FRONTEND) -> None:
        self.frontend = LogMelFrontend(config).eval()
        self.dim = config.n_mels
        self.frame_seconds = config.hop_length / config.sample_rate

    def fingerprint(self) -> dict:
        return {"source": "logmel", "frontend": self.frontend.config.to_dict()}

    @torch.inference_mode()
    def _compute(self, paths: Sequence[str | Path], positions: Sequence[int]) -> list[TowerOutput]:
        outs = []
        for i in positions:
            wave = self.frontend.pad_to_minimum(torch.from_numpy(load_audio(paths[i])))
            frames = self.frontend(wave)[0].T  # (frames, n_mels)
            outs.append(TowerOutput(frames[None], torch.ones(1, len(frames), dtype=torch.bool), frames.mean(0)[None]))
        return outs

    def sequences(self, paths: Sequence[str | Path], cache_dir: str | Path | None = None,
                  progress: bool = False) -> list[Tensor]:
        if cache_dir is None:
            outputs = self._compute(paths, range(len(paths)))
        else:
            cache = FeatureCache(cache_dir, self.fingerprint())
            outputs = cache.get_or_compute("logmel", [audio_key(p) for p in paths],
                                           lambda positions: self._compute(paths, positions), progress=progress)
        return [o.tokens[0] for o in outputs]


FeatureSource = TowerTokens | LogMelFrames


def create_source(encoder: str, audio_encoder: str = "efficientat:mn04_as", weights: str | None = None,
                  window_seconds: float | None = None) -> FeatureSource:
    """The feature source of a model's `encoder` ("tokens": the pretrained `audio_encoder`'s frame
    tokens; "melcnn": log-mel frames)."""
    if encoder == "tokens":
        return TowerTokens(create_audio_tower(audio_encoder, pretrained=True, weights=weights), window_seconds)
    if encoder == "melcnn":
        return LogMelFrames()
    raise BadInputError(f"unknown encoder {encoder!r}; known: tokens, melcnn")


@dataclass
class TrackFeatures:
    """Labelled tracks with their feature sequences, (frames, dim) each."""

    tracks: LabelledTracks
    sequences: list[Tensor]


def load_track_features(source: FeatureSource, data_root: str | Path, split: str, conditions: Sequence[str],
               label_columns: dict[str, str] | None = None, cache_dir: str | Path | None = None,
               limit: int | None = None, progress: bool = False) -> TrackFeatures:
    """A split's labels (:func:`load_labels`) and its tracks' feature sequences."""
    tracks = load_labels(data_root, split, conditions, label_columns, limit)
    return TrackFeatures(tracks, source.sequences(tracks.paths, cache_dir, progress=progress))


# ------------------------------------------------------------------------------------------------
# Cutting segments


def segment_frames(segment_seconds: float, frame_seconds: float) -> int:
    """Frames of one segment (at least one)."""
    return max(1, round(segment_seconds / frame_seconds))


def min_shift(length: int, max_overlap: float) -> int:
    """Smallest start distance of two `length`-frame segments that overlap by at most
    `max_overlap` of a segment (overlap = length - distance, in whole frames)."""
    if not 0.0 <= max_overlap < 1.0:
        raise BadInputError(f"max_overlap must be in [0, 1), got {max_overlap}")
    return length - math.floor(max_overlap * length + 1e-9)


@functools.lru_cache(maxsize=64)
def _valid_pairs(n_frames: int, length: int, shift: int) -> np.ndarray:
    starts = np.arange(n_frames - length + 1)
    first, second = np.nonzero(np.abs(starts[:, None] - starts[None, :]) >= shift)
    return np.stack([first, second], axis=1)


def sample_segment_pair(n_frames: int, length: int, max_overlap: float,
                        rng: np.random.Generator) -> tuple[int, int] | None:
    """Start frames of two segments of one track overlapping by at most `max_overlap`, drawn
    uniformly from all such ordered pairs; None when the track is too short to hold two."""
    pairs = _valid_pairs(n_frames, length, min_shift(length, max_overlap))
    if not len(pairs):
        return None
    first, second = pairs[rng.integers(len(pairs))]
    return int(first), int(second)


def tile_starts(n_frames: int, length: int) -> list[int]:
    """Starts of non-overlapping segments covering a track, the last one aligned to its end
    (a track shorter than a segment is one segment of its own length, start 0)."""
    if n_frames <= length:
        return [0]
    starts = list(range(0, n_frames - length + 1, length))
    if starts[-1] + length < n_frames:
        starts.append(n_frames - length)
    return starts
