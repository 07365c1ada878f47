"""`SearchIndex`: a catalogue embedded once by a checkpoint, searched many times.

It holds the L2-normalised item embeddings (scores are cosines), each item's id, audio path and
the metadata text it was embedded with, the model's identity (its towers' fingerprint, a hash of
all its weights and its config) and a search backend (exact torch by default; see
`index.backends`). Queries must be embedded by the model that embedded the items:
`check_model` refuses any other, naming what differs. Each item's tags and description are kept
for filtered searches (`index.filters`).

The embeddings of a loaded index are memory-mapped from its file (float32, or float16 for an
IVF-PQ index, whose codes do the searching); `add` and `remove` make a new matrix in memory.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from hybrid_retrieval.data.items import CatalogueItem
from hybrid_retrieval.embedding import embed_catalogue, embed_queries
from hybrid_retrieval.errors import BadInputError, IncompatibleModelError
from hybrid_retrieval.fingerprint import module_state_hash
from hybrid_retrieval.index.backends import DEFAULT_BACKEND, create_backend
from hybrid_retrieval.index.backends.base import IndexBackend
from hybrid_retrieval.index.backends.exact import exact_search
from hybrid_retrieval.index.filters import ItemFilter, ItemRecords, item_tags
from hybrid_retrieval.model import RetrievalModel

log = logging.getLogger("hybrid_retrieval")


def model_identity(model: RetrievalModel) -> dict:
    """What must match between the model that embedded an index's items and the one that
    embeds its queries: the towers' fingerprint, a hash of every weight (towers and heads)
    and the architecture config."""
    return {"fingerprint": model.fingerprint(), "weights": module_state_hash(model),
            "config": model.config.to_dict()}


def _exact(embeddings: Tensor) -> IndexBackend:
    backend = create_backend(DEFAULT_BACKEND)
    backend.build(embeddings)
    return backend


@dataclass
class SearchIndex:
    """Embedded catalogue items and how they were made; `search` ranks them for query embeddings."""

    embeddings: Tensor  # (n, d) float32, L2-normalised
    ids: list[str]  # item ids: path relative to the indexed folder, or the dataset's file name
    paths: list[str]  # audio files as indexed (absolute)
    metadata: list[str]  # the metadata text each item was embedded with ("" when none)
    info: dict  # the header: model identity, checkpoint, source, embedding and search settings
    backend: IndexBackend = field(default=None)  # type: ignore[assignment]  # None: exact search
    tags: list[list[str]] = field(default=None)  # type: ignore[assignment]  # lower-case; None: none
    descriptions: list[str] = field(default=None)  # type: ignore[assignment]  # None: none

    def __post_init__(self) -> None:
        if self.backend is None:
            self.backend = _exact(self.embeddings)
        if self.tags is None:
            self.tags = [[] for _ in self.ids]
        if self.descriptions is None:
            self.descriptions = [""] * len(self.ids)
        self.info["search"] = self.backend.save()[0]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def checkpoint(self) -> str:
        """The checkpoint directory the index was built with (where `search` finds its model)."""
        return self.info["checkpoint"]["path"]

    def check_model(self, model: RetrievalModel) -> None:
        """Raise IncompatibleModelError unless `model` is the one this index's items were embedded by."""
        expected, actual = self.info["model"], model_identity(model)
        if actual == expected:
            return
        parts = [name for name, differs in (
            ("audio tower", actual["fingerprint"].get("audio_state") != expected["fingerprint"].get("audio_state")),
            ("text tower", actual["fingerprint"].get("text_state") != expected["fingerprint"].get("text_state")),
            ("architecture", actual["config"] != expected["config"]),
        ) if differs] or ["projection/fusion weights"]
        raise IncompatibleModelError(
            f"this index was built with checkpoint {self.checkpoint} (weights sha256 {expected['weights'][:12]}), "
            f"but the model given differs in its {', '.join(parts)} (weights sha256 {actual['weights'][:12]}); "
            f"search with the index's own checkpoint, or rebuild the index with this one")

    def use_backend(self, name: str, **options) -> None:
        """Search with the backend `name` from now on, built over this index's embeddings."""
        backend = create_backend(name)
        backend.build(self.embeddings, self.records(), **options)
        self.backend = backend
        self.info["search"] = backend.save()[0]

    def records(self, start: int = 0) -> ItemRecords:
        """The items' names, tags and descriptions from row `start` on (what filters read)."""
        return ItemRecords(self.ids, self.tags, self.descriptions, start)

    def search(self, queries: Tensor, k: int = 10, exact: bool = False,
               filter: ItemFilter | str | None = None) -> tuple[Tensor, Tensor]:  # noqa: A002  # the API's word
        """Top-k (scores, rows) per query embedding, (n_queries, k) each: the backend's answer, or
        exact search when `exact` (rows of -1 pad missing results). filter: only items matching
        it (an `ItemFilter` or its text, e.g. "tag=rain"; see `index.filters`)."""
        if k < 1:
            raise BadInputError(f"k (results per query) must be at least 1, not {k}")
        where = ItemFilter.parse(filter) if isinstance(filter, str) else filter
        if exact and not self.backend.exact:
            native = False
            search = lambda q, n: exact_search(self.embeddings, q, n)  # noqa: E731
        else:
            native = where is not None and self.backend.filters
            search = lambda q, n: self.backend.search(q, n, where if native else None)  # noqa: E731
        if where is None:
            return search(queries, k)
        return self._filtered(search, queries, k, where, native)

    def _filtered(self, search, queries: Tensor, k: int, where: ItemFilter, native: bool) -> tuple[Tensor, Tensor]:
        """Post-filtering: ask for 4k candidates (k where the backend filters itself), double that
        until each query has k that match or the backend has no more to give, keep the best k."""
        ask = min(len(self), k if native else 4 * k)
        records = self.records()
        while True:
            scores, rows = search(queries, ask)
            keep = torch.tensor([[row >= 0 and where.matches(records[row]) for row in line] for line in rows.tolist()],
                                dtype=torch.bool).reshape(rows.shape)
            # a backend pads with -1 (or returns fewer columns) only where it has nothing more to give
            more = (keep.sum(dim=1) < k) & (rows[:, -1] >= 0)
            if rows.shape[1] < ask or not more.any() or ask >= len(self):
                break
            ask = min(len(self), 2 * ask)
        out_scores = torch.full((len(queries), k), -math.inf)
        out_rows = torch.full((len(queries), k), -1, dtype=torch.long)
        for i, line in enumerate(keep):
            chosen = line.nonzero().flatten()[:k]
            out_scores[i, :len(chosen)], out_rows[i, :len(chosen)] = scores[i, chosen], rows[i, chosen]
        return out_scores, out_rows

    def retune(self) -> dict:
        """Re-measure an approximate backend's recall (after adds and removes) and re-tune it to
        its target; the search settings (unchanged for exact search)."""
        self.backend.retune()
        self.info["search"] = self.backend.save()[0]
        return self.info["search"]

    def check_new(self, ids: Sequence[str]) -> None:
        """BadInputError unless `ids` are new to the index and each given once."""
        clash = sorted(set(ids) & set(self.ids))
        if clash:
            raise BadInputError(f"the index already holds {len(clash)} of these items: {clash[:5]}")
        twice = sorted(item for item, count in Counter(ids).items() if count > 1)
        if twice:
            raise BadInputError(f"items named twice among those added: {twice[:5]}")

    def add(self, embeddings: Tensor, ids: Sequence[str], paths: Sequence[str], metadata: Sequence[str],
            tags: Sequence[Sequence[str]] | None = None, descriptions: Sequence[str] | None = None) -> None:
        """Append items (embedded by this index's model); the backend is updated, not rebuilt
        (except an HNSW graph; the recall is not re-measured: `retune`)."""
        self.check_new(ids)
        start = len(self)
        self.embeddings = torch.cat([self.embeddings, embeddings.to(self.embeddings.dtype)])
        self.ids, self.paths, self.metadata = [*self.ids, *ids], [*self.paths, *paths], [*self.metadata, *metadata]
        self.tags = [*self.tags, *(list(t) for t in (tags or [[] for _ in ids]))]
        self.descriptions = [*self.descriptions, *(descriptions or [""] * len(ids))]
        self.backend.add(self.embeddings, start, self.records(start))
        self.info["size"] = len(self)

    def remove(self, ids: Sequence[str]) -> None:
        """Remove the items with these ids (each must be in the index)."""
        position = {item: row for row, item in enumerate(self.ids)}
        missing = [item for item in ids if item not in position]
        if missing:
            raise BadInputError(f"not in the index: {missing[:5]}")
        rows = sorted({position[item] for item in ids})
        if len(rows) == len(self):
            raise BadInputError(f"removing all {len(self)} items would leave an empty index; delete its file instead")
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[rows] = False
        self.embeddings = self.embeddings[keep]
        kept = keep.tolist()
        self.ids, self.paths, self.metadata, self.tags, self.descriptions = (
            [v for v, k in zip(values, kept) if k]
            for values in (self.ids, self.paths, self.metadata, self.tags, self.descriptions))
        self.backend.remove(rows, self.embeddings)
        self.info["size"] = len(self)


