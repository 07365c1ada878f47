"""The text half of a retrieval model: what a text query needs, and what identifies it.

A query embedding is `normalize(text_proj(text_tower(text).embedding))`: it depends on the text
tower, the query projection and the config keys that shape them, nothing else. `QueryModel`
holds just those (built from a checkpoint without the audio tower by
`training.checkpoint.load_query_model`, or sharing a RetrievalModel's modules), and
`query_identity` names them: an index records it, so a text search checks only these parts.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hybrid_retrieval.fingerprint import module_state_hash
from hybrid_retrieval.model import ModelConfig, RetrievalModel
from hybrid_retrieval.modes import eval_mode
from hybrid_retrieval.projection import Projection
from hybrid_retrieval.text.tower import TextTower

# The model config keys that shape a query embedding.
QUERY_CONFIG_KEYS = ("text_encoder", "text_max_length", "text_pooling", "embed_dim", "projection")


def query_identity(text_state: str, projection_state: str, config: ModelConfig) -> dict:
    """What must match between the model that embedded an index and one that embeds its text
    queries: the text tower's weights hash, the query projection's, and the query config keys."""
    settings = config.to_dict()
    return {"text_state": text_state, "projection": projection_state,
            "config": {key: settings[key] for key in QUERY_CONFIG_KEYS}}


class QueryModel(nn.Module):
    """Text tower + query projection; `encode(texts)` gives normalised query embeddings equal to
    `RetrievalModel.embed_queries` of the same parts. `forward(input_ids, attention_mask)` runs
    on tokenised text (the graph `index.query_encoder` exports)."""

    def __init__(self, config: ModelConfig, text_tower: TextTower, text_proj: Projection) -> None:
        super().__init__()
        self.config, self.text_tower, self.text_proj = config, text_tower, text_proj

    @classmethod
    def of(cls, model: RetrievalModel) -> QueryModel:
        """The query half of `model` (its modules, shared, not copied)."""
        return cls(model.config, model.text_tower, model.text_proj)

    @property
    def device(self) -> torch.device:
        return next(self.text_tower.parameters()).device

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        text = self.text_tower.encode_tokens(input_ids, attention_mask)
        return nn.functional.normalize(self.text_proj(text.embedding), dim=-1)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> Tensor:
        """(n, embed_dim) normalised query embeddings, on the CPU."""
        batch = self.text_tower.tokenize(texts)
        with eval_mode(self):
            return self(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)).cpu()

    @property
    def max_length(self) -> int:
        """Word pieces the text tower reads of a query (special tokens included)."""
        return self.text_tower.max_length

    def truncation(self, text: str) -> tuple[int, str] | None:
        """See TextTower.truncation."""
        return self.text_tower.truncation(text)

    def identity(self, text_state: str | None = None) -> dict:
        """query_identity of this model (`text_state`: the text tower's hash if known already)."""
        return query_identity(text_state or self.text_tower.fingerprint()["text_state"],
                              module_state_hash(self.text_proj), self.config)
