"""Conditional similarity network (Veit et al., CVPR 2017; Lee et al., ICASSP 2020).

One embedding of `embed_dim` dimensions, split by masks into one subspace per condition:
condition c's similarity is the cosine of the masked embeddings `e * m_c`.

masks="fixed"   disjoint 0/1 blocks of embed_dim / n_conditions dimensions (the paper's setting)
masks="learned" non-negative masks relu(w_c), w initialised as Veit et al. do (normal 0.9, 0.7)
masks="none"    every condition uses the whole space (the single unmasked baseline)
heads="separate" gives each condition its own head producing its own block: the specialised
models, one per condition, in one module. With fixed masks a condition's loss only reaches its
own head, so training them together is training them apart (each on the same batches).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid_retrieval.config_base import StrictConfig
from hybrid_retrieval.disentangled.conditions import DEFAULT_CONDITIONS
from hybrid_retrieval.disentangled.features import tile_starts
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.modes import eval_mode

MASK_KINDS = ("fixed", "learned", "none")
HEAD_KINDS = ("shared", "separate")
ALL = "all"  # pseudo-condition: the mean of every condition's similarity


@dataclass
class CSNConfig(StrictConfig):
    conditions: list[str] = field(default_factory=lambda: list(DEFAULT_CONDITIONS))
    embed_dim: int = 256
    masks: str = "fixed"  # fixed | learned | none
    heads: str = "shared"  # shared | separate (one specialised model per condition)
    encoder: str = "tokens"  # tokens (frozen audio tower's frame tokens) | melcnn (CNN on log-mels)
    audio_encoder: str = "efficientat:mn04_as"  # the tower of encoder=tokens
    hidden: int = 256  # channels of the head
    segment_seconds: float = 3.0

    def __post_init__(self) -> None:
        self.conditions = list(self.conditions)
        if not self.conditions or len(set(self.conditions)) != len(self.conditions) or ALL in self.conditions:
            raise BadInputError(f"conditions must be distinct names other than {ALL!r}, got {self.conditions}")
        if self.masks not in MASK_KINDS or self.heads not in HEAD_KINDS:
            raise BadInputError(f"masks must be one of {MASK_KINDS} and heads one of {HEAD_KINDS}, "
                             f"got {self.masks!r}, {self.heads!r}")
        if self.heads == "separate" and self.masks != "fixed":
            raise BadInputError("heads=separate (one model per condition) needs masks=fixed")
        if self.masks != "none" and self.embed_dim % len(self.conditions):
            raise BadInputError(f"embed_dim {self.embed_dim} does not split into {len(self.conditions)} equal subspaces")



def fixed_masks(n_conditions: int, embed_dim: int) -> Tensor:
    """(n_conditions, embed_dim) disjoint 0/1 masks of equal blocks that cover every dimension."""
    size = embed_dim // n_conditions
    masks = torch.zeros(n_conditions, embed_dim)
    for c in range(n_conditions):
        masks[c, c * size:(c + 1) * size] = 1.0
    return masks


class TokenHead(nn.Module):
    """(batch, frames, dim) tower tokens -> (batch, out_dim): two temporal convolutions (so the
    head sees how tokens change over the segment, which carries rhythm), mean and max pooling."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.convs = nn.Sequential(nn.Conv1d(in_dim, hidden, 3, padding=1), nn.GELU(),
                                   nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU())
        self.out = nn.Linear(2 * hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.convs(self.norm(x).transpose(1, 2))
        return self.out(torch.cat([h.mean(-1), h.amax(-1)], dim=-1))


class MelCNN(nn.Module):
    """(batch, frames, n_mels) log-mels -> (batch, out_dim): four conv blocks (3x3 conv, batch norm,
    ReLU, 2x2 max-pool), frequency averaged, time mean and max pooled."""

    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        channels = [1, hidden // 8, hidden // 4, hidden // 2, hidden]
        blocks = []
        for c_in, c_out in zip(channels, channels[1:]):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Linear(2 * hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(x[:, None]).mean(-1)  # (batch, hidden, frames / 16)
        return self.out(torch.cat([h.mean(-1), h.amax(-1)], dim=-1))


class ConditionalSimilarityNet(nn.Module):
    """Segments (batch, frames, input_dim) -> embeddings (batch, embed_dim), and masked subspaces."""

    def __init__(self, config: CSNConfig, input_dim: int) -> None:
        super().__init__()
        self.config = config
        n = len(config.conditions)
        out_dims = [config.embed_dim // n] * n if config.heads == "separate" else [config.embed_dim]
        if config.encoder == "tokens":
            self.heads = nn.ModuleList(TokenHead(input_dim, config.hidden, d) for d in out_dims)
        elif config.encoder == "melcnn":
            self.heads = nn.ModuleList(MelCNN(config.hidden, d) for d in out_dims)
        else:
            raise BadInputError(f"unknown encoder {config.encoder!r}; known: tokens, melcnn")
        if config.masks == "learned":
            self.mask_weights = nn.Parameter(torch.normal(0.9, 0.7, (n, config.embed_dim)))
        else:
            fixed = fixed_masks(n, config.embed_dim) if config.masks == "fixed" else torch.ones(n, config.embed_dim)
            self.register_buffer("mask_weights", fixed, persistent=False)

    def masks(self) -> Tensor:
        """(n_conditions, embed_dim) non-negative masks."""
        return F.relu(self.mask_weights) if self.config.masks == "learned" else self.mask_weights

    def forward(self, segments: Tensor) -> Tensor:
        return torch.cat([head(segments) for head in self.heads], dim=-1)

    def condition_index(self, condition: str) -> int:
        if condition not in self.config.conditions:
            raise BadInputError(f"unknown condition {condition!r}; this model knows {self.config.conditions + [ALL]}")
        return self.config.conditions.index(condition)

    def subspace(self, embeddings: Tensor, condition: str) -> Tensor:
        """L2-normalised embeddings of one condition's subspace."""
        return F.normalize(embeddings * self.masks()[self.condition_index(condition)], dim=-1)

    @torch.inference_mode()
    def similarity(self, queries: Tensor, items: Tensor, condition: str = ALL) -> Tensor:
        """(n_queries, n_items) cosine similarities in a condition's subspace; for "all", the mean
        of every condition's cosine (each condition counts equally)."""
        conditions = self.config.conditions if condition == ALL else [condition]
        return torch.stack([self.subspace(queries, c) @ self.subspace(items, c).T for c in conditions]).mean(0)


@torch.inference_mode()
def embed_tracks(model: ConditionalSimilarityNet, sequences: Sequence[Tensor], segment_frames: int,
                 batch_size: int = 512) -> Tensor:
    """(n_tracks, embed_dim): each track is the mean embedding of non-overlapping segments covering it."""
    owners, segments = [], []
    for i, seq in enumerate(sequences):
        for start in tile_starts(len(seq), segment_frames):
            owners.append(i)
            segments.append(seq[start:start + segment_frames])
    parts = []
    with eval_mode(model):
        for start in range(0, len(segments), batch_size):
            chunk = segments[start:start + batch_size]
            lengths = {len(s) for s in chunk}
            if len(lengths) == 1:
                parts.append(model(torch.stack(chunk)))
            else:  # tracks shorter than a segment: one at a time (no padding, which would change them)
                parts.extend(model(s[None]) for s in chunk)
    embeddings = torch.cat(parts)
    owner = torch.tensor(owners)
    sums = torch.zeros(len(sequences), embeddings.shape[1]).index_add_(0, owner, embeddings)
    counts = torch.bincount(owner, minlength=len(sequences)).clamp(min=1)[:, None]
    return sums / counts
