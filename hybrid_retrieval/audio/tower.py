"""The audio tower: waveform -> log-mel front end -> backbone -> TowerOutput.

`create_audio_tower("efficientat:mn10_as" | "timm:resnet50" | "timm:ast", ...)` builds one.
Clips of different lengths are embedded by `embed_waveforms`, which runs equal-length clips
together (zero-padding a CNN's input would change the clip's own embedding), and long clips
can be cut into windows whose embeddings are averaged.
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from hybrid_retrieval.audio.frontend import FrontendConfig, LogMelFrontend
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.fingerprint import module_state_hash
from hybrid_retrieval.lazy import import_object
from hybrid_retrieval.outputs import TowerOutput

# Audio per forward pass on a CPU: 4 clips of 10 s at 32 kHz; larger passes ran slower per clip,
# their activations no longer fitting the caches (BENCHMARKS.md, "Audio embedding throughput").
CPU_FORWARD_SAMPLES = 4 * 10 * 32_000


@functools.cache
def audioset_labels() -> tuple[str, ...]:
    """The 527 AudioSet display names in the order of the EfficientAT logits."""
    text = resources.files("hybrid_retrieval.resources").joinpath("audioset_labels.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return tuple(name for _mid, name in rows[1:])


class AudioTower(nn.Module):
    """Front end and backbone; `spec` names the architecture (e.g. "efficientat:mn04_as")."""

    def __init__(self, spec: str, backbone: nn.Module, frontend: LogMelFrontend | None = None,
                 pretrained: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.pretrained = pretrained  # holds pretrained weights (not a random initialisation)
        self.frontend = frontend or LogMelFrontend()
        self.backbone = backbone
        self.embed_dim: int = backbone.embed_dim

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
        """An eval-mode copy of this tower for embedding: every batch norm that follows a
        convolution folded into it (torch's fuse_conv_bn_eval), and the weights in channels-last
        layout, the fast path of oneDNN (CPU) and cuDNN convolutions, which carries through the
        network. Outputs equal the eval-mode tower's up to float rounding; what each choice gives
        is measured in BENCHMARKS.md. Made afresh per call, so it always has the current weights
        and leaves the tower itself (and its mode) untouched.
        """
        runner = copy.deepcopy(self).eval()
        _fold_batch_norms(runner)
        return runner.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def embed_waveforms(self, waveforms: Sequence[np.ndarray | Tensor], batch_size: int = 32,
                        window_seconds: float | None = None, *, max_forward_samples: int | None = None,
                        runner: nn.Module | None = None) -> list[TowerOutput]:
        """Embed clips of any lengths in eval mode; one single-example TowerOutput per clip.

        Clips are grouped by exact length and run `batch_size` at a time, so a clip's embedding
        does not depend on what else is in the batch. With `window_seconds`, a longer clip is cut
        into windows (the last one aligned to the clip's end): tokens are concatenated, the
        embedding and logits averaged. A forward pass holds at most `max_forward_samples` of audio
        whatever `batch_size` (default: CPU_FORWARD_SAMPLES on a CPU, no cap on a GPU). The
        forward passes run on `runner` (default: `inference_copy()`).
        """
        runner = runner if runner is not None else self.inference_copy()
        device = next(self.parameters()).device
        if max_forward_samples is None and device.type == "cpu":
            max_forward_samples = CPU_FORWARD_SAMPLES
        window = int(window_seconds * self.sample_rate) if window_seconds else None
        pieces: list[tuple[int, Tensor]] = []  # (clip index, waveform piece)
        for i, wave in enumerate(waveforms):
            wave = torch.as_tensor(wave, dtype=torch.float32).flatten()
            if wave.numel() < 2:
                raise BadInputError(f"clip {i} is too short to embed ({wave.numel()} samples)")
            for piece in _windows(wave, window):
                pieces.append((i, piece))
        by_length: dict[int, list[int]] = {}
        for p, (_, piece) in enumerate(pieces):
            by_length.setdefault(piece.numel(), []).append(p)
        piece_out: dict[int, TowerOutput] = {}
        for length, idx in by_length.items():
            per_forward = batch_size
            if max_forward_samples is not None:
                per_forward = max(1, min(batch_size, max_forward_samples // length))
            for start in range(0, len(idx), per_forward):
                chunk = idx[start:start + per_forward]
                batch = torch.stack([pieces[p][1] for p in chunk]).to(device)
                for p, out in zip(chunk, runner(batch).to("cpu").unbatch()):
                    piece_out[p] = out
        per_clip: list[list[TowerOutput]] = [[] for _ in waveforms]
        for p, (i, _) in enumerate(pieces):
            per_clip[i].append(piece_out[p])
        return [_merge_windows(outs) for outs in per_clip]


def _fold_batch_norms(module: nn.Module) -> None:
    """Fold each BatchNorm2d that directly follows a Conv2d in an nn.Sequential (EfficientAT's
    conv-BN-activation blocks) into that convolution, in place; eval mode only. Other layouts
    (e.g. timm's ResNet, whose conv and norm are named attributes) are left as they are."""
    for seq in module.modules():
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                    seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), nn.Identity()


def _windows(wave: Tensor, window: int | None) -> list[Tensor]:
    if window is None or wave.numel() <= window:
        return [wave]
    starts = list(range(0, wave.numel() - window + 1, window))
    if starts[-1] + window < wave.numel():
        starts.append(wave.numel() - window)
    return [wave[s:s + window] for s in starts]


def _merge_windows(outs: list[TowerOutput]) -> TowerOutput:
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


def create_audio_tower(spec: str = "efficientat:mn04_as", pretrained: bool = True,
                       weights: str | None = None, frontend: FrontendConfig | None = None) -> AudioTower:
    """Build an audio tower from a spec `family:name` (a bare `mn10_as` means `efficientat:mn10_as`).

    efficientat:<mn04_as|...|mn40_as_ext>: the EfficientAT MobileNetV3; with `pretrained`, the
        released AudioSet weights are resolved (explicit `weights` path, $HYBRID_RETRIEVAL_WEIGHTS_DIR,
        cache, download) and loaded strictly.
    timm:<resnet50|ast|any timm model>: a timm backbone, pretrained where online.
    """
    family, _, name = spec.partition(":")
    if not name:
        family, name = "efficientat", family
    if family not in AUDIO_FAMILIES:
        raise BadInputError(f"unknown audio encoder family {family!r} in audio_encoder={spec!r}; "
                            f"known: {sorted(AUDIO_FAMILIES)} (e.g. efficientat:mn04_as, timm:resnet50)")
    backbone, loaded = import_object(AUDIO_FAMILIES[family])(name, pretrained=pretrained, weights=weights)
    return AudioTower(f"{family}:{name}", backbone, LogMelFrontend(frontend), pretrained=loaded)
