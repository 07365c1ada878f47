"""The audio tower: waveform -> log-mel front end -> backbone -> TowerOutput.

`create_audio_tower("efficientat:mn10_as" | "timm:resnet50" | "timm:ast", ...)` builds one.
Clips of different lengths are embedded by `embed_waveforms`, which runs equal-length clips
together (zero-padding a CNN's input would change the clip's own embedding), and long clips
can be cut into windows whose embeddings are averaged; `embed_windows` takes the windows as a
stream, so a long recording can be read and embedded window by window. Embedding runs on the
tower's inference runner (`AudioTower.inference_runner`): an eval-mode copy with its batch norms
folded, whose backbone runs in OpenVINO or ONNX Runtime on a CPU (`audio/runtime.py`), kept
until the weights change.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from hybrid_retrieval.audio.frontend import FrontendConfig, LogMelFrontend
from hybrid_retrieval.audio.io import window_starts
from hybrid_retrieval.audio.runtime import (
    RuntimeBackbone,
    RuntimeTower,
    Submit,
    exported_backbone,
    resolve_runtime,
    runtime_setting,
)
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.fingerprint import module_state_hash
from hybrid_retrieval.lazy import import_object
from hybrid_retrieval.outputs import TowerOutput

# Audio per forward pass on a CPU, in torch: 4 clips of 10 s at 32 kHz; larger passes ran slower
# per clip, their activations no longer fitting the caches, and smaller ones too. In a runtime,
# whose passes overlap with the front end of the next on their own threads
# (`RuntimeTower.overlapped`), one clip a pass ran fastest (BENCHMARKS.md, "Audio embedding
# throughput").
CPU_FORWARD_SAMPLES = 4 * 10 * 32_000
RUNTIME_FORWARD_SAMPLES = 10 * 32_000
# The clip length of AudioSet, which the audio families' released weights were trained on.
AUDIOSET_CLIP_SECONDS = 10.0
# What embeds waveforms (batch, samples) of one length: an inference copy or a RuntimeTower.
Runner = Callable[[Tensor], TowerOutput]


@functools.cache
def audioset_labels() -> tuple[str, ...]:
    """The 527 AudioSet display names in the order of the EfficientAT logits."""
    text = resources.files("hybrid_retrieval.resources").joinpath("audioset_labels.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return tuple(name for _mid, name in rows[1:])


class AudioTower(nn.Module):
    """Front end and backbone; `spec` names the architecture (e.g. "efficientat:mn04_as").

    `default_window_seconds`: the window length `tag` and `index build` cut longer files into
    (each window read and embedded in turn, so memory does not grow with the file), by default
    the clip length the weights were trained on. `runtime`: what runs the backbone when embedding
    ("auto", "eager", "onnx", "openvino"; None: $HYBRID_RETRIEVAL_RUNTIME, else "auto"; see
    `audio/runtime.py`); it can be changed later (`tower.runtime = "eager"`).
    """

    def __init__(self, spec: str, backbone: nn.Module, frontend: LogMelFrontend | None = None,
                 pretrained: bool = False, default_window_seconds: float = AUDIOSET_CLIP_SECONDS,
                 runtime: str | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.pretrained = pretrained  # holds pretrained weights (not a random initialisation)
        self.default_window_seconds = default_window_seconds
        self.frontend = frontend or LogMelFrontend()
        self.backbone = backbone
        self.embed_dim: int = backbone.embed_dim
        self.runtime = runtime
        self._inference = _RunnerCache()

    @property
    def runtime(self) -> str:
        return self._runtime

    @runtime.setter
    def runtime(self, value: str | None) -> None:
        self._runtime = runtime_setting(value)

    @property
    def sample_rate(self) -> int:
        return self.frontend.config.sample_rate

    def forward(self, waveform: Tensor) -> TowerOutput:
        """waveform: (batch, samples) of equal length, 32 kHz."""
        return self.backbone(self.frontend(waveform))

    def fingerprint(self) -> dict:
        """What identifies this tower's outputs: architecture, front-end settings and weights."""
        return {"audio_encoder": self.spec, "frontend": self.frontend.config.to_dict(),
                "audio_state": module_state_hash(self)}

    def inference_copy(self) -> AudioTower:
        """A new eval-mode copy of this tower for embedding: every batch norm that follows a
        convolution folded into it (torch's fuse_conv_bn_eval), and the weights in channels-last
        layout, the fast path of oneDNN (CPU) and cuDNN convolutions, which carries through the
        network. Outputs equal the eval-mode tower's up to float rounding; what each choice gives
        is measured in BENCHMARKS.md. The tower itself (and its mode) is left untouched.
        """
        runner = copy.deepcopy(self).eval()
        _fold_batch_norms(runner)
        return runner.to(memory_format=torch.channels_last)

    def inference_runner(self) -> Runner:
        """What `embed_waveforms` runs: an inference copy (`inference_copy`), its backbone in the
        runtime the `runtime` setting resolves to (`audio/runtime.py`; EfficientAT backbones on
        a CPU, torch otherwise). One is kept, with a copy of the weights, and rebuilt only when
        the weights change or when the runtime setting or torch's thread count does. A change of
        weights is told without reading them: each parameter's and buffer's storage address
        (`.to(device)`, a new tensor) and version counter (bumped by in-place updates: optimizer
        steps, `load_state_dict`); writes through `.data`, which bypass the version counter, are
        not seen. The storages the runner was built from are held until it is rebuilt, so a
        new tensor cannot take one's address unnoticed. Outputs equal a fresh inference copy's
        to 1e-4 (tested).
        """
        tensors = [*self.parameters(), *self.buffers()]
        key = (tuple((t.data_ptr(), _version(t)) for t in tensors), self.runtime, torch.get_num_threads())
        cache = self._inference
        with cache.lock:
            if cache.key != key:
                cache.key = cache.runner = None  # the old copy goes before the new one is made
                cache.runner = self._build_runner()
                cache.key, cache.storages = key, [t.untyped_storage() for t in tensors]
            return cache.runner

    @torch.inference_mode(False)  # a copy made inside inference mode would hold inference tensors
    def _build_runner(self) -> Runner:
        runner = self.inference_copy()
        family = self.spec.partition(":")[0]
        runtime = resolve_runtime(self.runtime, next(self.parameters()).device)
        if family not in RUNTIME_FAMILIES or runtime == "eager":
            return runner
        path = exported_backbone(self.spec, runner.backbone, self.backbone, self.frontend.config.n_mels)
        if path is None:
            return runner
        return RuntimeTower(runner.frontend, RuntimeBackbone(path, runtime, torch.get_num_threads()))

    @property
    def min_samples(self) -> int:
        """The shortest clip the tower embeds as it is (`LogMelFrontend.min_samples`); shorter ones
        (down to one sample) are zero-padded at the end to this length, by every path that embeds
        audio (tag, index build, catalogues, cached features, the log-mel similarity source): a clip
        this short holds too little sound to refuse it for, as training crops also pad short clips."""
        return self.frontend.min_samples

    @torch.inference_mode()
    def embed_waveforms(self, waveforms: Sequence[np.ndarray | Tensor], batch_size: int = 32,
                        window_seconds: float | None = None, *, max_forward_samples: int | None = None,
                        runner: Runner | None = None) -> list[TowerOutput]:
        """Embed clips of any lengths in eval mode; one single-example TowerOutput per clip.

        Clips are grouped by exact length and run `batch_size` at a time, so a clip's embedding
        does not depend on what else is in the batch. With `window_seconds`, a longer clip is cut
        into windows (io.window_starts: the last one aligned to the clip's end): tokens are
        concatenated, the embedding and logits averaged. Clips shorter than `min_samples` are
        padded to it. A forward pass holds at most `max_forward_samples` of audio whatever
        `batch_size` (default on a CPU: RUNTIME_FORWARD_SAMPLES in a runtime, CPU_FORWARD_SAMPLES in
        torch; no cap on a GPU). The forward passes run on `runner` (default: `inference_runner()`).
        """
        window = self.window_samples(window_seconds)
        pieces = ((i, wave[start:start + window] if window else wave)
                  for i, wave in enumerate(torch.as_tensor(w, dtype=torch.float32).flatten() for w in waveforms)
                  for start in window_starts(wave.numel(), window))
        per_clip = self.embed_windows(pieces, len(waveforms), batch_size,
                                      max_forward_samples=max_forward_samples, runner=runner)
        return [merge_windows(outs) for outs in per_clip]

    def window_samples(self, window_seconds: float | None) -> int | None:
        """A window length in samples at the tower's rate (None or 0 seconds: no windows)."""
        if window_seconds is not None and not window_seconds >= 0:
            raise BadInputError(f"window_seconds must be 0 (no windows) or positive, got {window_seconds}")
        return int(window_seconds * self.sample_rate) if window_seconds else None

    @torch.inference_mode()
    def embed_windows(self, pieces: Iterable[tuple[int, np.ndarray | Tensor]], n_clips: int, batch_size: int = 32,
                      *, max_forward_samples: int | None = None, runner: Runner | None = None,
                      log_mels: bool = False, backbone_threads: int | None = None) -> list[list[TowerOutput]]:
        """The outputs of each clip's pieces (windows), in order, from a stream of (clip index,
        waveform piece). Pieces of one length are batched as they arrive and a batch runs as soon
        as it is full, so memory holds at most one pending batch per piece length besides the
        outputs, however long the stream (a long recording read window by window). Batches are
        the consecutive `batch_size` (or capped) runs of each length, as `embed_waveforms`
        describes; on a RuntimeTower, a batch's front end runs while the backbone runs the batch
        before (`RuntimeTower.overlapped`). A clip without pieces gets an empty list.

        With `log_mels`, the pieces are the windows' log-mels (n_mels, frames), already computed
        (an AudioReader's features, `RuntimeTower.log_mels`): they are batched by frame count
        (the forward cap counted in frames) and go through the runner's backbone alone, in a
        runtime on `backbone_threads` (default: its own count).
        """
        runner = runner if runner is not None else self.inference_runner()
        device = next(self.parameters()).device
        if max_forward_samples is None and device.type == "cpu":
            max_forward_samples = RUNTIME_FORWARD_SAMPLES if isinstance(runner, RuntimeTower) else CPU_FORWARD_SAMPLES
        outputs: list[dict[int, TowerOutput]] = [{} for _ in range(n_clips)]  # clip -> piece number -> output
        pending: dict[int, list[tuple[int, int, Tensor]]] = {}  # length -> (clip, piece number, piece)
        counts = [0] * n_clips

        def run(batch: list[tuple[int, int, Tensor]]) -> None:
            def done(output: TowerOutput) -> None:
                for (clip, number, _), out in zip(batch, output.to("cpu").unbatch()):
                    outputs[clip][number] = out
            submit(torch.stack([piece for _, _, piece in batch]).to(device), done)

        cap = max_forward_samples
        if log_mels and max_forward_samples is not None:
            cap = self.frontend.num_frames(max_forward_samples)
        with _forwards(runner, log_mels, backbone_threads) as submit:
            for clip, piece in pieces:
                if log_mels:
                    piece = torch.as_tensor(piece)
                    length = piece.shape[-1]
                else:
                    piece = self._padded(torch.as_tensor(piece, dtype=torch.float32).flatten(), clip)
                    length = piece.numel()
                per_forward = batch_size
                if cap is not None:
                    per_forward = max(1, min(batch_size, cap // length))
                queue = pending.setdefault(length, [])
                queue.append((clip, counts[clip], piece))
                counts[clip] += 1
                if len(queue) >= per_forward:
                    run(queue)
                    pending[length] = []
            for queue in pending.values():
                if queue:
                    run(queue)
        return [[outs[n] for n in range(len(outs))] for outs in outputs]

    def _padded(self, wave: Tensor, clip: int) -> Tensor:
        if wave.numel() == 0:
            raise BadInputError(f"clip {clip} is empty (0 samples)")
        return self.frontend.pad_to_minimum(wave)


@contextlib.contextmanager
def _forwards(runner: Runner, log_mels: bool = False, backbone_threads: int | None = None) -> Iterator[Submit]:
    """The `submit(inputs, done)` of a runner: with `log_mels`, each pass of its backbone at once
    (a runtime's on `backbone_threads`); else a RuntimeTower's overlapped forward passes, or each
    pass at once."""
    if log_mels:
        if isinstance(runner, RuntimeTower):
            yield lambda mels, done: done(runner.backbone(mels, backbone_threads))
        else:
            yield lambda mels, done: done(runner.backbone(mels))
        return
    if isinstance(runner, RuntimeTower):
        with runner.overlapped() as submit:
            yield submit
        return
    yield lambda waveforms, done: done(runner(waveforms))


def _version(tensor: Tensor) -> int:
    """A tensor's version counter (-1 for an inference tensor, which keeps none)."""
    return -1 if tensor.is_inference() else tensor._version


class _RunnerCache:
    """An AudioTower's kept inference runner and the key it was built for. Not a submodule (no
    state-dict entries); a deep copy or an unpickled tower starts with an empty one."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.runner: Runner | None = None
        self.storages: list = []
        self.lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> _RunnerCache:
        return _RunnerCache()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


def _fold_batch_norms(module: nn.Module) -> None:
    """Fold each BatchNorm2d that directly follows a Conv2d in an nn.Sequential (EfficientAT's
    conv-BN-activation blocks) into that convolution, in place; eval mode only. Other layouts
    (e.g. timm's ResNet, whose conv and norm are named attributes) are left as they are."""
    for seq in module.modules():
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                    seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), nn.Identity()


def merge_windows(outs: list[TowerOutput]) -> TowerOutput:
    """One clip's output from its windows' outputs: tokens concatenated in order, the embedding
    and logits averaged (a single window is returned as it is)."""
    if len(outs) == 1:
        return outs[0]
    logits = None if outs[0].logits is None else torch.cat([o.logits for o in outs]).mean(0, keepdim=True)
    return TowerOutput(
        torch.cat([o.tokens for o in outs], dim=1),
        torch.cat([o.mask for o in outs], dim=1),
        torch.cat([o.embedding for o in outs]).mean(0, keepdim=True),
        logits,
    )


# Audio families: "family" of `audio_encoder="family:name"` -> the builder of its backbones,
# `build(name, pretrained, weights) -> (backbone, holds pretrained weights)`. Imported when used
# (timm is slow to import). Adding a family is one module with its builder and one entry here.
AUDIO_FAMILIES = {
    "efficientat": "hybrid_retrieval.audio.efficientat:build_efficientat",
    "timm": "hybrid_retrieval.audio.timm_towers:build_timm",
}
# Families whose backbones the inference runtimes run (their export and parity are tested);
# the others always run in torch.
RUNTIME_FAMILIES = {"efficientat"}


def create_audio_tower(spec: str = "efficientat:mn04_as", pretrained: bool = True,
                       weights: str | None = None, frontend: FrontendConfig | None = None,
                       runtime: str | None = None) -> AudioTower:
    """Build an audio tower from a spec `family:name` (a bare `mn10_as` means `efficientat:mn10_as`).

    efficientat:<mn04_as|...|mn40_as_ext>: the EfficientAT MobileNetV3; with `pretrained`, the
        released AudioSet weights are resolved (explicit `weights` path, $HYBRID_RETRIEVAL_WEIGHTS_DIR,
        cache, download) and loaded strictly.
    timm:<resnet50|ast|any timm model>: a timm backbone, pretrained where online.
    runtime: what runs the backbone when embedding (AudioTower's `runtime`).
    """
    family, _, name = spec.partition(":")
    if not name:
        family, name = "efficientat", family
    if family not in AUDIO_FAMILIES:
        raise BadInputError(f"unknown audio encoder family {family!r} in audio_encoder={spec!r}; "
                            f"known: {sorted(AUDIO_FAMILIES)} (e.g. efficientat:mn04_as, timm:resnet50)")
    backbone, loaded = import_object(AUDIO_FAMILIES[family])(name, pretrained=pretrained, weights=weights)
    return AudioTower(f"{family}:{name}", backbone, LogMelFrontend(frontend), pretrained=loaded, runtime=runtime)
