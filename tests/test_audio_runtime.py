"""The audio tower's inference runner: kept until the weights change, run by OpenVINO or ONNX
Runtime where installed, equal to the eager tower's outputs to 1e-4; the export cached on disk;
torch as the fallback. And the front end's sparse mel product against the dense formula."""
from __future__ import annotations

import copy
import ctypes
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_only

from hybrid_retrieval.audio import runtime
from hybrid_retrieval.audio.frontend import LogMelFrontend
from hybrid_retrieval.audio.runtime import RuntimeTower, resolve_runtime
from hybrid_retrieval.audio.tower import AudioTower, create_audio_tower
from hybrid_retrieval.errors import BadInputError, MissingDependencyError

SR = 32_000
# Lengths from the shortest clip the tower takes (2 log-mel frames) to a 10-s clip; two share a
# length, so they run in one forward pass.
SECONDS = (514 / SR, 1.0, 3.1, 3.1, 10.0)


def _clips() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    t = lambda n: np.arange(n) / SR  # noqa: E731
    return [(0.3 * np.sin(2 * np.pi * (150 + 400 * i) * t(int(SR * s))) + 0.05 * rng.standard_normal(int(SR * s)))
            .astype(np.float32) for i, s in enumerate(SECONDS)]


def _close(got, expected, atol: float = 1e-4) -> None:
    for name in ("tokens", "embedding", "logits"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=atol, rtol=0)
    assert torch.equal(got.mask, expected.mask)


@pytest.fixture()
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache, and no exports remembered from earlier tests."""
    monkeypatch.setenv("HYBRID_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "_EXPORTED", {})
    return tmp_path / "cache" / "runtime"


@pytest.fixture()
def random_tower() -> AudioTower:
    torch.manual_seed(0)
    return create_audio_tower("efficientat:mn04_as", pretrained=False, runtime="eager").eval()


@pytest.mark.parametrize("name", ["onnx", "openvino"])
def test_runtime_outputs_equal_the_eager_towers(name: str, shared: Path, private_cache: Path) -> None:
    """The released mn04 weights: every clip's tokens, embedding and logits within 1e-4 of the
    eval-mode tower's own forward pass and of a fresh inference copy's, alone or in batches."""
    tower = create_audio_tower("efficientat:mn04_as", weights=str(shared / "models" / "mn04_as_mAP_432.pt"),
                               runtime=name).eval()
    runner = tower.inference_runner()
    assert isinstance(runner, RuntimeTower) and runner.runtime == name
    clips = _clips()
    with torch.inference_mode():
        plain = [tower(torch.from_numpy(clip)[None]) for clip in clips]
    fresh = tower.embed_waveforms(clips, batch_size=4, runner=tower.inference_copy())
    for batch_size in (1, 4):
        for got, eager, copied in zip(tower.embed_waveforms(clips, batch_size=batch_size), plain, fresh):
            _close(got, eager)
            _close(got, copied)
    assert tower.inference_runner() is runner


def test_auto_prefers_openvino_then_onnx_runtime_then_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_runtime("auto", cpu) == "openvino"
    assert resolve_runtime("auto", torch.device("cuda")) == "eager"  # only on a CPU (no GPU needed to decide)
    assert resolve_runtime("onnx", torch.device("cuda")) == "eager"
    assert resolve_runtime("eager", cpu) == "eager"
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    assert resolve_runtime("auto", cpu) == "onnx"
    with pytest.raises(MissingDependencyError, match=r'openvino.*hybrid_retrieval\[runtime\]'):
        resolve_runtime("openvino", cpu)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert resolve_runtime("auto", cpu) == "eager"
    monkeypatch.setenv("HYBRID_RETRIEVAL_RUNTIME", "onnx")
    with pytest.raises(MissingDependencyError, match="onnxruntime"):
        resolve_runtime(runtime.runtime_setting(), cpu)


def test_runtime_setting_is_checked(monkeypatch: pytest.MonkeyPatch, random_tower: AudioTower) -> None:
    with pytest.raises(BadInputError, match="unknown audio runtime 'fast'"):
        random_tower.runtime = "fast"
    monkeypatch.setenv("HYBRID_RETRIEVAL_RUNTIME", "onnx")
    assert create_audio_tower("efficientat:mn04_as", pretrained=False).runtime == "onnx"
    monkeypatch.setenv("HYBRID_RETRIEVAL_RUNTIME", "quick")
    with pytest.raises(BadInputError, match="HYBRID_RETRIEVAL_RUNTIME"):
        create_audio_tower("efficientat:mn04_as", pretrained=False)


def _check_fresh(tower: AudioTower, previous) -> object:
    """The runner is new, and its outputs equal a fresh inference copy's; returns it."""
    runner = tower.inference_runner()
    assert runner is not previous
    clips = _clips()[1:3]
    for got, expected in zip(tower.embed_waveforms(clips), tower.embed_waveforms(clips, runner=tower.inference_copy())):
        _close(got, expected, atol=1e-6)
    return runner


