"""Exact search with torch: matmul + top-k over chunks of items (the default backend).

It runs where the embeddings are (a GPU included) and needs no extra dependency. FAISS's flat
kernel was about as fast for one query at a time and slower for batches of queries
(BENCHMARKS.md, "search"), so it is only the reference the tests compare against.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hybrid_retrieval.errors import BadInputError

_EXACT_CHUNK = 1 << 18  # items scored at once: bounds the (queries, items) score matrix


def exact_search(embeddings: Tensor, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k inner products of each query over all items: (scores, rows), both (n_queries, k)."""
    k = min(k, embeddings.shape[0])
    queries = queries.to(embeddings.dtype)
    best_scores, best_rows = [], []
    for start in range(0, embeddings.shape[0], _EXACT_CHUNK):
        scores = queries @ embeddings[start:start + _EXACT_CHUNK].T
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        best_scores.append(top.values)
        best_rows.append(top.indices + start)
    scores, rows = torch.cat(best_scores, dim=1), torch.cat(best_rows, dim=1)
    top = scores.topk(k, dim=1)
    return top.values, rows.gather(1, top.indices)


class ExactBackend:
    """Searches the index's own embedding matrix; nothing to store beside it."""

    name = "torch"
    exact = True

    def __init__(self) -> None:
        self.embeddings: Tensor | None = None

    def build(self, embeddings: Tensor, **options) -> None:
        if options:
            raise BadInputError(f"the exact backend takes no options, got {sorted(options)}")
        self.embeddings = embeddings

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return exact_search(self.embeddings, queries.float(), k)

    def add(self, embeddings: Tensor, start: int) -> None:
        self.embeddings = embeddings

    def remove(self, rows: Sequence[int], embeddings: Tensor) -> None:
        self.embeddings = embeddings

    def save(self) -> tuple[dict, dict[str, Tensor]]:
        return {"backend": self.name}, {}

    @classmethod
    def load(cls, settings: dict, tensors: dict[str, Tensor], embeddings: Tensor) -> ExactBackend:
        backend = cls()
        backend.build(embeddings)
        return backend
