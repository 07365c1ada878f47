"""Exact search with torch: matmul + top-k over chunks of items (the default backend).

It runs where the embeddings are (a GPU included) and needs no extra dependency. FAISS's flat
kernel was about as fast for one query at a time and slower for batches of queries
(BENCHMARKS.md, "search"), so it is only the reference the tests compare against.

The embeddings may be float16 and memory-mapped (a large index's store): each chunk is converted
to the queries' float32 as it is read, so memory holds one chunk's scores and vectors, and the
pages read through the mapping are released as the scan goes (`residency.PageBudget`). A store
too large to be scanned for NaN when it is loaded is checked here instead, as it is read.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.index.residency import PageBudget

if TYPE_CHECKING:
    from hybrid_retrieval.index.filters import ItemFilter, ItemRecord

_EXACT_CHUNK = 1 << 18  # items scored at once: bounds the (queries, items) score matrix


def check_finite(scores: Tensor, rows: Tensor) -> None:
    """BadInputError naming the first row whose score is NaN or infinite (its embedding is:
    cosines of unit vectors are finite)."""
    bad = ~torch.isfinite(scores)
    if bad.any():
        raise BadInputError(f"the index's embedding of row {int(rows[bad][0])} holds NaN or infinite values")


def exact_search(embeddings: Tensor, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k inner products of each query over all items: (scores, rows), both (n_queries, k)."""
    k = min(k, embeddings.shape[0])
    queries = queries.float().to(embeddings.device)
    best_scores, best_rows = [], []
    pages = PageBudget(embeddings)
    for start in range(0, embeddings.shape[0], _EXACT_CHUNK):
        chunk = embeddings[start:start + _EXACT_CHUNK]
        scores = queries @ chunk.to(queries.dtype).T
        pages.check()
        top = scores.topk(min(k, scores.shape[1]), dim=1)  # NaN counts as the largest: a NaN row shows here
        check_finite(top.values, top.indices + start)
        best_scores.append(top.values)
        best_rows.append(top.indices + start)
    scores, rows = torch.cat(best_scores, dim=1), torch.cat(best_rows, dim=1)
    top = scores.topk(k, dim=1)
    return top.values, rows.gather(1, top.indices)


class ExactBackend:
    """Searches the index's own embedding matrix; nothing to store beside it."""

    name = "torch"
    exact = True
    filters = False

    def __init__(self) -> None:
        self.embeddings: Tensor | None = None

    def build(self, embeddings: Tensor, items: Sequence[ItemRecord] = (), **options) -> None:
        if options:
            raise BadInputError(f"the exact backend takes no options, got {sorted(options)}")
        self.embeddings = embeddings

    def search(self, queries: Tensor, k: int, where: ItemFilter | None = None) -> tuple[Tensor, Tensor]:
        return exact_search(self.embeddings, queries, k)

    def add(self, embeddings: Tensor, start: int, items: Sequence[ItemRecord] = ()) -> None:
        self.embeddings = embeddings

    def remove(self, rows: Sequence[int], embeddings: Tensor) -> None:
        self.embeddings = embeddings

    def retune(self) -> None:
        """Exact search has nothing to tune."""

    def save(self) -> tuple[dict, dict[str, Tensor]]:
        return {"backend": self.name}, {}

    @classmethod
    def load(cls, settings: dict, tensors: dict[str, Tensor], embeddings: Tensor) -> ExactBackend:
        backend = cls()
        backend.build(embeddings)
        return backend
