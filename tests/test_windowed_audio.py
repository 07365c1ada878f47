"""Windowed reading (load_audio's offset/duration, audio_windows) and window-by-window embedding.

References: the whole file decoded and sliced (soundfile + soxr, the same libraries), soxr's own
output lengths, and embed_waveforms on the whole decoded file.
"""
import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from hybrid_retrieval.audio import io
from hybrid_retrieval.audio.io import audio_info, audio_windows, load_audio, resampled_length, window_starts
from hybrid_retrieval.cli import main
from hybrid_retrieval.embedding import audio_outputs, embed_audio_files
from hybrid_retrieval.training.data import random_crop

SR = 32_000


def _noise(path: Path, rate: int, seconds: float, channels: int = 1, fmt: str | None = None, seed: int = 0) -> Path:
    data = np.random.default_rng(seed).standard_normal((int(rate * seconds), channels)).astype(np.float32) * 0.1
    sf.write(path, data, rate, format=fmt)
    return path


def test_resampled_length_is_soxrs_count() -> None:
    for rate in (8_000, 11_025, 22_050, 44_100, 48_000, 64_000, 96_000):
        for n in list(range(1, 200)) + [4_410, 44_099, 44_100, 44_101, 123_457]:
            expected = len(soxr.resample(np.zeros(n, dtype=np.float32), rate, SR, quality="HQ"))
            assert resampled_length(n, rate, SR) == expected, (n, rate)


@pytest.mark.parametrize("rate,fmt,atol", [(32_000, "WAV", 0.0), (44_100, "WAV", 1e-6), (48_000, "FLAC", 1e-6),
                                           (8_000, "WAV", 1e-6), (22_050, "OGG", 1e-6), (44_100, "MP3", 1e-6)])
def test_window_equals_the_slice_of_the_whole_file(tmp_path: Path, rate: int, fmt: str, atol: float) -> None:
    path = _noise(tmp_path / f"noise.{fmt.lower()}", rate, 7.0, channels=2, fmt=fmt)
    whole = load_audio(path)
    assert len(whole) == audio_info(path).length()
    for offset, duration in [(0.0, 1.0), (2.5, 1.3), (6.5, 1.0), (5.99, 2.0), (0.001, 0.5), (3.0, None)]:
        window = load_audio(path, offset=offset, duration=duration)
        start = round(offset * SR)
        reference = whole[start:] if duration is None else whole[start:start + round(duration * SR)]
        assert window.dtype == np.float32 and len(window) == len(reference)  # shorter where the file ends
        if atol == 0.0:  # at the file's own rate: sample for sample
            assert np.array_equal(window, reference)
        else:
            np.testing.assert_allclose(window, reference, rtol=0, atol=atol)


def test_a_window_decodes_only_the_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _noise(tmp_path / "long.wav", 44_100, 60.0)
    requested: list[int] = []
    original = sf.SoundFile.read

    def read(self, frames=-1, *args, **kwargs):
        requested.append(frames if frames >= 0 else self.frames - self.tell())
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", read)
    window = load_audio(path, offset=30.0, duration=2.0)
    margin = -(-io.RESAMPLE_MARGIN * 44_100 // SR) + 441  # the margin at the file's rate, plus grid alignment
    assert len(window) == 2 * SR and sum(requested) <= 2 * 44_100 + 2 * margin
    requested.clear()
    load_audio(path)
    assert sum(requested) == 60 * 44_100  # the whole file, for comparison


def _fifo_with(tmp_path: Path, source: Path) -> tuple[Path, threading.Thread]:
    """A named pipe that streams `source` once (libsndfile reads WAV from pipes, but cannot seek)."""
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)

    def feed() -> None:
        try:
            with open(fifo, "wb") as handle:
                handle.write(source.read_bytes())
        except BrokenPipeError:  # the reader stops at the end of its window
            pass

    writer = threading.Thread(target=feed)
    writer.start()
    return fifo, writer


def test_a_file_that_cannot_seek_is_decoded_up_to_the_window(tmp_path: Path, caplog) -> None:
    source = _noise(tmp_path / "source.wav", SR, 5.0)
    whole = load_audio(source)
    fifo, writer = _fifo_with(tmp_path, source)
    with caplog.at_level(logging.WARNING, logger="hybrid_retrieval"):
        window = load_audio(fifo, offset=3.0, duration=1.0)
    writer.join()
    assert np.array_equal(window, whole[3 * SR:4 * SR])
    notes = [r.getMessage() for r in caplog.records if "cannot seek" in r.getMessage()]
    assert len(notes) == 1 and str(fifo) in notes[0]


def test_window_starts() -> None:
    assert window_starts(10, None) == [0] and window_starts(10, 10) == [0] and window_starts(5, 10) == [0]
    assert window_starts(30, 10) == [0, 10, 20]
    assert window_starts(35, 10) == [0, 10, 20, 25]  # the last window ends with the clip


@pytest.mark.parametrize("rate", [32_000, 44_100])
def test_audio_windows_are_the_windows_of_the_whole_file(tmp_path: Path, rate: int) -> None:
    path = _noise(tmp_path / "long.wav", rate, 25.3)
    whole = load_audio(path)
    window = 10 * SR
    pieces = list(audio_windows(path, window))
    starts = window_starts(len(whole), window)
    assert len(pieces) == len(starts) == 3
    for start, piece in zip(starts, pieces):
        np.testing.assert_allclose(piece, whole[start:start + window], rtol=0, atol=0 if rate == SR else 1e-6)
    short = list(audio_windows(path, 30 * SR))  # no longer than a window: the whole file, as load_audio reads it
    assert len(short) == 1 and np.array_equal(short[0], whole)


