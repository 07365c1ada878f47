"""The audio backbone run by an inference runtime on a CPU: OpenVINO or ONNX Runtime.

Both run the same ONNX file, exported once per weights with `torch.onnx.export` (batch and
frame axes dynamic; `export_onnx`) and kept in the user cache (`<cache>/runtime/`, written atomically), so a
later process with the same weights loads it instead of exporting. The front end stays in torch
(its FFT is faster there than in either runtime). Which runtime: the tower's `runtime` setting,
`"auto"` (OpenVINO where installed, else ONNX Runtime, else torch), `"eager"` (torch), `"onnx"`
or `"openvino"`; the environment variable HYBRID_RETRIEVAL_RUNTIME gives the default. Eager is
the fallback: not on a CPU, no runtime installed (for "auto"; a runtime asked for by name and
missing is an error), or an export that fails (one warning). What each choice gives is measured
in BENCHMARKS.md; the runtimes' outputs equal torch's to 1e-4 (tested).
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from hybrid_retrieval import hub
from hybrid_retrieval.deps import optional_import
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.fingerprint import fingerprint_hash, module_state_hash
from hybrid_retrieval.outputs import TowerOutput

log = logging.getLogger("hybrid_retrieval")

RUNTIMES = ("auto", "eager", "onnx", "openvino")
RUNTIME_VARIABLE = "HYBRID_RETRIEVAL_RUNTIME"
# The Python module of each runtime, in the order "auto" prefers them (the faster first).
RUNTIME_MODULES = {"openvino": "openvino", "onnx": "onnxruntime"}
# Part of the exported file's cache key: bump it when the export changes what it writes.
EXPORT_FORMAT = 1
_OUTPUTS = ("tokens", "mask", "embedding", "logits")


def runtime_setting(value: str | None = None) -> str:
    """A checked runtime setting; None: $HYBRID_RETRIEVAL_RUNTIME, else "auto"."""
    if value is None:
        value = os.environ.get(RUNTIME_VARIABLE, "").strip() or "auto"
    if value not in RUNTIMES:
        raise BadInputError(f"unknown audio runtime {value!r} (setting or ${RUNTIME_VARIABLE}); known: {list(RUNTIMES)}")
    return value


def resolve_runtime(setting: str, device: torch.device) -> str:
    """The runtime that runs a backbone on `device`: eager off the CPU; for "auto", the first of
    RUNTIME_MODULES that is installed (eager when none is); a runtime asked for by name must be
    installed (MissingDependencyError naming the extra otherwise)."""
    setting = runtime_setting(setting)
    if setting == "eager" or device.type != "cpu":
        return "eager"
    if setting == "auto":
        return next((name for name, module in RUNTIME_MODULES.items() if importlib.util.find_spec(module)), "eager")
    optional_import(RUNTIME_MODULES[setting], "runtime", f"the {setting} audio runtime")
    return setting


class _Outputs(nn.Module):
    """The backbone with its TowerOutput as a tuple (what an ONNX graph returns)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, mel: Tensor) -> tuple[Tensor, ...]:
        return tuple(t for _, t in _present(self.backbone(mel)))


def _present(out: TowerOutput) -> list[tuple[str, Tensor]]:
    """(name, tensor) of the outputs a backbone gives (logits only where it has a tagging head)."""
    return [(name, getattr(out, name)) for name in _OUTPUTS if getattr(out, name) is not None]


def export_onnx(backbone: nn.Module, n_mels: int, path: Path) -> None:
    """Write `backbone` (eval mode, log-mel (batch, n_mels, frames) in) as an ONNX file at `path`,
    batch and frames dynamic, weights inside the file.

    With torch's TorchScript-based exporter (`dynamo=False`, deprecated since torch 2.9 but kept):
    it traces this backbone several times faster than the torch.export-based one, which matters
    because weights that change (fine-tuning, with an evaluation each epoch) are exported again.
    Should it go, the export fails and the tower runs in torch (one warning)."""
    example = torch.zeros(2, n_mels, 400)
    with torch.no_grad():
        names = [name for name, _ in _present(backbone(example))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_Outputs(backbone).eval(), (example,), str(path), input_names=["mel"], output_names=names,
                          dynamic_axes={"mel": {0: "batch", 2: "frames"}}, dynamo=False)


