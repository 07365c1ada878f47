"""The interface every search backend implements, and the recall measure approximate ones report.

A backend answers top-k inner-product queries over the index's item embeddings (L2-normalised,
so scores are cosines). The index (`SearchIndex`) owns the embeddings, the item names and the
model identity; a backend owns only how it searches them:

    build(embeddings, **options)  make the search structure for these vectors (rows 0..n-1)
    search(queries, k)            (scores, rows), both (n_queries, k); rows of -1 pad missing results
    add(embeddings, start)        rows start.. of `embeddings` (the index's whole matrix after the
                                  append) are new
    remove(rows, embeddings)      these rows were deleted; `embeddings` is the matrix without them,
                                  the rows after each removed one having moved up
    save()                        (settings, tensors): JSON-able settings for the index header and
                                  tensors stored in the index file beside the embeddings
    load(settings, tensors, embeddings)   (classmethod) the backend as saved

`settings` always holds `backend` (the registry name); approximate backends add what they were
tuned to and the recall@10 they measured.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor


class IndexBackend(Protocol):
    name: str
    exact: bool  # whether search returns the true top-k

    def build(self, embeddings: Tensor, **options) -> None: ...

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]: ...

    def add(self, embeddings: Tensor, start: int) -> None: ...

    def remove(self, rows: Sequence[int], embeddings: Tensor) -> None: ...

    def save(self) -> tuple[dict, dict[str, Tensor]]: ...

    @classmethod
    def load(cls, settings: dict, tensors: dict[str, Tensor], embeddings: Tensor) -> IndexBackend: ...


def recall_at_k(found: Tensor, truth: Tensor) -> float:
    """Mean share of each row of `truth` (exact top-k rows) that `found` also returned."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.numel()
