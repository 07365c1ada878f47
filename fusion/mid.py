"""Mid-level fusion: a transformer encoder over [item token; audio frames; metadata tokens].

The audio tower's frame tokens and the metadata encoder's word-piece tokens are mapped to a
common width, tagged with a type embedding (and the audio frames with sinusoidal positions, so
any clip length works), and prefixed with a learnable item token. The item token's output,
projected, is the item embedding. Padding (short metadata, shorter clips in a batch) and the
metadata of items that have none are excluded from attention by the key-padding mask, so they
cannot leak into the result. The item embedding still depends on the item alone (no query).
`audio_pool` averages groups of that many audio frames first (fewer tokens: cheaper on a CPU).

Metadata tokens enter through their own input map: the query text projection works on pooled
sentence embeddings, not word pieces, so a shared metadata encoder here means the shared text
tower (which matters when the towers are fine-tuned).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fusion.base import ItemEncoder
from fusion.registry import register_fusion
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.outputs import TowerOutput
from hybrid_retrieval.projection import Projection

ITEM, AUDIO, METADATA = 0, 1, 2


def sinusoidal_positions(length: int, width: int, device: torch.device) -> Tensor:
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10_000.0) / width))
    table = torch.zeros(length, width, device=device)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: width // 2])
    return table


@register_fusion("mid")
class MidFusion(ItemEncoder):
    uses_metadata = True

    def __init__(self, audio_dim: int, text_dim: int, embed_dim: int, projection: str = "linear", width: int = 256, layers: int = 2,
                 heads: int = 4, dropout: float = 0.1, audio_pool: int = 1) -> None:
        super().__init__()
        if width % heads or width % 2:
            raise BadInputError(f"mid fusion width {width} must be even and divisible by heads={heads}")
        self.audio_in = nn.Linear(audio_dim, width)
        self.metadata_in = nn.Linear(text_dim, width)
        self.item_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.type_embedding = nn.Embedding(3, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = Projection(width, embed_dim, projection)
        self.width = width
        self.audio_pool = audio_pool

    def _pooled_audio(self, audio: TowerOutput) -> tuple[Tensor, Tensor]:
        """Average each run of `audio_pool` frames over its real (unpadded) frames."""
        if self.audio_pool == 1:
            return audio.tokens, audio.mask
        batch, frames, dim = audio.tokens.shape
        groups = -(-frames // self.audio_pool)
        pad = groups * self.audio_pool - frames
        weights = nn.functional.pad(audio.mask.to(audio.tokens.dtype), (0, pad)).view(batch, groups, self.audio_pool, 1)
        tokens = nn.functional.pad(audio.tokens, (0, 0, 0, pad)).view(batch, groups, self.audio_pool, dim)
        count = weights.sum(dim=2)
        return (tokens * weights).sum(dim=2) / count.clamp(min=1.0), count[..., 0] > 0

    def forward(self, audio: TowerOutput | None, metadata: TowerOutput | None = None,
                present: Tensor | None = None) -> Tensor:
        tokens, mask = self._pooled_audio(audio)
        batch, frames = tokens.shape[:2]
        device = tokens.device
        parts = [self.item_token.expand(batch, -1, -1) + self.type_embedding.weight[ITEM]]
        keep = [torch.ones(batch, 1, dtype=torch.bool, device=device)]
        parts.append(self.audio_in(tokens) + self.type_embedding.weight[AUDIO]
                     + sinusoidal_positions(frames, self.width, device))
        keep.append(mask)
        if metadata is not None:
            parts.append(self.metadata_in(metadata.tokens) + self.type_embedding.weight[METADATA])
            meta_keep = metadata.mask if present is None else metadata.mask & present[:, None]
            keep.append(meta_keep)
        x = torch.cat(parts, dim=1)
        x = self.encoder(x, src_key_padding_mask=~torch.cat(keep, dim=1))
        return self.out(self.norm(x[:, 0]))