def test_runner_is_kept_until_the_weights_change(random_tower: AudioTower) -> None:
    tower = random_tower
    clip = _clips()[1]
    runner = tower.inference_runner()
    before = tower.embed_waveforms([clip])[0]
    assert tower.inference_runner() is runner  # kept across calls
    _close(tower.embed_waveforms([clip])[0], before, atol=0)

    tower.train()  # the mode is not the weights: an inference copy is always in eval mode
    tower.embed_waveforms([clip])
    assert tower.inference_runner() is runner

    optimizer = torch.optim.SGD(tower.parameters(), lr=0.1)
    tower(torch.from_numpy(clip)[None]).embedding.sum().backward()
    optimizer.step()  # in place: bumps the version counters
    tower.eval()
    runner = _check_fresh(tower, runner)
    assert not torch.allclose(tower.embed_waveforms([clip])[0].embedding, before.embedding)

    torch.manual_seed(1)
    other = create_audio_tower("efficientat:mn04_as", pretrained=False)
    tower.load_state_dict(other.state_dict())
    runner = _check_fresh(tower, runner)
    _close(tower.embed_waveforms([clip])[0], other.embed_waveforms([clip])[0], atol=1e-4)

    tower.to(torch.float64).to(torch.float32)  # new tensors everywhere, as a move to another device makes
    runner = _check_fresh(tower, runner)

    tower.backbone = copy.deepcopy(tower.backbone)  # a replaced module, the same values
    runner = _check_fresh(tower, runner)

    with torch.no_grad():
        tower.backbone.classifier[-1].bias.add_(1.0)
    runner = _check_fresh(tower, runner)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner = _check_fresh(tower, runner)
    finally:
        torch.set_num_threads(threads)


def test_runner_is_not_part_of_the_towers_state(random_tower: AudioTower) -> None:
    keys = set(random_tower.state_dict())
    random_tower.inference_runner()
    assert set(random_tower.state_dict()) == keys
    twin = copy.deepcopy(random_tower)
    assert twin.inference_runner() is not random_tower.inference_runner()
    assert len(list(twin.parameters())) == len(list(random_tower.parameters()))


