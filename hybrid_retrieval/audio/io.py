"""Reading audio files into the one format every tower expects: mono float32 at 32 kHz."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from hybrid_retrieval.errors import BadInputError, NotFoundError

SAMPLE_RATE = 32_000


class AudioLoadError(BadInputError):
    """An audio file that cannot be used: missing, unreadable, empty or without finite samples."""


class AudioNotFoundError(AudioLoadError, NotFoundError):
    """The audio file does not exist."""


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float32 signal with soxr's high-quality filter (what librosa.load uses)."""
    if orig_rate == target_rate:
        return waveform.astype(np.float32, copy=False)
    return soxr.resample(waveform, orig_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Load any soundfile-readable file (wav, flac, ogg, mp3, ...) as mono float32 at `sample_rate`.

    Channels are averaged. Silence is valid input. A missing, unreadable or empty file, or one
    whose samples are all NaN/inf, raises :class:`AudioLoadError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioNotFoundError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError, ...
        raise AudioLoadError(f"cannot read audio file {path}: {exc}") from exc
    if data.size == 0:
        raise AudioLoadError(f"audio file is empty (0 samples): {path}")
    mono = data.mean(axis=1)
    finite = np.isfinite(mono)
    if not finite.any():
        raise AudioLoadError(f"audio file has no finite samples (all NaN/inf): {path}")
    if not finite.all():
        mono = np.where(finite, mono, 0.0).astype(np.float32)
    return resample(mono, rate, sample_rate)
