"""Approximate search with FAISS: an inverted file (IVF) or an HNSW graph, tuned at build time.

faiss is an optional dependency (`pip install -e ".[faiss]"`); this module is imported only when
an index uses it. The backend maps FAISS ids to index rows, so items can be removed from an IVF
index (FAISS removes by id) while the rows of the index move up; HNSW graphs cannot remove.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from hybrid_retrieval.deps import optional_import
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.index.backends.base import recall_at_k
from hybrid_retrieval.index.backends.exact import exact_search

faiss = optional_import("faiss", "faiss", "approximate search (a FAISS index)")

log = logging.getLogger("hybrid_retrieval")

APPROXIMATE_KINDS = ("ivf", "hnsw")
# What build_approximate records (and `index info` prints) of an approximate index.
SETTINGS = {"kind", "factory", "parameter", "value", "recall@10", "target_recall", "recall_queries"}
_ADD_CHUNK = 1 << 16  # vectors added to a FAISS index per progress-bar step


def _search(index: faiss.Index, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
    scores, ids = index.search(np.ascontiguousarray(queries.float().numpy()), k)
    return torch.from_numpy(scores), torch.from_numpy(ids)


def build_approximate(embeddings: Tensor, kind: str = "ivf", target_recall: float = 0.95,
                      queries: Tensor | None = None, n_queries: int = 1000, seed: int = 0,
                      progress: bool = True) -> tuple[faiss.Index, dict]:
    """An approximate FAISS index over `embeddings`, tuned to the cheapest search setting whose
    recall@10 against exact search reaches `target_recall` (or the most thorough one tried).

    kind "ivf": an inverted file of round(sqrt(n)) k-means cells (at least 39 training vectors
    each, FAISS's minimum), tuned by nprobe; "hnsw": a 32-link HNSW graph, tuned by efSearch.
    Recall is measured on up to `n_queries` of `queries` (query embeddings: real text queries
    give the honest figure) or, without them, on catalogue items as queries, each one's own
    entry left out of both result lists; items sit closer to each other than text queries sit to
    items, so that figure is optimistic. Returns the index and its settings (with the recall).
    """
    n, dim = embeddings.shape
    if n < 2:
        raise BadInputError("an approximate index needs at least 2 items")
    if kind == "ivf":
        cells = max(1, min(round(math.sqrt(n)), n // 39))
        factory, parameter = f"IVF{cells},Flat", "nprobe"
        values = sorted({min(cells, 2 ** i) for i in range(int(math.log2(cells)) + 2)})
    elif kind == "hnsw":
        factory, parameter, values = "HNSW32", "efSearch", [16, 32, 64, 128, 256, 512]
    else:
        raise BadInputError(f"approximate index must be one of {APPROXIMATE_KINDS}, not {kind!r}")
    vectors = np.ascontiguousarray(embeddings.float().numpy())
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        log.info("training %s on %d vectors", factory, n)  # one FAISS call (k-means): no progress to show
        index.train(vectors)
    for start in tqdm(range(0, n, _ADD_CHUNK), desc=f"adding to {factory}", unit="chunk", disable=not progress):
        index.add(vectors[start:start + _ADD_CHUNK])

    generator = torch.Generator().manual_seed(seed)
    own = None
    if queries is None:  # catalogue items as queries: ask for one more result and drop the item itself
        own = torch.randperm(n, generator=generator)[:n_queries]
        queries, k, source = embeddings[own], min(10, n - 1), "catalogue items"
    else:
        queries = queries[torch.randperm(len(queries), generator=generator)[:n_queries]]
        k, source = min(10, n), "queries given"
    queries = queries.float()
    ask = k + (own is not None)

    def top(rows: Tensor) -> Tensor:
        if own is None:
            return rows[:, :k]
        return torch.stack([r[r != o][:k] for r, o in zip(rows, own)])

    truth = top(exact_search(embeddings.float(), queries, ask)[1])
    space = faiss.ParameterSpace()
    recall = 0.0
    for value in tqdm(values, desc=f"tuning {parameter}", disable=not progress):
        space.set_index_parameter(index, parameter, value)
        recall = recall_at_k(top(_search(index, queries, ask)[1]), truth)
        if recall >= target_recall:
            break
    settings = {"kind": kind, "factory": factory, "parameter": parameter, "value": value,
                "recall@10": round(recall, 4), "target_recall": target_recall,
                "recall_queries": {"count": len(queries), "kind": source}}
    return index, settings


class FaissBackend:
    """A tuned FAISS index; FAISS ids are stable, `rows[id]` is the id's index row (-1: removed)."""

    name = "faiss"
    exact = False

    def __init__(self) -> None:
        self.index: faiss.Index | None = None
        self.settings: dict = {}
        self.rows = torch.empty(0, dtype=torch.long)

    def build(self, embeddings: Tensor, **options) -> None:
        """options: those of `build_approximate` (kind, target_recall, queries, progress, ...)."""
        self.index, settings = build_approximate(embeddings, **options)
        self.settings = {"backend": self.name, **settings}
        self.rows = torch.arange(len(embeddings))

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        scores, ids = _search(self.index, queries, min(k, int((self.rows >= 0).sum())))
        return scores, torch.where(ids >= 0, self.rows[ids.clamp(min=0)], ids)

    def add(self, embeddings: Tensor, start: int) -> None:
        new = np.ascontiguousarray(embeddings[start:].float().numpy())
        ids = np.arange(len(self.rows), len(self.rows) + len(new), dtype=np.int64)
        if self.settings["kind"] == "hnsw":
            self.index.add(new)  # HNSW numbers vectors in add order, which are these ids (it never removes)
        else:
            self.index.add_with_ids(new, ids)
        self.rows = torch.cat([self.rows, torch.arange(start, start + len(new))])

    def remove(self, rows: Sequence[int], embeddings: Tensor) -> None:
        if self.settings["kind"] == "hnsw":
            raise BadInputError("a FAISS HNSW index cannot remove items; rebuild the index without them")
        removed = torch.zeros(int(self.rows.max()) + 1 if len(self.rows) else 0, dtype=torch.bool)
        removed[torch.as_tensor(list(rows), dtype=torch.long)] = True
        live = self.rows >= 0
        gone = live & removed[self.rows.clamp(min=0)]
        self.index.remove_ids(np.ascontiguousarray(torch.nonzero(gone)[:, 0].numpy().astype(np.int64)))
        shift = torch.cumsum(removed.long(), 0)  # removed rows at or before each row
        self.rows = torch.where(live & ~gone, self.rows - shift[self.rows.clamp(min=0)], -1)

    def save(self) -> tuple[dict, dict[str, Tensor]]:
        return self.settings, {"faiss": torch.from_numpy(faiss.serialize_index(self.index)), "faiss_rows": self.rows}

    @classmethod
    def load(cls, settings: dict, tensors: dict[str, Tensor], embeddings: Tensor) -> FaissBackend:
        """The saved FAISS index; a damaged blob, or one that does not fit the embeddings, is a
        BadInputError."""
        missing = sorted(SETTINGS - set(settings))
        if missing:
            raise BadInputError(f"its FAISS search settings lack {missing}")
        backend = cls()
        try:
            backend.index = faiss.deserialize_index(tensors["faiss"].numpy())
        except RuntimeError as exc:  # faiss reports an unreadable blob as a RuntimeError
            raise BadInputError(f"its FAISS index cannot be read ({str(exc).splitlines()[0]})") from exc
        backend.settings, backend.rows = settings, tensors["faiss_rows"]
        live = int((backend.rows >= 0).sum())
        if backend.index.d != embeddings.shape[1] or backend.index.ntotal != live:
            raise BadInputError(f"its FAISS index holds {backend.index.ntotal} vectors of {backend.index.d} dimensions, "
                                f"but the index has {live} items of {embeddings.shape[1]} dimensions")
        return backend
