"""Late fusion: the item embedding is a weighted sum of its audio and metadata embeddings.

    item = (1 - w) * audio_proj(audio) + w * metadata_proj(metadata)      (then L2-normalised)

With `normalize="before"` (default) both parts are L2-normalised before the sum, so w is the
share of the metadata in the item's direction whatever the two projections' scales, and the
query-item cosine becomes a blend of the query-audio and query-metadata cosines, i.e. fusion at
the score level, the paper's late fusion. With `normalize="after"` only the sum is normalised
and the projections' norms weigh the parts too. w is learned (a sigmoid of a parameter started
at `weight`) or fixed. Items without metadata fall back to their audio embedding alone.

`metadata_projection` is the query text projection when the metadata encoder is shared with the
queries (the default): metadata text then lands in the query space itself. With a separate
metadata encoder, the fusion gets its own projection.
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


@register_fusion("late")
class LateFusion(ItemEncoder):
    uses_metadata = True
    uses_text_projection = True

    def __init__(self, audio_dim: int, text_dim: int, embed_dim: int, projection: str = "linear",
                 metadata_projection: nn.Module | None = None, weight: float = 0.5,
                 learn_weight: bool = True, normalize: str = "before") -> None:
        super().__init__()
        if normalize not in ("before", "after"):
            raise BadInputError(f"late fusion normalize must be 'before' or 'after', not {normalize!r}")
        if not 0.0 < weight < 1.0:
            raise BadInputError(f"late fusion weight must lie strictly between 0 and 1, not {weight}")
        self.audio_proj = Projection(audio_dim, embed_dim, projection)
        self.metadata_proj = metadata_projection or Projection(text_dim, embed_dim, projection)
        logit = torch.tensor(math.log(weight / (1 - weight)))
        if learn_weight:
            self.weight_logit = nn.Parameter(logit)
        else:
            self.register_buffer("weight_logit", logit)
        self.normalize = normalize

    @property
    def weight(self) -> Tensor:
        return torch.sigmoid(self.weight_logit)

    def forward(self, audio: TowerOutput | None, metadata: TowerOutput | None = None,
                present: Tensor | None = None) -> Tensor:
        a = self.audio_proj(audio.embedding)
        if self.normalize == "before":
            a = nn.functional.normalize(a, dim=-1)
        if metadata is None:
            return a
        m = self.metadata_proj(metadata.embedding)
        if self.normalize == "before":
            m = nn.functional.normalize(m, dim=-1)
        fused = (1 - self.weight) * a + self.weight * m
        if present is None:
            return fused
        return torch.where(present[:, None], fused, a)
