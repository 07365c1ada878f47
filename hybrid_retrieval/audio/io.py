"""Reading audio files into the one format every tower expects: mono float32 at 32 kHz.

Whole files or windows of them. `load_audio(path, offset=, duration=)` seeks to the window and
decodes only it, so a crop of a long recording costs what a short file costs; `audio_windows`
reads a long file a group of windows at a time (memory bounded by the group, not the file). `check_audio`
tells, reading little, whether a file can be used at all, and `usable_audio` sorts a list of
files with one warning per file it drops.
"""
from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from hybrid_retrieval.errors import BadInputError, NotFoundError

SAMPLE_RATE = 32_000
# Frames decoded per read when a file is scanned or skipped through, so memory stays bounded.
BLOCK_FRAMES = 1 << 16
# Windows of a long file decoded and resampled in one read (`_pieces`): memory holds one such
# group of windows whatever the file's length, and readers in parts (`audio.reader`) use it as
# their part.
WINDOWS_PER_READ = 8
# Samples (at the target rate) read beyond each side of a window before it is resampled, so that
# the resampling filter sees the window's real neighbourhood instead of ringing at cut edges.
RESAMPLE_MARGIN = 1024
# Sample formats that can hold NaN or inf (integer PCM and lossy codecs cannot).
FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})
# libsndfile's public error codes (sf_error): a system error (permissions, I/O), a file of a known
# format that is damaged, an encoding it cannot decode. Any other failure to open a regular file
# means it is not audio in a format libsndfile knows.
_SF_ERR_SYSTEM, _SF_ERR_MALFORMED_FILE, _SF_ERR_UNSUPPORTED_ENCODING = 2, 3, 4

log = logging.getLogger("hybrid_retrieval")
_reported: set[tuple[str, str]] = set()  # (file, what) already said in this process


class AudioLoadError(BadInputError):
    """An audio file that cannot be used: missing, not audio, unreadable, empty or without finite samples."""


class AudioNotFoundError(AudioLoadError, NotFoundError):
    """The audio file does not exist."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: its frames at its own rate, channels and sample format."""

    path: Path
    frames: int
    sample_rate: int
    channels: int
    subtype: str
    seekable: bool = True  # a pipe cannot seek: its windows are cut from the whole decoded file

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def length(self, sample_rate: int = SAMPLE_RATE) -> int:
        """Samples of the whole file at `sample_rate`: the count soxr's resampling produces
        (frames * sample_rate / own rate, rounded half up)."""
        return resampled_length(self.frames, self.sample_rate, sample_rate)


def resampled_length(frames: int, orig_rate: int, target_rate: int) -> int:
    return (2 * frames * target_rate + orig_rate) // (2 * orig_rate)


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float32 signal with soxr's high-quality filter (what librosa.load uses)."""
    if orig_rate == target_rate:
        return waveform.astype(np.float32, copy=False)
    return soxr.resample(waveform, orig_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def _report_once(path: Path, what: str, message: str) -> None:
    """One warning line per file and kind of problem in this process (a training run reads a
    file once per epoch and would otherwise repeat it)."""
    if (str(path), what) not in _reported:
        _reported.add((str(path), what))
        log.warning(message)


def _declared_riff_bytes(path: Path) -> int | None:
    """The file size a WAV's RIFF header declares (None: not a RIFF WAVE, or a streaming header
    that declares no size). Read by hand because soundfile reports the frames that are present,
    not those the header promised, and exposes the header only as libsndfile's log text."""
    with open(path, "rb") as handle:
        head = handle.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:] != b"WAVE":
        return None
    size = int.from_bytes(head[4:8], "little" if head[:4] == b"RIFF" else "big")
    return None if size in (0, 0xFFFF_FFFF) else size + 8