def _embed_items(model: RetrievalModel, items: Sequence[CatalogueItem], cache_dir: str | Path | None,
                 window_seconds: float | None, progress: bool) -> tuple[Tensor, dict]:
    """(embeddings, the SearchIndex columns of `items`: paths, metadata text, tags, descriptions),
    items embedded with their metadata of the model's kinds, for hybrid models."""
    kinds = model.config.metadata if model.uses_metadata else ""
    metadata = [item.metadata_text(kinds) if kinds else "" for item in items]
    if kinds and not any(metadata):
        log.warning("the checkpoint fuses %r metadata but no item has any: items are embedded from audio alone",
                    kinds)
    paths = [str(Path(item.audio_path).resolve()) for item in items]
    embeddings = embed_catalogue(model, paths, metadata if kinds else None, cache_dir,
                                 window_seconds=window_seconds, progress=progress)
    return embeddings, {"paths": paths, "metadata": metadata, "tags": [list(item_tags(item.metadata)) for item in items],
                        "descriptions": [str(item.metadata.get("fs") or "") for item in items]}


def add_items(index: SearchIndex, model: RetrievalModel, items: Sequence[CatalogueItem],
              cache_dir: str | Path | None = None, progress: bool = True) -> None:
    """Embed `items` with `model` (refused unless it is the index's own: `check_model`), as the
    index's items were (metadata kinds, windows), and add them (`SearchIndex.add`)."""
    index.check_model(model)
    if not items:
        raise BadInputError("nothing to add: no usable audio files were given")
    index.check_new([item.item_id for item in items])  # before the embedding, not after
    embeddings, columns = _embed_items(model, items, cache_dir, index.info["embedding"].get("window_seconds"),
                                       progress)
    index.add(embeddings, [item.item_id for item in items], **columns)