def test_runtime_runner_is_kept_and_its_export_cached(random_tower: AudioTower, private_cache: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """One export per weights: a second tower with the same weights in a new process (nothing
    remembered) loads the cached file instead of exporting, with the same outputs."""
    random_tower.runtime = "auto"
    runner = random_tower.inference_runner()
    assert isinstance(runner, RuntimeTower) and runner.runtime == "openvino"
    files = sorted(p.name for p in private_cache.iterdir())
    assert len(files) == 1 and files[0].startswith("efficientat-mn04_as-") and files[0].endswith(".onnx")
    clips = _clips()
    expected = random_tower.embed_waveforms(clips)
    assert random_tower.inference_runner() is runner

    monkeypatch.setattr(runtime, "_EXPORTED", {})

    def no_export(*args, **kwargs) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(runtime, "export_onnx", no_export)
    twin = copy.deepcopy(random_tower)
    for got, want in zip(twin.embed_waveforms(clips), expected):
        _close(got, want, atol=1e-6)
    assert sorted(p.name for p in private_cache.iterdir()) == files  # nothing else, no temporary left


def test_failed_export_falls_back_to_torch_and_leaves_no_file(random_tower: AudioTower, private_cache: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    def half_then_fail(backbone, n_mels: int, path: Path) -> None:
        path.write_bytes(b"half an ONNX file")
        raise RuntimeError("operator not supported")

    monkeypatch.setattr(runtime, "export_onnx", half_then_fail)
    random_tower.runtime = "onnx"
    with caplog.at_level(logging.WARNING, logger="hybrid_retrieval"):
        runner = random_tower.inference_runner()
    assert isinstance(runner, AudioTower)  # the eager inference copy
    assert "operator not supported" in caplog.text and "using torch" in caplog.text
    assert not list(private_cache.iterdir())
    clip = _clips()[2]
    _close(random_tower.embed_waveforms([clip])[0],
           random_tower.embed_waveforms([clip], runner=random_tower.inference_copy())[0], atol=1e-6)


def test_unwritable_cache_exports_to_a_temporary_file(random_tower: AudioTower, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setenv("HYBRID_RETRIEVAL_CACHE", str(locked))
    monkeypatch.setattr(runtime, "_EXPORTED", {})
    random_tower.runtime = "onnx"
    with read_only(locked), caplog.at_level(logging.WARNING, logger="hybrid_retrieval"):
        runner = random_tower.inference_runner()
    assert isinstance(runner, RuntimeTower) and runner.runtime == "onnx"
    assert "cannot keep the exported audio backbone in the cache" in caplog.text
    clip = _clips()[2]
    _close(random_tower.embed_waveforms([clip])[0],
           random_tower.embed_waveforms([clip], runner=random_tower.inference_copy())[0])


def test_timm_towers_run_in_torch(private_cache: Path) -> None:
    tower = create_audio_tower("timm:resnet18", pretrained=False, runtime="openvino")
    assert isinstance(tower.inference_runner(), AudioTower)
    assert not private_cache.exists()


def test_threads_share_one_runner(random_tower: AudioTower, private_cache: Path) -> None:
    random_tower.runtime = "openvino"
    clips = _clips()
    expected = random_tower.embed_waveforms(clips)
    results: dict[int, list] = {}

    def work(i: int) -> None:
        results[i] = random_tower.embed_waveforms(clips)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for i in range(3):
        for got, want in zip(results[i], expected):
            _close(got, want, atol=1e-6)


def test_sparse_mel_product_equals_the_dense_formula() -> None:
    """The front end's mel energies (a CSR product) against the banks as a dense matrix product,
    over a batch, in eval mode and in training mode (jittered banks, the same random draws)."""
    frontend = LogMelFrontend()
    rng = np.random.default_rng(0)
    power = torch.from_numpy(rng.random((3, frontend.config.n_fft // 2 + 1, 57)).astype(np.float32))
    for training in (False, True):
        frontend.train(training)
        torch.manual_seed(5)
        got = frontend._mel(power)
        torch.manual_seed(5)
        banks = frontend._banks()
        torch.testing.assert_close(got, torch.matmul(banks, power), atol=1e-5, rtol=1e-6)



def _signal_stack() -> tuple:
    libc = ctypes.CDLL(None, use_errno=True)
    stack = runtime._SignalStack()
    assert libc.sigaltstack(None, ctypes.byref(stack)) == 0
    return stack.ss_sp, stack.ss_flags, stack.ss_size


def test_an_openvino_compile_leaves_the_signal_stack_as_it_was(random_tower: AudioTower, private_cache: Path) -> None:
    """OpenVINO's CPU plugin installs an alternate signal stack when it compiles a model and later
    frees it, still installed: the next signal Python handled (a finished subprocess, with torch's
    DataLoader SIGCHLD handler) killed the process. The runtime puts the old one back."""
    before = _signal_stack()
    random_tower.runtime = "openvino"
    random_tower.embed_waveforms(_clips()[:1])
    assert isinstance(random_tower.inference_runner(), RuntimeTower)
    assert _signal_stack() == before


@pytest.fixture
def two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_overlapped_forwards_keep_order_and_give_the_threads_back(random_tower: AudioTower, private_cache: Path,
                                                                  two_threads: None) -> None:
    """Many passes: outputs in submission order, equal to one pass at a time; the front end runs on
    half of torch's threads meanwhile and the backbone on the others (a second compiled model),
    and the count is restored. One pass: run whole, at once."""
    random_tower.runtime = "openvino"
    runner = random_tower.inference_runner()
    clips = [torch.from_numpy(clip)[None] for clip in _clips()]
    threads = torch.get_num_threads()
    calls = []
    infer = runner.backbone.__call__
    runner.backbone = lambda mel, threads=None: calls.append(threads) or infer(mel, threads)
    with torch.inference_mode():
        expected = [runner(clip) for clip in clips]
        got, threads_seen = [], []
        with runner.overlapped() as submit:
            for i, clip in enumerate(clips):
                submit(clip, lambda out, i=i: got.append((i, out)))
                threads_seen.append(torch.get_num_threads())
        assert [i for i, _ in got] == list(range(len(clips)))
        for (_, out), want in zip(got, expected):
            _close(out, want, atol=1e-6)
        assert threads_seen == [threads] + [1] * (len(clips) - 1)
        assert calls == [None] * len(clips) + [1] * len(clips) and torch.get_num_threads() == threads
        assert sorted(infer.__self__._loaded) == [1, 2]
        alone = []
        with runner.overlapped() as submit:
            submit(clips[0], alone.append)
            assert alone == [] and torch.get_num_threads() == threads  # held until the block ends
        _close(alone[0], expected[0], atol=1e-6)


def test_a_failing_overlapped_pass_raises_and_gives_the_threads_back(random_tower: AudioTower,
                                                                     private_cache: Path) -> None:
    random_tower.runtime = "openvino"
    runner = random_tower.inference_runner()
    broken = RuntimeTower(runner.frontend, lambda mel, threads=None: (_ for _ in ()).throw(RuntimeError("backbone failed")))
    threads = torch.get_num_threads()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="backbone failed"):
        with broken.overlapped() as submit:
            for clip in _clips()[:3]:
                submit(torch.from_numpy(clip)[None], lambda out: None)
    assert torch.get_num_threads() == threads


def test_cpu_forward_passes_hold_one_clip_in_a_runtime_and_four_in_torch(random_tower: AudioTower,
                                                                         private_cache: Path) -> None:
    """The default cap on a CPU forward pass: one 10-s clip in a runtime (its passes overlap with
    the next front end), four in torch; clips of half the length go two and eight at a time."""
    clips = [np.zeros(10 * SR, dtype=np.float32)] * 5 + [np.zeros(5 * SR, dtype=np.float32)] * 9
    eager = random_tower.inference_runner()
    sizes: list[int] = []

    def recording(waveforms: torch.Tensor):
        sizes.append(waveforms.shape[0])
        return eager(waveforms)

    random_tower.embed_waveforms(clips, batch_size=32, runner=recording)
    assert sizes == [4, 8, 1, 1]  # full passes as they fill, the rest at the end
    random_tower.runtime = "openvino"
    runner = random_tower.inference_runner()
    frontend, sizes[:] = runner.frontend, []
    runner.frontend = lambda waveforms: sizes.append(waveforms.shape[0]) or frontend(waveforms)
    random_tower.embed_waveforms(clips, batch_size=32)
    assert sizes == [1] * 5 + [2] * 4 + [1]
