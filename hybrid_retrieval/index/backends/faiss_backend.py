"""Approximate search with FAISS: an inverted file (IVF), a compressed inverted file with exact
re-ranking (IVF-PQ), or an HNSW graph, tuned at build time.

faiss is an optional dependency (`pip install -e ".[faiss]"`); this module is imported only when
an index uses it. The backend maps FAISS ids to index rows (`RowIds`), so items can be removed
from an IVF index (FAISS removes by id) while the rows of the index move up; an HNSW graph
cannot remove, so it is rebuilt without them.

"ivfpq" keeps only product-quantised codes in memory (d/16 bytes a vector), finds `rerank` x k
candidates with them and re-ranks those exactly against the index's own embeddings, which may be
a float16 memory-mapped store on disk: a catalogue far larger than memory is searched with the
memory of its codes (the candidates' rows read from the file, `residency.FileRows`).
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from hybrid_retrieval.deps import optional_import
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.index.backends.base import RecallProbe, RowIds
from hybrid_retrieval.index.backends.exact import check_finite
from hybrid_retrieval.index.residency import FileRows, PageBudget

faiss = optional_import("faiss", "faiss", "approximate search (a FAISS index)")

log = logging.getLogger("hybrid_retrieval")

APPROXIMATE_KINDS = ("ivf", "ivfpq", "hnsw")
IVFPQ_MIN_ITEMS = 1000
# What the build records (and `index info` prints) of an approximate index.
SETTINGS = {"kind", "factory", "parameter", "value", "recall@10", "target_recall", "recall_queries"}
_ADD_CHUNK = 1 << 16  # vectors added to a FAISS index per progress-bar step
_GATHER_CHUNK = 1 << 11  # scattered rows (the training sample) read between two checks of the page budget
# k-means training vectors per cell: IVF what FAISS samples down to itself; IVF-PQ fewer, so that
# the cells of a 10M-item catalogue train in minutes (FAISS's minimum is 39)
_TRAIN_PER_CELL = {"ivf": 256, "ivfpq": 64}
_RERANK = (2, 5, 10, 20, 50, 100)  # ivfpq: candidates re-ranked, as multiples of k, tried in this order


def _numpy(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.float().numpy())


def _factory(kind: str, n: int, dim: int) -> str:
    """The FAISS factory string of an index of this kind over n vectors of dim dimensions."""
    cells = max(1, min(round(math.sqrt(n)), n // 39))  # at least 39 training vectors a cell, FAISS's minimum
    if kind == "ivf":
        return f"IVF{cells},Flat"
    if kind == "ivfpq":
        if n < IVFPQ_MIN_ITEMS:
            raise BadInputError(f"an IVF-PQ index needs at least {IVFPQ_MIN_ITEMS} items, not {n}; "
                                "search smaller catalogues exactly, or with ivf or hnsw")
        # sub-quantizers of 8 dimensions and 4 bits (16 centroids): FAISS's fast-scan kernels, which
        # score codes with SIMD table lookups; a coarse HNSW graph assigns vectors to many cells quickly
        subs = next(m for m in range(max(1, dim // 8), dim + 1) if dim % m == 0)
        coarse = f"IVF{cells}_HNSW32" if cells >= 1024 else f"IVF{cells}"
        return f"{coarse},PQ{subs}x4fs"
    if kind == "hnsw":
        return "HNSW32"
    raise BadInputError(f"approximate index must be one of {APPROXIMATE_KINDS}, not {kind!r}")


def _tuning(kind: str, index: faiss.Index) -> tuple[str, list]:
    """(the search parameter tuned, its values from cheapest to most thorough)."""
    if kind == "hnsw":
        return "efSearch", [16, 32, 64, 128, 256, 512]
    cells = faiss.extract_index_ivf(index).nlist
    nprobes = sorted({min(cells, 2 ** i) for i in range(int(math.log2(cells)) + 2)})
    return "nprobe", [[p, r] for p in nprobes for r in _RERANK] if kind == "ivfpq" else nprobes


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread meanwhile: re-ranking one query's candidates is a small product, for
    which a thread pool's hand-offs cost more than they give on a busy machine (on a 2-core
    machine with other load, several times the whole product)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class FaissBackend:
    """A tuned FAISS index; `ids` maps FAISS ids to index rows."""

    name = "faiss"
    exact = False
    filters = False

    def __init__(self) -> None:
        self.index: faiss.Index | None = None
        self.settings: dict = {}
        self.ids = RowIds.fresh(0)
        self.embeddings = None
        self.queries: Tensor | None = None  # the recall queries given at build time, kept to re-measure

    @property
    def embeddings(self) -> Tensor | None:
        """The index's matrix (re-ranking, recall), often a mapped store: re-ranking reads its rows
        from the file (`residency.FileRows`), scans release its pages past a budget
        (`residency.PageBudget`)."""
        return self._embeddings

    @embeddings.setter
    def embeddings(self, value: Tensor | None) -> None:
        self._embeddings = value
        self._pages = None if value is None else PageBudget(value)
        self._file_rows: FileRows | None | bool = False  # not looked for yet (`_candidate_rows`)

    def _candidate_rows(self, rows: Tensor) -> Tensor:
        """Re-ranking's rows of the embeddings: read from the index file with positioned reads
        when the embeddings are mapped from one (`residency.FileRows`), else through the tensor."""
        if self._file_rows is False:
            self._file_rows = FileRows.open(self.embeddings)
        if self._file_rows is not None:
            return self._file_rows.read(rows.tolist())
        found = self.embeddings[rows]
        self._pages.check()
        return found

    @property
    def kind(self) -> str:
        return self.settings["kind"]

    def build(self, embeddings: Tensor, items: Sequence = (), *, kind: str = "ivf", target_recall: float = 0.95,
              queries: Tensor | None = None, seed: int = 0, progress: bool = True) -> None:
        """An approximate index over `embeddings`, tuned to the cheapest search setting whose
        recall@10 against exact search reaches `target_recall` (or the most thorough one tried;
        measured as `RecallProbe` says, on up to 1000 `queries`, else on catalogue items).

        kind "ivf": an inverted file of round(sqrt(n)) k-means cells, tuned by nprobe; "ivfpq":
        the same cells holding product-quantised residuals (16 dimensions a byte; at least
        IVFPQ_MIN_ITEMS items), tuned by nprobe and the re-ranking depth; "hnsw": a 32-link HNSW
        graph, tuned by efSearch. The quantizers train on a random sample (`_TRAIN_PER_CELL`
        vectors a cell) and the vectors are added in chunks, so the embeddings may be a
        memory-mapped store larger than memory.
        """
        n, dim = embeddings.shape
        if n < 2:
            raise BadInputError("an approximate index needs at least 2 items")
        factory = _factory(kind, n, dim)
        self.embeddings, self.queries = embeddings, queries
        self.index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        self.settings = {"backend": self.name, "kind": kind, "factory": factory,
                         "parameter": _tuning(kind, self.index)[0], "target_recall": target_recall, "seed": seed}
        if not self.index.is_trained:
            cells = faiss.extract_index_ivf(self.index).nlist
            sample = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:_TRAIN_PER_CELL[kind] * cells]
            log.info("training %s on %d vectors", factory, len(sample))  # one FAISS call: no progress to show
            self.index.train(np.concatenate(list(self._rows(sample.sort().values))))
        self.ids = RowIds.fresh(0)
        self._add_rows(0, progress)
        self.retune(progress)

    def _rows(self, rows: Tensor) -> Iterator[np.ndarray]:
        """The embeddings of `rows` (sorted) as float32 arrays, gathered a few thousand at a time,
        the store's pages released between gathers (each row's read may map its whole folio)."""
        for first in range(0, len(rows), _GATHER_CHUNK):
            yield _numpy(self.embeddings[rows[first:first + _GATHER_CHUNK]])
            self._pages.check()

    def _add_rows(self, start: int, progress: bool = False) -> None:
        n = len(self.embeddings)
        ids = self.ids.add(start, n - start)
        steps = range(start, n, _ADD_CHUNK)
        for first in tqdm(steps, desc=f"adding to {self.settings['factory']}", unit="chunk",
                          disable=not progress or len(steps) < 2):
            chunk = _numpy(self.embeddings[first:first + _ADD_CHUNK])
            self._pages.check()
            if self.kind == "hnsw":
                self.index.add(chunk)  # HNSW numbers vectors in add order, which are these ids (it never removes)
            else:
                self.index.add_with_ids(chunk, ids[first - start:first - start + len(chunk)].numpy())

    def use_setting(self, value: int | list) -> None:
        """Search with this tuning value from now on."""
        self.settings["value"] = value
        faiss.ParameterSpace().set_index_parameter(self.index, self.settings["parameter"],
                                                   value[0] if self.kind == "ivfpq" else value)

    def retune(self, progress: bool = False) -> None:
        """Measure recall@10 over the tuning values, cheapest first, and keep the first that
        reaches the target (or the last): at build time and after adds and removes."""
        probe = RecallProbe.make(self.embeddings, self.queries, seed=self.settings["seed"])
        recall = 0.0
        for value in tqdm(_tuning(self.kind, self.index)[1], desc=f"tuning {self.settings['parameter']}",
                          disable=not progress):
            self.use_setting(value)
            recall = probe.measure(lambda q, k: self.search(q, k)[1])
            if recall >= self.settings["target_recall"]:
                break
        self.settings.update({"recall@10": round(recall, 4), "recall_queries": probe.describe()})

    def search(self, queries: Tensor, k: int, where: object = None) -> tuple[Tensor, Tensor]:
        live = self.ids.live
        k = min(k, live)
        if k == 0:
            return torch.empty(len(queries), 0), torch.empty(len(queries), 0, dtype=torch.long)
        depth = min(live, k * self.settings["value"][1]) if self.kind == "ivfpq" else k
        scores, ids = self.index.search(_numpy(queries), depth)
        rows = self.ids.to_rows(torch.from_numpy(ids))
        if self.kind == "ivfpq":
            return self._rerank(queries.float(), rows, k)
        return torch.from_numpy(scores), rows

    def _rerank(self, queries: Tensor, candidates: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The top-k of each query's candidate rows by exact inner product with the stored
        embeddings, read in row order (sequential on disk), one query at a time."""
        queries = queries.float()
        scores = torch.full((len(queries), k), -math.inf)
        rows = torch.full((len(queries), k), -1, dtype=torch.long)
        with _one_thread():
            for i, line in enumerate(candidates):
                wanted = torch.unique(line[line >= 0])  # sorted
                found = self._candidate_rows(wanted).float() @ queries[i]
                check_finite(found, wanted)
                top = found.topk(min(k, len(found)))
                scores[i, :len(top.values)], rows[i, :len(top.values)] = top.values, wanted[top.indices]
        return scores, rows

    def add(self, embeddings: Tensor, start: int, items: Sequence = ()) -> None:
        """Add the new rows to the trained index (its cells and codebooks stay as trained)."""
        self.embeddings = embeddings
        self._add_rows(start)

    def remove(self, rows: Sequence[int], embeddings: Tensor) -> None:
        """Remove the rows' vectors by id (IVF, IVF-PQ); an HNSW graph is rebuilt without them."""
        self.embeddings = embeddings
        if self.kind == "hnsw":
            self.index.reset()
            self.ids = RowIds.fresh(0)
            self._add_rows(0)
            return
        self.index.remove_ids(self.ids.remove(rows).numpy())

    def save(self) -> tuple[dict, dict[str, Tensor]]:
        tensors = {"faiss": torch.from_numpy(faiss.serialize_index(self.index)), "faiss_rows": self.ids.rows}
        if self.queries is not None:
            tensors["faiss_queries"] = self.queries.float()
        return self.settings, tensors

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
        backend.settings, backend.ids = settings, RowIds(tensors["faiss_rows"])
        backend.embeddings, backend.queries = embeddings, tensors.get("faiss_queries")
        live = backend.ids.live
        if backend.index.d != embeddings.shape[1] or backend.index.ntotal != live:
            raise BadInputError(f"its FAISS index holds {backend.index.ntotal} vectors of {backend.index.d} dimensions, "
                                f"but the index has {live} items of {embeddings.shape[1]} dimensions")
        settings.setdefault("seed", 0)  # indexes saved before re-tuning existed lack it
        backend.use_setting(settings["value"])
        return backend