def build_index(model: RetrievalModel, items: Sequence[CatalogueItem], checkpoint: dict, *,
                source: str = "", approximate: str | None = None, target_recall: float = 0.95,
                recall_queries: Sequence[str] | None = None, cache_dir: str | Path | None = None,
                window_seconds: float | None = None, progress: bool = True) -> SearchIndex:
    """Embed `items` (with their metadata of the model's kinds, for hybrid models) into an index.

    checkpoint: {"path", "epoch", "step"} of the checkpoint `model` was loaded from (recorded so
    `search` can find the model again); approximate: None (exact only), "ivf", "ivfpq" (embeddings
    stored as float16) or "hnsw" (the FAISS backend), tuned on `recall_queries` (text), else on up
    to 1000 of the items' captions (dataset splits have them), else on catalogue items as queries
    (see `backends.base.RecallProbe`).
    """
    if not items:
        raise BadInputError("nothing to index: the catalogue has no items")
    embeddings, columns = _embed_items(model, items, cache_dir, window_seconds, progress)
    kinds = model.config.metadata if model.uses_metadata else ""
    info = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source": source,
            "size": len(items), "dim": embeddings.shape[1], "model": model_identity(model),
            "checkpoint": checkpoint, "embedding": {"metadata_kinds": kinds, "window_seconds": window_seconds}}
    if approximate == "ivfpq":
        embeddings = embeddings.half()  # the re-ranking store: half the file, codes do the searching
    index = SearchIndex(embeddings, [item.item_id for item in items], columns["paths"], columns["metadata"], info,
                        tags=columns["tags"], descriptions=columns["descriptions"])
    if approximate:
        texts = list(recall_queries or [caption for item in items for caption in item.captions])
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))[:1000].tolist()
        queries = embed_queries(model, [texts[i] for i in order], progress=False) if texts else None
        index.use_backend("faiss", kind=approximate, target_recall=target_recall, queries=queries, progress=progress)
    return index