# Exported files by cache key, for this process: a key met again (another tower with the same
# weights, or the same tower after its cache folder changed) reuses the file; None: export failed.
_EXPORTED: dict[str, Path | None] = {}
_EXPORT_LOCK = threading.Lock()


def exported_backbone(spec: str, backbone: nn.Module, source: nn.Module, n_mels: int) -> Path | None:
    """The ONNX file of `backbone` (an inference copy of `source`, whose weights key the cache),
    exported now or found in the cache; None (after one warning) when the export fails."""
    key = fingerprint_hash({"audio_encoder": spec, "state": module_state_hash(source), "format": EXPORT_FORMAT,
                            "torch": torch.__version__, "n_mels": n_mels})
    with _EXPORT_LOCK:
        known = _EXPORTED.get(key, "")
        if known is None or (known and known.exists()):
            return known
        target = hub.cache_dir() / "runtime" / f"{spec.replace(':', '-')}-{key}.onnx"
        if not target.exists():
            target = _export_to_cache(backbone, n_mels, target)
        _EXPORTED[key] = target
        return target


def _export_to_cache(backbone: nn.Module, n_mels: int, target: Path) -> Path | None:
    try:
        try:
            with hub.atomic_path(target) as tmp:
                export_onnx(backbone, n_mels, tmp)
        except hub.UnwritableError as exc:  # no cache to keep it in: this process's temporary folder
            log.warning("cannot keep the exported audio backbone in the cache (%s); exporting to a temporary file",
                        exc.reason)
            target = Path(tempfile.mkdtemp(prefix="hybrid_retrieval-runtime-")) / target.name
            export_onnx(backbone, n_mels, target)
    # The exporter fails in many ways (tracing, operator conversion, onnxscript), each its own type.
    except Exception as exc:  # noqa: BLE001
        log.warning("exporting the audio backbone for the inference runtime failed (%s: %s); using torch",
                    type(exc).__name__, exc)
        return None
    return target


class _SignalStack(ctypes.Structure):  # stack_t of sigaltstack(2) on Linux
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def _kept_signal_stack():
    """Put back the calling thread's alternate signal stack afterwards. OpenVINO's CPU plugin
    installs one when it compiles a model and frees it later without uninstalling it; a signal
    handled on this thread after that (Python's handlers ask for the alternate stack; torch's
    DataLoader handles SIGCHLD, so a finished subprocess is enough) is delivered onto freed memory
    and the kernel kills the process with SIGSEGV. No library restores it, hence ctypes."""
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    before = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(before))
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(before), None)  # SS_DISABLE in its flags if there was none


# infer(mel as a float32 array) -> the graph's outputs, in the order of its output names.
Infer = Callable[[np.ndarray], list[np.ndarray]]