def _open(path: Path) -> sf.SoundFile:
    """An open SoundFile of a non-empty audio file; any problem is an AudioLoadError naming it."""
    if not path.exists():
        raise AudioNotFoundError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioLoadError(f"{path} is a folder, not an audio file")
    try:
        handle = sf.SoundFile(str(path))
    except sf.LibsndfileError as exc:
        if exc.code == _SF_ERR_SYSTEM:
            raise AudioLoadError(f"cannot read audio file {path}: {exc.error_string}") from exc
        if exc.code in (_SF_ERR_MALFORMED_FILE, _SF_ERR_UNSUPPORTED_ENCODING):
            raise AudioLoadError(f"cannot decode audio file {path}: {exc.error_string}") from exc
        raise AudioLoadError(f"{path} is not an audio file (soundfile recognises no audio format in it)") from exc
    except (RuntimeError, TypeError, OSError) as exc:  # soundfile's other failures to open
        raise AudioLoadError(f"cannot read audio file {path}: {exc}") from exc
    if handle.frames == 0:
        handle.close()
        raise AudioLoadError(f"audio file is empty (0 samples): {path}")
    if handle.seekable() and handle.format in ("WAV", "WAVEX"):
        declared, actual = _declared_riff_bytes(path), path.stat().st_size
        if declared is not None and declared > actual:
            _report_once(path, "truncated", f"{path} is truncated (its header declares {declared} bytes, the "
                                            f"file has {actual}): reading the {handle.frames} frames that are there")
    return handle


def audio_info(path: str | Path) -> AudioInfo:
    """The header of an audio file, without decoding it; AudioLoadError naming the file if it
    cannot be opened as audio or is empty."""
    path = Path(path)
    with _open(path) as handle:
        return AudioInfo(path, handle.frames, handle.samplerate, handle.channels, handle.subtype, handle.seekable())


def _mono(data: np.ndarray, subtype: str) -> tuple[np.ndarray, bool]:
    """(frames, channels) -> (frames,) with channels averaged and NaN/inf samples set to 0, and
    whether any sample was finite. Samples decoded from integer PCM (`subtype` PCM_*, FLAC's
    too) are finite by construction and are not scanned."""
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)
    if subtype.startswith("PCM_"):
        return mono, len(mono) > 0
    finite = np.isfinite(mono)
    if finite.all():
        return mono, len(mono) > 0
    return np.where(finite, mono, 0.0).astype(np.float32), bool(finite.any())


def _blocks(handle: sf.SoundFile, frames: int | None = None) -> Iterator[np.ndarray]:
    """(frames, channels) blocks of BLOCK_FRAMES from the current position, up to `frames` or the
    end. Written out because soundfile's own `blocks` needs the frame count of a file that
    cannot seek, which a pipe of a compressed format does not declare."""
    left = sys.maxsize if frames is None else frames
    while left > 0:
        block = handle.read(min(BLOCK_FRAMES, left), dtype="float32", always_2d=True)
        if len(block):
            yield block
        if len(block) < min(BLOCK_FRAMES, left):
            return
        left -= len(block)


def _skip_to(handle: sf.SoundFile, path: Path, frame: int) -> None:
    """Move a just-opened `handle` to `frame`: a seek, or for a file that cannot seek (a pipe),
    decoding and dropping the frames before it block by block (said once per file)."""
    if handle.seekable():
        handle.seek(frame)
        return
    _report_once(path, "unseekable", f"{path} cannot seek: decoding it from the start to reach the window")
    for _ in _blocks(handle, frame):
        pass


def _read_all(handle: sf.SoundFile, path: Path, sample_rate: int) -> np.ndarray:
    """The whole file, mono at `sample_rate`; AudioLoadError if it has no finite sample."""
    if handle.seekable():
        data = handle.read(dtype="float32", always_2d=True)
    else:
        data = np.concatenate([np.zeros((0, handle.channels), dtype=np.float32), *_blocks(handle)])
    mono, finite = _mono(data, handle.subtype)
    if not finite:
        raise no_finite_samples(path)
    return resample(mono, handle.samplerate, sample_rate)


