"""Content-only items: the audio embedding, projected (no metadata)."""
from __future__ import annotations

from torch import Tensor

from fusion.base import ItemEncoder
from fusion.registry import register_fusion
from hybrid_retrieval.outputs import TowerOutput
from hybrid_retrieval.projection import Projection


@register_fusion("none")
class ContentOnly(ItemEncoder):
    def __init__(self, audio_dim: int, text_dim: int, embed_dim: int, projection: str = "linear") -> None:
        super().__init__()
        self.audio_proj = Projection(audio_dim, embed_dim, projection)

    def forward(self, audio: TowerOutput | None, metadata: TowerOutput | None = None,
                present: Tensor | None = None) -> Tensor:
        return self.audio_proj(audio.embedding)