def _compile(path: Path, runtime: str, threads: int) -> tuple[Infer, list[str]]:
    """The exported backbone at `path` loaded in `runtime` with `threads` compute threads, float32
    throughout: its infer function and output names."""
    if runtime == "openvino":
        import openvino

        core = openvino.Core()
        # f32: on CPUs with bf16 units OpenVINO would otherwise compute in bf16.
        with _kept_signal_stack():
            compiled = core.compile_model(core.read_model(str(path)), "CPU", {
                "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        count = len(compiled.outputs)

        def infer(array: np.ndarray) -> list[np.ndarray]:
            request.infer({0: array})
            return [request.get_output_tensor(i).data.copy() for i in range(count)]

        return infer, [output.get_any_name() for output in compiled.outputs]
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # Idle threads sleep instead of spinning, which would take the cores from torch's front end.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return (lambda array: session.run(None, {"mel": array})), [output.name for output in session.get_outputs()]


class RuntimeBackbone:
    """An exported backbone loaded in OpenVINO or ONNX Runtime: log-mel (batch, n_mels, frames)
    -> TowerOutput, float32 throughout, on `threads` compute threads or, asked for, on fewer
    (a runtime fixes the count when it loads a model: each other count is loaded once, when first
    asked for). Safe to call from several threads (calls run one at a time)."""

    def __init__(self, path: Path, runtime: str, threads: int) -> None:
        self.runtime, self.path, self.threads = runtime, path, threads
        self._lock = threading.Lock()
        infer, self._names = _compile(path, runtime, threads)
        self._loaded = {threads: infer}

    def __call__(self, mel: Tensor, threads: int | None = None) -> TowerOutput:
        array = np.ascontiguousarray(mel.numpy(), dtype=np.float32)
        threads = self.threads if threads is None else threads
        with self._lock:
            if threads not in self._loaded:
                self._loaded[threads] = _compile(self.path, self.runtime, threads)[0]
            values = self._loaded[threads](array)
        out = dict(zip(self._names, (torch.from_numpy(v) for v in values)))
        return TowerOutput(out["tokens"], out["mask"].bool(), out["embedding"], out.get("logits"))


class RuntimeTower:
    """An inference tower whose backbone runs in a runtime: waveform (batch, samples) -> TowerOutput,
    the front end in torch."""

    def __init__(self, frontend: nn.Module, backbone: RuntimeBackbone) -> None:
        self.frontend, self.backbone = frontend, backbone

    @property
    def runtime(self) -> str:
        return self.backbone.runtime

    @property
    def log_mels(self) -> LogMels:
        """Its front end as an AudioReader's features, so that readers compute the log-mels."""
        return LogMels(self.frontend)

    def __call__(self, waveform: Tensor) -> TowerOutput:
        return self.backbone(self.frontend(waveform))

    @contextlib.contextmanager
    def overlapped(self) -> Iterator[Submit]:
        """A `submit(waveforms, done)` for many forward passes: from the second one on, the front
        end of each batch runs in the calling thread, on half of torch's threads, while the
        backbone of the batch before runs in a background thread on the other half (one in
        flight). `done(output)` is called for each batch in the order submitted, the last ones
        when the block ends; a block with a single batch runs it as `__call__` does, on every
        thread. On a CPU this ran faster than front end and backbone in turn, each on all cores
        (BENCHMARKS.md): the two thread pools no longer hand the cores to each other at every
        batch, and together they ask for no more threads than there are. torch's thread count is
        lowered for the duration of the block and restored after."""
        forwards = _OverlappedForwards(self)
        try:
            yield forwards.submit
            forwards.flush()
        finally:
            forwards.stop()


class LogMels:
    """A front end as reader features (`audio.reader.Features`): equal-length windows (n, samples)
    -> their log-mels, padded to the front end's minimum first (as `embed_windows` pads), in
    inference mode (a reader thread is not in its caller's)."""

    def __init__(self, frontend: nn.Module) -> None:
        self.frontend = frontend

    def __call__(self, windows: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.frontend(self.frontend.pad_to_minimum(windows))


# submit(waveforms, done): run a forward pass, then done(its output), now or later.
Submit = Callable[[Tensor, Callable[[TowerOutput], None]], None]


class _OverlappedForwards:
    """The state of `RuntimeTower.overlapped`: the first batch held back (run whole if it stays
    alone), then the backbone's pending batch and its worker thread."""

    def __init__(self, tower: RuntimeTower) -> None:
        self.tower = tower
        self.held: tuple[Tensor, Callable[[TowerOutput], None]] | None = None
        self.pending: tuple[Future, Callable[[TowerOutput], None]] | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.threads = torch.get_num_threads()
        # from the second batch on: the front end on half of the threads, the backbone on the rest
        self.front_threads = max(1, self.threads // 2)
        self.backbone_threads = max(1, self.threads - self.front_threads)

    def submit(self, waveforms: Tensor, done: Callable[[TowerOutput], None]) -> None:
        if self.executor is None:
            if self.held is None:
                self.held = (waveforms, done)
                return
            torch.set_num_threads(self.front_threads)
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="hybrid-retrieval-backbone")
            first, self.held = self.held, None
            self._front(*first)
        self._front(waveforms, done)

    def _front(self, waveforms: Tensor, done: Callable[[TowerOutput], None]) -> None:
        mel = self.tower.frontend(waveforms)
        self._finish()
        self.pending = (self.executor.submit(self.tower.backbone, mel, self.backbone_threads), done)

    def _finish(self) -> None:
        if self.pending is not None:
            (future, done), self.pending = self.pending, None
            done(future.result())

    def flush(self) -> None:
        if self.held is not None:
            (waveforms, done), self.held = self.held, None
            done(self.tower(waveforms))
        self._finish()

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            torch.set_num_threads(self.threads)