def _read_window(handle: sf.SoundFile, path: Path, start: int, length: int,
                 sample_rate: int) -> tuple[np.ndarray, bool]:
    """Samples [start, start + length) at `sample_rate` of an open file (fewer at its end), and
    whether any sample read was finite.

    At the file's own rate this is a plain seek and read, equal sample for sample to slicing the
    whole decoded file. Otherwise the window is read with RESAMPLE_MARGIN on each side from a
    frame where the two rates' sample grids meet, so the resampled window lies on the whole
    file's sample grid and the filter sees the real neighbourhood; it then matches the whole
    file resampled and sliced up to the resampler's float rounding.
    """
    rate, total = handle.samplerate, resampled_length(handle.frames, handle.samplerate, sample_rate)
    start, stop = max(0, start), min(total, start + length)
    if stop <= start:
        return np.zeros(0, dtype=np.float32), False
    if rate == sample_rate:
        _skip_to(handle, path, start)
        return _mono(handle.read(stop - start, dtype="float32", always_2d=True), handle.subtype)
    common = math.gcd(rate, sample_rate)
    step_in, step_out = rate // common, sample_rate // common  # grid points meet every step_in frames
    first = max(0, start - RESAMPLE_MARGIN) // step_out
    last = -(-min(total, stop + RESAMPLE_MARGIN) // step_out)
    _skip_to(handle, path, first * step_in)
    data = handle.read(min(handle.frames, last * step_in) - first * step_in, dtype="float32", always_2d=True)
    mono, finite = _mono(data, handle.subtype)
    wave = resample(mono, rate, sample_rate)[start - first * step_out:stop - first * step_out]
    if len(wave) < stop - start:
        wave = np.pad(wave, (0, stop - start - len(wave)))
    return wave, finite


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, offset: float | None = None,
               duration: float | None = None) -> np.ndarray:
    """Load any soundfile-readable file (wav, flac, ogg, mp3, ...) as mono float32 at `sample_rate`.

    `offset` and `duration` (seconds) select a window: only that part is read (a seek, then
    decoding just the window; a file that cannot seek is decoded from the start, said once per
    file) and resampled; it is shorter where the file ends. Channels are averaged, NaN/inf samples
    become 0, silence is valid. A missing file, one that is not audio, unreadable or empty, or a
    whole file with no finite sample raises :class:`AudioLoadError` naming the file. A WAV cut
    short (its header declares more than is there) is read as far as it goes, with a warning.
    """
    path = Path(path)
    with _open(path) as handle:
        if offset is None and duration is None:
            return _read_all(handle, path, sample_rate)
        start = round((offset or 0.0) * sample_rate)
        length = round(duration * sample_rate) if duration is not None else sys.maxsize
        return _read_window(handle, path, start, length, sample_rate)[0]


def window_starts(length: int, window: int | None) -> list[int]:
    """Where the windows of `window` samples over a clip of `length` start: every `window`
    samples from 0, the last one aligned to the clip's end; one window when the clip is no longer."""
    if window is None or length <= window:
        return [0]
    starts = list(range(0, length - window + 1, window))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def _pieces(handle: sf.SoundFile, path: Path, window: int | None, sample_rate: int,
            numbers: range | None = None) -> Iterator[tuple[np.ndarray, bool]]:
    """(window, whether any sample read was finite) of an open file, for the window numbers
    `numbers` (default all) at `window_starts`. A file no longer than a window (or `window` None)
    is one piece, read whole; one that cannot seek is decoded whole and cut (said once per file).
    Otherwise the windows are read in groups of WINDOWS_PER_READ (the first so many, the next, ...):
    each group's span is decoded and resampled once and cut, so the audio two windows share (the
    last window overlaps the one before) and the resampling margins are not decoded twice. A
    window's samples depend only on its group, so reading some windows gives what reading all
    gives for them; the finite flag is the group's."""
    total = resampled_length(handle.frames, handle.samplerate, sample_rate)
    if window is None or total <= window or not handle.seekable():
        if window is not None and total > window:
            _report_once(path, "unseekable", f"{path} cannot seek: decoding it whole to cut its windows")
        wave = _read_all(handle, path, sample_rate)
        starts = window_starts(len(wave), window)
        for n in numbers if numbers is not None else range(len(starts)):
            yield (wave[starts[n]:starts[n] + window] if window is not None else wave), True
        return
    starts = window_starts(total, window)
    group, span, finite, offset = -1, np.zeros(0, dtype=np.float32), False, 0
    for n in numbers if numbers is not None else range(len(starts)):
        if n // WINDOWS_PER_READ != group:
            group = n // WINDOWS_PER_READ
            first, last = group * WINDOWS_PER_READ, min(len(starts), (group + 1) * WINDOWS_PER_READ) - 1
            offset = starts[first]
            span, finite = _read_window(handle, path, offset, starts[last] + window - offset, sample_rate)
        yield span[starts[n] - offset:starts[n] - offset + window], finite


