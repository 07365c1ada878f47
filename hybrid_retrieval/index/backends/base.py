"""The interface every search backend implements, the stable ids of the vectors it holds, and the
recall measure approximate ones report.

A backend answers top-k inner-product queries over the index's item embeddings (L2-normalised,
so scores are cosines). The index (`SearchIndex`) owns the embeddings, the item names and the
model identity; a backend owns only how it searches them:

    build(embeddings, items, **options)  make the search structure for these vectors (rows 0..n-1);
                                  items: each row's `ItemRecord` (name, tags, description), for
                                  backends that store them beside the vectors
    search(queries, k, where)     (scores, rows), both (n_queries, k); rows of -1 pad missing
                                  results; `where` (an `ItemFilter`) only for backends with
                                  `filters` (they filter themselves; the index post-filters for
                                  the others)
    add(embeddings, start, items) rows start.. of `embeddings` (the index's whole matrix after the
                                  append) are new; items: their records
    remove(rows, embeddings)      these rows were deleted; `embeddings` is the matrix without them,
                                  the rows after each removed one having moved up
    retune()                      measure the recall again (after adds and removes) and take the
                                  cheapest setting that reaches the target; exact backends: nothing
    save()                        (settings, tensors): JSON-able settings for the index header and
                                  tensors stored in the index file beside the embeddings
    load(settings, tensors, embeddings)   (classmethod) the backend as saved

`settings` always holds `backend` (the registry name); approximate backends add what they were
tuned to and the recall@10 they measured.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from hybrid_retrieval.index.backends.exact import exact_search

if TYPE_CHECKING:
    from hybrid_retrieval.index.filters import ItemFilter, ItemRecord


class IndexBackend(Protocol):
    name: str
    exact: bool  # whether search returns the true top-k
    filters: bool  # whether search applies an ItemFilter itself

    def build(self, embeddings: Tensor, items: Sequence[ItemRecord], **options) -> None: ...

    def search(self, queries: Tensor, k: int, where: ItemFilter | None = None) -> tuple[Tensor, Tensor]: ...

    def add(self, embeddings: Tensor, start: int, items: Sequence[ItemRecord]) -> None: ...

    def remove(self, rows: Sequence[int], embeddings: Tensor) -> None: ...

    def retune(self) -> None: ...

    def save(self) -> tuple[dict, dict[str, Tensor]]: ...

    @classmethod
    def load(cls, settings: dict, tensors: dict[str, Tensor], embeddings: Tensor) -> IndexBackend: ...


class RowIds:
    """Stable ids of the vectors a backend holds (FAISS ids, Milvus primary keys) and the index row
    each stands for: `rows[id]` is the row, -1 once removed. Ids are never reused, so an index can
    remove items (by id) while its rows move up."""

    def __init__(self, rows: Tensor) -> None:
        self.rows = rows.long()
        self.live = int((self.rows >= 0).sum())  # ids not removed: kept, as every search asks

    @classmethod
    def fresh(cls, n: int) -> RowIds:
        return cls(torch.arange(n))

    def add(self, start: int, count: int) -> Tensor:
        """Ids for the new rows start..start+count-1."""
        ids = torch.arange(len(self.rows), len(self.rows) + count)
        self.rows = torch.cat([self.rows, torch.arange(start, start + count)])
        self.live += count
        return ids

    def remove(self, rows: Sequence[int]) -> Tensor:
        """Mark the ids of these rows removed and move the later rows up; the removed ids."""
        removed = torch.zeros(int(self.rows.max()) + 1 if len(self.rows) else 0, dtype=torch.bool)
        removed[torch.as_tensor(list(rows), dtype=torch.long)] = True
        live = self.rows >= 0
        gone = live & removed[self.rows.clamp(min=0)]
        shift = torch.cumsum(removed.long(), 0)  # removed rows at or before each row
        self.rows = torch.where(live & ~gone, self.rows - shift[self.rows.clamp(min=0)], -1)
        self.live -= int(gone.sum())
        return torch.nonzero(gone)[:, 0]

    def to_rows(self, ids: Tensor) -> Tensor:
        """The rows of these ids; -1 for -1 (no result), removed ids and ids this table does not
        know (written by an update that was interrupted before the index file was replaced)."""
        known = (ids >= 0) & (ids < len(self.rows))
        rows = torch.full_like(ids, -1)
        rows[known] = self.rows[ids[known]]
        return rows


def recall_at_k(found: Tensor, truth: Tensor) -> float:
    """Mean share of each row of `truth` (exact top-k rows) that `found` also returned."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.numel()


@dataclass
class RecallProbe:
    """Queries with their exact top-10, to measure an approximate search's recall@10.

    Recall is measured on up to `n_queries` of `queries` (query embeddings: real text queries
    give the honest figure) or, without them, on catalogue items as queries, each one's own
    entry left out of both result lists; items sit closer to each other than text queries sit to
    items, so that figure is optimistic."""

    queries: Tensor
    truth: Tensor  # exact top-k rows per query
    own: Tensor | None  # each query's own row, when catalogue items are the queries
    k: int
    kind: str  # "queries given" | "catalogue items"

    @classmethod
    def make(cls, embeddings: Tensor, queries: Tensor | None = None, n_queries: int = 1000,
             seed: int = 0) -> RecallProbe:
        n = len(embeddings)
        generator = torch.Generator().manual_seed(seed)
        own = None
        if queries is None:  # catalogue items as queries: ask for one more result and drop the item itself
            own = torch.randperm(n, generator=generator)[:n_queries]
            queries, k, kind = embeddings[own], min(10, n - 1), "catalogue items"
        else:
            queries = queries[torch.randperm(len(queries), generator=generator)[:n_queries]]
            k, kind = min(10, n), "queries given"
        probe = cls(queries.float(), torch.empty(0), own, k, kind)
        probe.truth = probe._top(exact_search(embeddings, probe.queries, probe.ask)[1])
        return probe

    @property
    def ask(self) -> int:
        return self.k + (self.own is not None)

    def _top(self, rows: Tensor) -> Tensor:
        if self.own is None:
            return rows[:, :self.k]
        return torch.stack([r[r != o][:self.k] for r, o in zip(rows, self.own)])

    def measure(self, search: Callable[[Tensor, int], Tensor]) -> float:
        """recall@10 of `search(queries, k) -> rows` against the exact top-10."""
        return recall_at_k(self._top(search(self.queries, self.ask)), self.truth)

    def describe(self) -> dict:
        return {"count": len(self.queries), "kind": self.kind}

