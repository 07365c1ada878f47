"""load_audio: any rate, channel count and common format in; mono float32 at 32 kHz out."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hybrid_retrieval.audio.io import AudioLoadError, load_audio


def _tone(rate: int, seconds: float = 1.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([wave, -wave * 0.5][:channels], axis=1) if channels > 1 else wave


@pytest.mark.parametrize("fmt,rate", [("wav", 44_100), ("flac", 16_000), ("ogg", 48_000), ("wav", 32_000), ("mp3", 44_100)])
def test_formats_and_rates(tmp_path: Path, fmt: str, rate: int) -> None:
    path = tmp_path / f"tone.{fmt}"
    sf.write(path, _tone(rate, 1.0), rate)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 32_000) <= 1200  # mp3 adds encoder delay/padding
    # the 440 Hz tone survives resampling: its spectral peak stays at 440 Hz
    spectrum = np.abs(np.fft.rfft(wave[:32_000] if len(wave) >= 32_000 else np.pad(wave, (0, 32_000 - len(wave)))))
    assert abs(np.argmax(spectrum) - 440) <= 2


def test_stereo_is_averaged(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    stereo = _tone(32_000, 0.5, channels=2)
    sf.write(path, stereo, 32_000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), stereo.mean(axis=1), atol=1e-6)


def test_silence_is_valid(tmp_path: Path, mn04) -> None:
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(32_000, dtype=np.float32), 32_000)
    wave = load_audio(path)
    assert not wave.any()
    out = mn04.embed_waveforms([wave])[0]
    assert np.isfinite(out.embedding.numpy()).all() and np.isfinite(out.logits.numpy()).all()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioLoadError, match="not found.*nothing.wav"):
        load_audio(tmp_path / "nothing.wav")


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioLoadError, match="garbage.wav is not an audio file"):
        load_audio(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 32_000)
    with pytest.raises(AudioLoadError, match="empty.*empty.wav"):
        load_audio(path)


def test_all_nan_file(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    sf.write(path, np.full(1000, np.nan, dtype=np.float32), 32_000, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match="no finite samples.*nan.wav"):
        load_audio(path)


def test_some_nan_samples_are_zeroed(tmp_path: Path) -> None:
    path = tmp_path / "partly_nan.wav"
    data = np.ones(1000, dtype=np.float32) * 0.25
    data[10:20] = np.nan
    sf.write(path, data, 32_000, subtype="FLOAT")
    wave = load_audio(path)
    assert np.isfinite(wave).all() and (wave[10:20] == 0).all() and wave[0] == pytest.approx(0.25)