def no_finite_samples(path: str | Path) -> AudioLoadError:
    """The error of a file whose samples are all NaN or infinite."""
    return AudioLoadError(f"audio file has no finite samples (all NaN/inf): {path}")


def audio_windows(path: str | Path, window: int | None, sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """The windows of `window` samples (at `sample_rate`) at `window_starts` over a file, read
    WINDOWS_PER_READ at a time, so memory holds that many whatever the file's length. A file no longer than a
    window (or `window` None) is one piece, read as `load_audio` reads it; one that cannot seek is
    decoded whole and cut (said once per file). AudioLoadError naming the file as `load_audio`;
    a long file without any finite sample raises it after its last window.
    """
    path = Path(path)
    with _open(path) as handle:
        finite = False
        for piece, has_finite in _pieces(handle, path, window, sample_rate):
            finite = finite or has_finite
            yield piece
        if not finite:
            raise no_finite_samples(path)


def read_windows(path: str | Path, window: int | None, numbers: range | None = None,
                 sample_rate: int = SAMPLE_RATE) -> tuple[list[np.ndarray], bool]:
    """The pieces `numbers` (default all) of `audio_windows(path, window)`, equal to what it yields for them, and
    whether any sample read was finite: a reader of a long file in parts (`audio.reader`) calls
    it per part and refuses the file (`no_finite_samples`) when no part had a finite sample.
    AudioLoadError naming the file when it cannot be opened, or a file read whole has none."""
    path = Path(path)
    with _open(path) as handle:
        read = list(_pieces(handle, path, window, sample_rate, numbers))
    return [piece for piece, _ in read], any(finite for _, finite in read)


def check_audio(path: str | Path) -> AudioInfo:
    """The header of a file that can be used as audio: it opens, is not empty and, in a float
    sample format, holds a finite sample (scanned block by block up to the first block that has
    one, so a usual file costs one block; integer and lossy formats cannot hold NaN/inf).
    AudioLoadError naming the file otherwise."""
    path = Path(path)
    with _open(path) as handle:
        info = AudioInfo(path, handle.frames, handle.samplerate, handle.channels, handle.subtype, handle.seekable())
        if handle.subtype in FLOAT_SUBTYPES:
            for block in _blocks(handle):
                if _mono(block, handle.subtype)[1]:
                    break
            else:
                raise no_finite_samples(path)
    return info


def usable_audio(paths: Sequence[str | Path], what: str = "audio files") -> list[bool]:
    """Which of `paths` `check_audio` accepts. Each file it refuses gets one warning line naming
    it and why, and one summary line counts them, so one bad file never stops a batch."""
    usable = []
    for path in paths:
        try:
            check_audio(path)
            usable.append(True)
        except AudioLoadError as exc:
            log.warning("skipping: %s", exc)
            usable.append(False)
    if not all(usable):
        log.warning("skipped %d of %d %s that cannot be used as audio", usable.count(False), len(usable), what)
    return usable
