"""Metadata-only items (the paper's keyword baseline): the query is matched against the item's
metadata text alone, the audio is ignored. Items without metadata get one learned vector,
so they tie with each other below any informative match."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fusion.base import ItemEncoder
from fusion.registry import register_fusion
from hybrid_retrieval.outputs import TowerOutput
from hybrid_retrieval.projection import Projection


@register_fusion("metadata")
class MetadataOnly(ItemEncoder):
    uses_audio = False
    uses_metadata = True
    uses_text_projection = True

    def __init__(self, audio_dim: int, text_dim: int, embed_dim: int, projection: str = "linear",
                 metadata_projection: nn.Module | None = None) -> None:
        super().__init__()
        self.metadata_proj = metadata_projection or Projection(text_dim, embed_dim, projection)
        self.missing = nn.Parameter(torch.randn(embed_dim) * 0.02)

    def forward(self, audio: TowerOutput | None, metadata: TowerOutput | None = None,
                present: Tensor | None = None) -> Tensor:
        m = self.metadata_proj(metadata.embedding)
        if present is None:
            return m
        return torch.where(present[:, None], m, self.missing.expand_as(m))