def test_windows_are_read_a_group_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group of windows is decoded in one read of its span (the overlap of the last window and
    the margins read once), and any windows of a group read alone equal, bit for bit, what reading
    the whole file window by window gives them."""
    path = _noise(tmp_path / "long.flac", 44_100, 45.3, fmt="FLAC")  # windows at 0, 10, 20, 30 and 35.3 s
    window = 10 * SR
    monkeypatch.setattr(io, "WINDOWS_PER_READ", 2)
    requested: list[int] = []
    original = sf.SoundFile.read

    def read(self, frames=-1, *args, **kwargs):
        requested.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", read)
    pieces = list(audio_windows(path, window))
    margin = -(-io.RESAMPLE_MARGIN * 44_100 // SR) + 441
    assert len(pieces) == 5 and len(requested) == 3  # groups (0, 1), (2, 3), (4)
    assert sum(requested) <= 45.3 * 44_100 + 5 * 44_100 + 6 * margin  # the last window's overlap, once
    for numbers in (range(1, 2), range(2, 4), range(3, 5), range(0, 5)):
        alone, _ = io.read_windows(path, window, numbers)
        assert all(np.array_equal(a, pieces[n]) for a, n in zip(alone, numbers, strict=True))


def test_random_crop_reads_the_crop_of_the_whole_file(tmp_path: Path) -> None:
    path = _noise(tmp_path / "clip.wav", SR, 12.0)
    whole = load_audio(path)
    length = 5 * SR
    for seed in range(4):
        crop = random_crop(path, length, torch.Generator().manual_seed(seed))
        start = int(torch.randint(len(whole) - length + 1, (1,), generator=torch.Generator().manual_seed(seed)))
        assert np.array_equal(crop, whole[start:start + length])
    padded = random_crop(path, 15 * SR, torch.Generator().manual_seed(0))
    assert np.array_equal(padded[:len(whole)], whole) and not padded[len(whole):].any()


def test_short_clips_are_padded_to_the_front_ends_minimum(mn04) -> None:
    """513 samples is one too few for the STFT's reflect padding; such clips (down to one sample)
    are embedded as the clip zero-padded at the end to min_samples."""
    assert mn04.min_samples == 514
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (1, 2, 513, 514, 600)]
    outs = mn04.embed_waveforms(clips)
    reference = mn04.embed_waveforms([np.pad(clip, (0, max(0, 514 - len(clip)))) for clip in clips])
    for out, ref in zip(outs, reference):
        assert torch.equal(out.embedding, ref.embedding) and torch.isfinite(out.logits).all()
    with pytest.raises(ValueError, match="clip 1 is empty"):
        mn04.embed_waveforms([clips[0], np.zeros(0, dtype=np.float32)])


def test_streamed_windows_equal_embed_waveforms(tmp_path: Path, mn04) -> None:
    """Files read window by window (a 25-s file in three 10-s windows, a 10-s file as one) embed
    exactly as embed_waveforms embeds the decoded files with the same windows; a 10-s clip with
    10-s windows is bit-identical to the clip without windows (what the main job computes)."""
    paths = [_noise(tmp_path / "long.wav", SR, 25.3, seed=1), _noise(tmp_path / "ten.wav", SR, 10.0, seed=2),
             _noise(tmp_path / "short.wav", SR, 3.0, seed=3)]
    waves = [load_audio(p) for p in paths]
    expected = mn04.embed_waveforms(waves, window_seconds=10.0)
    streamed = embed_audio_files(mn04, paths, window_seconds=10.0)
    for a, b in zip(streamed, expected):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.embedding, b.embedding)
        assert torch.equal(a.logits, b.logits)
    assert streamed[0].tokens.shape[1] == 3 * mn04.embed_waveforms([waves[1]])[0].tokens.shape[1]
    for path in paths[1:]:  # one file at a time: outputs are bit-identical only within the same batches
        windowed, whole = embed_audio_files(mn04, [path], window_seconds=10.0)[0], audio_outputs(mn04, [path])[0]
        assert torch.equal(windowed.embedding, whole.embedding) and torch.equal(windowed.logits, whole.logits)


def test_embed_windows_batches_as_embed_waveforms(mn04) -> None:
    """The stream is batched by length as pieces arrive; a clip's output does not depend on the
    order pieces of other clips come in."""
    rng = np.random.default_rng(4)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (20_000, 33_000, 20_000, 20_000, 33_000)]
    expected = mn04.embed_waveforms(clips, batch_size=2)
    order = [4, 0, 3, 1, 2]
    streamed = mn04.embed_windows(((i, clips[i]) for i in order), len(clips), batch_size=2)
    for outs, ref in zip(streamed, expected):
        assert len(outs) == 1
        torch.testing.assert_close(outs[0].embedding, ref.embedding, rtol=0, atol=1e-6)


def test_tag_reads_long_files_in_windows(tmp_path: Path, mn04, offline_weights: Path, capsys) -> None:
    path = _noise(tmp_path / "long.wav", SR, 25.3, seed=5)
    wave = load_audio(path)
    expected = {"default": mn04.embed_waveforms([wave], window_seconds=10.0)[0].logits[0],
                "5": mn04.embed_waveforms([wave], window_seconds=5.0)[0].logits[0],
                "0": mn04.embed_waveforms([wave])[0].logits[0]}
    for option, logits in expected.items():
        args = ["tag", str(path), "--json"] + ([] if option == "default" else ["--window-seconds", option])
        assert main(args) == 0
        printed = json.loads(capsys.readouterr().out)["logits"]
        assert printed == [round(float(x), 6) for x in logits]
    assert main(["tag", str(path), "--window-seconds", "-1"]) == 2
    assert "window_seconds must be 0 (no windows) or positive, got -1.0" in capsys.readouterr().err
