"""Audio read by worker processes ahead of the tower: the same pieces in the same order as one
process reads them (so the same outputs, bit for bit), bad files handed out as errors in their
turn, files the cache holds never read, and one progress count per file."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hybrid_retrieval.audio import io as audio_io
from hybrid_retrieval.audio import reader as reader_module
from hybrid_retrieval.audio.io import AudioLoadError, audio_windows
from hybrid_retrieval.audio.reader import AudioReader, _ReadAhead
from hybrid_retrieval.audio.runtime import RuntimeTower
from hybrid_retrieval.embedding import audio_outputs, embed_audio_files, embed_catalogue
from hybrid_retrieval.model import create_model

SR = 32_000


def _write(path: Path, rate: int, seconds: float, seed: int, subtype: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.2 * np.sin(2 * np.pi * (200 + 150 * seed) * t) + 0.05 * rng.standard_normal(len(t))
    sf.write(path, wave.astype(np.float32), rate, subtype=subtype)
    return path


@pytest.fixture(scope="module")
def mixed_clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Clips of mixed rates, lengths and formats (one of 61 s: seven 10-s windows), a file that is
    not audio, a long file of NaN samples, and a clip shorter than the front end's minimum."""
    folder = tmp_path_factory.mktemp("mixed")
    clips = [_write(folder / "a.wav", 44_100, 3.2, 1), _write(folder / "b.flac", 16_000, 25.3, 2),
             _write(folder / "c.wav", 32_000, 10.0, 3), _write(folder / "d.flac", 48_000, 61.0, 4),
             _write(folder / "e.ogg", 22_050, 1.5, 5), _write(folder / "f.wav", 8_000, 0.01, 6)]
    (folder / "broken.wav").write_bytes(b"RIFF nonsense")
    sf.write(folder / "nan.wav", np.full(SR * 25, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    return clips[:2] + [folder / "broken.wav"] + clips[2:4] + [folder / "nan.wav"] + clips[4:]


def _same(a, b) -> None:
    if isinstance(a, AudioLoadError):
        assert type(a) is type(b) and str(a) == str(b)
        return
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    assert torch.equal(a.embedding, b.embedding) and torch.equal(a.logits, b.logits)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("log_mels", [False, True])
def test_workers_embed_exactly_what_one_process_reads(mixed_clips: list[Path], mn04, workers: int, log_mels: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Long files go out in parts (here of 2 windows: d.flac in 4 parts, the 25-s NaN file in 2,
    refused once its last part is read); the outputs equal those of the file-by-file reading of
    `io.audio_windows` in this process, bit for bit; also when the reader thread computes the
    log-mels and the tower runs its backbone alone on them (reader processes hand out windows
    either way)."""
    monkeypatch.setattr(audio_io, "WINDOWS_PER_READ", 2)
    expected = embed_audio_files(mn04, mixed_clips, window_seconds=10.0)
    runner = mn04.inference_runner()
    assert isinstance(runner, RuntimeTower)  # the runtime extra is installed: the default CPU runner
    features = runner.log_mels if log_mels else None
    threads = torch.get_num_threads()
    with AudioReader(mixed_clips, mn04.window_samples(10.0), workers=workers, features=features) as reader:
        parallel = embed_audio_files(mn04, mixed_clips, window_seconds=10.0, reader=reader)
    assert torch.get_num_threads() == threads  # given back, though the reader thread set its own
    assert [type(out).__name__ for out in expected].count("AudioLoadError") == 2
    assert "no finite samples" in str(expected[5]) and "not an audio file" in str(expected[2])
    assert expected[4].tokens.shape[1] == 7 * expected[3].tokens.shape[1]  # seven windows of d.flac
    for a, b in zip(parallel, expected):
        _same(a, b)


def test_log_mels_from_a_reader_also_run_on_an_eager_runner(mixed_clips: list[Path], mn04) -> None:
    """A reader's log-mels given to a runner in torch (here an inference copy: the runtime
    setting changed after the reader was made) go through its backbone alone, and give what the
    runtime gives to 1e-4 (the runtimes' parity bound)."""
    usable = [mixed_clips[i] for i in (0, 1, 4)]
    expected = embed_audio_files(mn04, usable, window_seconds=10.0)
    features = mn04.inference_runner().log_mels
    with AudioReader(usable, mn04.window_samples(10.0), workers=0, features=features) as reader:
        eager = embed_audio_files(mn04, usable, window_seconds=10.0, runner=mn04.inference_copy(), reader=reader)
    for a, b in zip(eager, expected):
        assert a.tokens.shape == b.tokens.shape
        torch.testing.assert_close(a.embedding, b.embedding, rtol=0, atol=1e-4)
        torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-4)


def test_a_reader_drops_files_not_asked_for_and_reads_the_others_on_the_spot(mixed_clips: list[Path], mn04) -> None:
    """Asked for a subset, in order, plus a file it never queued: each file's pieces are the ones
    `audio_windows` reads, and each file counts once."""
    window = mn04.window_samples(10.0)
    queued = mixed_clips[:5]
    # f.wav was never queued; broken.wav was, but is asked for after d.flac: both are read on the spot
    asked = [mixed_clips[1], mixed_clips[4], mixed_clips[7], mixed_clips[2]]
    with AudioReader(queued, window, workers=1) as reader:
        failures: dict = {}
        pieces = list(reader.pieces(asked, failures))
        assert reader.files_read == 4
    assert sorted(failures) == [3] and "not an audio file" in str(failures[3])
    for position, path in enumerate(asked[:3]):
        mine = [piece for owner, piece in pieces if owner == position]
        theirs = list(audio_windows(path, window))
        assert len(mine) == len(theirs) and all(np.array_equal(a.numpy(), b) for a, b in zip(mine, theirs))


def test_catalogue_with_workers_and_cache_equals_one_process(mixed_clips: list[Path], tmp_path: Path,
                                                             offline_weights: Path, capsys: pytest.CaptureFixture) -> None:
    """embed_catalogue with 2 reader processes equals 0, bit for bit; a second run finds every
    file in the cache and reads none; a damaged cache shard makes its files computed again
    (files the reader did not queue: read on the spot), with the same result. The progress bar
    counts files, with a rate."""
    torch.manual_seed(0)
    model = create_model("mn04_minilm", embed_dim=32).eval()
    paths = [p for i, p in enumerate(mixed_clips) if i not in (2, 5)]  # the usable files
    one = embed_catalogue(model, paths, workers=0, chunk_size=3, progress=False)
    cached = embed_catalogue(model, paths, cache_dir=tmp_path, workers=2, chunk_size=3)
    assert torch.equal(one, cached)
    bar = capsys.readouterr().err.splitlines()[-1]
    assert f"{len(paths)}/{len(paths)}" in bar and "file/s" in bar

    reads = []
    original = reader_module.AudioReader.__init__

    def counting(self, paths, *args, **kwargs):
        reads.append(list(paths))
        original(self, paths, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reader_module.AudioReader, "__init__", counting)
        assert torch.equal(embed_catalogue(model, paths, cache_dir=tmp_path, workers=2, chunk_size=3, progress=False), one)
        assert reads[0] == []  # everything came from the cache
        shard = sorted(tmp_path.rglob("audio/*.safetensors"))[0]
        with safe_open(str(shard), "pt") as handle:  # altered values under the old checksum: found when read
            metadata = handle.metadata()
        save_file({name: value + 1 for name, value in load_file(str(shard)).items()}, str(shard), metadata=metadata)
        again = embed_catalogue(model, paths, cache_dir=tmp_path, workers=2, chunk_size=3, progress=False)
        assert reads[1] == []  # the damage shows when the shard is read: its files are read on the spot
    torch.testing.assert_close(again, one, rtol=0, atol=1e-6)  # recomputed in other batches


def test_audio_outputs_reads_in_workers_and_caches(mixed_clips: list[Path], mn04, tmp_path: Path) -> None:
    paths = mixed_clips[:3]
    with_workers = audio_outputs(mn04, paths, tmp_path, window_seconds=10.0, workers=2, progress=False)
    assert with_workers[2] is None  # broken.wav: skipped with a warning
    direct = embed_audio_files(mn04, paths, window_seconds=10.0)
    for a, b in zip(with_workers[:2], direct[:2]):
        torch.testing.assert_close(a.embedding, b.embedding, rtol=0, atol=1e-6)  # through the cache's float32


@pytest.mark.parametrize("workers", [0, 1])
def test_reading_leaves_the_global_random_state_alone(mixed_clips: list[Path], workers: int) -> None:
    """Iterating a DataLoader draws a seed; drawn from torch's global generator it would shift the
    crops and dropout of a training run that embeds files (a resumed run would then differ from an
    uninterrupted one), so the reader draws from its own."""
    before = torch.get_rng_state()
    with AudioReader(mixed_clips, SR * 10, workers=workers) as reader:
        pieces = list(reader.pieces(mixed_clips, {}))
    assert pieces and torch.equal(torch.get_rng_state(), before)


def test_the_reader_thread_reads_ahead_hands_on_errors_and_stops(mixed_clips: list[Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With no worker processes, one thread reads ahead (at most `prefetch` parts); an error raised
    while reading (not a bad file, which is handed out in its turn) reaches the caller, and
    closing the reader stops its thread."""
    import threading

    def alive() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "hybrid-retrieval-reader"]

    with AudioReader(mixed_clips, SR * 10, workers=0, prefetch=1) as reader:
        failures: dict = {}
        first = next(reader.pieces(mixed_clips, failures))
        assert first[0] == 0 and alive()
    assert not alive()

    def broken(*args, **kwargs):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(reader_module, "read_windows", broken)
    with AudioReader(mixed_clips, SR * 10, workers=0) as reader, pytest.raises(RuntimeError, match="disk went away"):
        list(reader.pieces(mixed_clips, {}))
    assert not alive()


def test_the_reader_thread_and_the_caller_share_the_features() -> None:
    """With features, a part is computed once, by whichever thread gets to it first: the caller
    for a part it takes while the thread is still reading (here held up by the source), the
    thread for parts waiting once it has read `depth` ahead. Parts come out in order, each
    equal to the features of its pieces; a part that is an error is handed on as it is."""
    import threading

    release, computed = threading.Event(), []
    parts = [(k, np.full((2, 3), float(k), dtype=np.float32), True, True) for k in range(5)]

    def source():
        yield parts[0]
        release.wait()
        yield from parts[1:]
        yield 5, AudioLoadError("bad file")

    def features(pieces: torch.Tensor) -> torch.Tensor:
        computed.append((int(pieces[0, 0]), threading.current_thread().name))
        return pieces * 2

    reader = _ReadAhead(source(), depth=5, features=features)
    try:
        first = next(reader)  # the thread waits on the source: the caller computes part 0
        assert computed == [(0, threading.current_thread().name)]
        release.set()
        for _ in range(200):  # the thread reads parts 1-4 and the error, then computes 1-4 while they wait
            if len(computed) == 5:
                break
            time.sleep(0.05)
        rest = list(reader)
    finally:
        reader.close()
    assert computed[1:] == [(k, "hybrid-retrieval-reader") for k in range(1, 5)]
    assert [p[0] for p in [first, *rest]] == list(range(6))
    for part, out in zip(parts, [first, *rest]):
        assert torch.equal(out[1], torch.from_numpy(part[1]) * 2) and out[2:] == part[2:]
    assert isinstance(rest[-1][1], AudioLoadError)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_backbone_beside_a_reader_thread_gets_the_other_threads(mixed_clips: list[Path], mn04, workers: int) -> None:
    """Beside a reader thread computing features: torch on one thread in the block (the caller's
    own front ends), the backbone on the rest, and the count restored after. Reader processes
    hand out windows, features or not: torch's count, unchanged; as without features."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        features = mn04.inference_runner().log_mels
        with AudioReader(mixed_clips, SR * 10, workers=workers, features=features) as reader:
            with reader.backbone_threads() as threads:
                inside = torch.get_num_threads()
        with AudioReader(mixed_clips, SR * 10, workers=0) as plain, plain.backbone_threads() as plain_threads:
            assert plain_threads == 2 and torch.get_num_threads() == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert (threads, inside) == ((1, 1) if workers == 0 else (2, 2))
    assert (reader.features is features) == (workers == 0)  # processes hand out windows
