"""`SearchIndex`: a catalogue embedded once by a checkpoint, searched many times.

It holds the L2-normalised item embeddings (scores are cosines), each item's id, audio path and
the metadata text it was embedded with, the model's identity (its towers' fingerprint, a hash of
all its weights, its config, and the identity of its query half: text tower, query projection
and their config keys) and a search backend (exact torch by default; see `index.backends`).
Queries must be embedded by the model that embedded the items: `check_model` refuses any other,
naming what differs; a text query needs only the query half to match (`check_query_model`), an
example clip (`search_audio`) the whole model. Each item's tags and description are kept for
filtered searches (`index.filters`).

The embeddings of a loaded index are memory-mapped from its file (float32, or float16 for an
IVF-PQ index, whose codes do the searching); `add` and `remove` make a new matrix in memory.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from hybrid_retrieval.audio.reader import DEFAULT_WORKERS
from hybrid_retrieval.data.items import CatalogueItem
from hybrid_retrieval.errors import BadInputError, IncompatibleModelError
from hybrid_retrieval.fingerprint import module_state_hash, state_hash
from hybrid_retrieval.index.backends import DEFAULT_BACKEND, create_backend
from hybrid_retrieval.index.backends.base import IndexBackend
from hybrid_retrieval.index.backends.exact import exact_search
from hybrid_retrieval.index.filters import ItemFilter, ItemRecords, item_tags

if TYPE_CHECKING:  # the model code is imported when an index is built or searched by example, not to load one
    from hybrid_retrieval.model import RetrievalModel

log = logging.getLogger("hybrid_retrieval")


def model_identity(model: RetrievalModel) -> dict:
    """What must match between the model that embedded an index's items and the one that
    embeds its queries: the towers' fingerprint, a hash of every weight (sha256 over the hashes
    of the model's parts: each tower, the query projection, the item encoder, ...; each part is
    hashed once, the towers' hashes are their fingerprints'), the architecture config, and
    `parts["query"]`, the identity of the query half (`query_model.query_identity`)."""
    from hybrid_retrieval.query_model import query_identity

    fingerprint = model.fingerprint()
    towers = {"audio_tower": fingerprint["audio_state"], "text_tower": fingerprint["text_state"]}
    groups: dict[str, dict[str, Tensor]] = {}
    for name, tensor in model.state_dict().items():
        part, _, rest = name.partition(".")
        if part not in towers:
            groups.setdefault(part, {})[rest or name] = tensor
    parts = {**towers, **{part: state_hash(tensors) for part, tensors in groups.items()}}
    return {"fingerprint": fingerprint, "weights": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(),
            "config": model.config.to_dict(),
            "parts": {"query": query_identity(towers["text_tower"], parts.get("text_proj", state_hash({})),
                                             model.config)}}


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
        expected = self.info["model"]
        if "parts" in expected:
            actual = model_identity(model)
        else:  # an index from before per-part identities: its weights hash is of the whole state dict
            actual = {"fingerprint": model.fingerprint(), "weights": module_state_hash(model),
                      "config": model.config.to_dict()}
        if actual == expected:
            return
        self._refuse([name for name, differs in (
            ("audio tower", actual["fingerprint"].get("audio_state") != expected["fingerprint"].get("audio_state")),
            ("text tower", actual["fingerprint"].get("text_state") != expected["fingerprint"].get("text_state")),
            ("architecture", actual["config"] != expected["config"]),
        ) if differs] or ["projection/fusion weights"], "weights", expected["weights"], actual["weights"])

    @property
    def query_identity(self) -> dict | None:
        """The identity of the query half of the index's model (None: an index built before it was
        recorded, whose text queries need the whole model: `check_model`)."""
        identity = self.info["model"].get("parts", {}).get("query")
        if identity is not None and not isinstance(identity, dict):
            raise BadInputError(f"its header field 'model.parts.query' is a {type(identity).__name__}, not an object")
        return identity

    def check_query_model(self, identity: dict) -> None:
        """Raise IncompatibleModelError unless `identity` (`query_model.query_identity` of a model
        or checkpoint) is that of the index's model: then its text queries are the index's."""
        expected = self.query_identity
        if expected is None:
            raise BadInputError("this index records no query identity (it was built before they were): "
                                "check the whole model with check_model")
        if identity == expected:
            return
        self._refuse([name for name, differs in (
            ("text tower", identity.get("text_state") != expected.get("text_state")),
            ("architecture", identity.get("config") != expected.get("config")),
        ) if differs] or ["query projection weights"], "query identity",
            hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest(),
            hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest())

    def _refuse(self, parts: list[str], what: str, expected: str, actual: str) -> None:
        raise IncompatibleModelError(
            f"this index was built with checkpoint {self.checkpoint} ({what} sha256 {expected[:12]}), "
            f"but the model given differs in its {', '.join(parts)} ({what} sha256 {actual[:12]}); "
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

    def search_audio(self, model: RetrievalModel, clip: str | Path | np.ndarray | Tensor, k: int = 10,
                     exact: bool = False, filter: ItemFilter | str | None = None,  # noqa: A002  # as search's
                     ) -> tuple[Tensor, Tensor]:
        """Rank the items for an example clip: (scores, rows), each (at most k,), best first.

        The clip (a file, or a mono waveform at the tower's rate) is embedded as an item without
        metadata, with the index's windows: for content-only models that is its item embedding,
        for hybrid ones the embedding an item of audio alone gets (the metadata of a catalogue
        item is not looked up, so a copy of it outside the catalogue is embedded alike). A file's
        own entries (same resolved path) are left out of the results. `model` must be the index's
        model: check it once with `check_model` (it hashes every weight, so it is not done here).
        filter: only items matching it, as in `search`.
        """
        from hybrid_retrieval.embedding import example_embedding

        window_seconds = self.info.get("embedding", {}).get("window_seconds")
        query = example_embedding(model, clip, window_seconds)
        own = set()
        if isinstance(clip, (str, Path)):
            resolved = str(Path(clip).resolve())
            own = {row for row, path in enumerate(self.paths) if path == resolved}
        scores, rows = self.search(query, k + len(own), exact=exact, filter=filter)
        keep = [i for i, row in enumerate(rows[0].tolist()) if row >= 0 and row not in own][:k]
        return scores[0, keep], rows[0, keep]

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


def item_columns(items: Sequence[CatalogueItem]) -> dict:
    """The filter columns of `items` for `SearchIndex`: tags (lower-case) and descriptions."""
    return {"tags": [list(item_tags(item.metadata)) for item in items],
            "descriptions": [str(item.metadata.get("fs") or "") for item in items]}


def add_items(index: SearchIndex, model: RetrievalModel, items: Sequence[CatalogueItem],
              cache_dir: str | Path | None = None, progress: bool = True, workers: int = DEFAULT_WORKERS) -> None:
    """Embed `items` with `model` (refused unless it is the index's own: `check_model`), as
    `build_index` embeds a catalogue (metadata kinds, the index's windows, reader workers), and
    add them (`SearchIndex.add`)."""
    from hybrid_retrieval.embedding import embed_catalogue

    index.check_model(model)
    if not items:
        raise BadInputError("nothing to add: no usable audio files were given")
    index.check_new([item.item_id for item in items])  # before the embedding, not after
    paths, metadata = catalogue_inputs(model, items)
    embeddings = embed_catalogue(model, paths, metadata, cache_dir, progress=progress, workers=workers,
                                 window_seconds=index.info["embedding"].get("window_seconds"))
    index.add(embeddings, [item.item_id for item in items], paths, metadata or [""] * len(items),
              **item_columns(items))


def build_index(model: RetrievalModel, items: Sequence[CatalogueItem], checkpoint: dict, *,
                source: str = "", approximate: str | None = None, target_recall: float = 0.95,
                recall_queries: Sequence[str] | None = None, cache_dir: str | Path | None = None,
                window_seconds: float | None = None, progress: bool = True,
                workers: int = DEFAULT_WORKERS) -> SearchIndex:
    """Embed `items` (with their metadata of the model's kinds, for hybrid models) into an index.

    checkpoint: {"path", "epoch", "step"} of the checkpoint `model` was loaded from (recorded so
    `search` can find the model again); approximate: None (exact only), "ivf", "ivfpq" (embeddings
    stored as float16) or "hnsw" (the FAISS backend), tuned on `recall_queries` (text), else on up
    to 1000 of the items' captions (dataset splits have them), else on catalogue items as queries
    (see `backends.base.RecallProbe`); workers: audio reader processes (`embed_catalogue`).
    """
    from hybrid_retrieval.embedding import embed_catalogue

    paths, metadata = catalogue_inputs(model, items)
    embeddings = embed_catalogue(model, paths, metadata, cache_dir, window_seconds=window_seconds,
                                 progress=progress, workers=workers)
    return assemble_index(model, items, paths, metadata, embeddings, checkpoint, source=source, approximate=approximate,
                          target_recall=target_recall, recall_queries=recall_queries,
                          window_seconds=window_seconds, progress=progress)


def catalogue_inputs(model: RetrievalModel, items: Sequence[CatalogueItem]) -> tuple[list[str], list[str] | None]:
    """(resolved audio paths, metadata texts or None) of `items`, as the model embeds them: the
    metadata of the model's kinds for hybrid models (a warning when no item has any)."""
    if not items:
        raise BadInputError("nothing to index: the catalogue has no items")
    kinds = model.config.metadata if model.uses_metadata else ""
    metadata = [item.metadata_text(kinds) if kinds else "" for item in items]
    if kinds and not any(metadata):
        log.warning("the checkpoint fuses %r metadata but no item has any: items are embedded from audio alone",
                    kinds)
    return [str(Path(item.audio_path).resolve()) for item in items], metadata if kinds else None


def assemble_index(model: RetrievalModel, items: Sequence[CatalogueItem], paths: list[str],
                   metadata: list[str] | None, embeddings: Tensor, checkpoint: dict, *, source: str = "", approximate: str | None = None, target_recall: float = 0.95,
                   recall_queries: Sequence[str] | None = None, window_seconds: float | None = None,
                   progress: bool = True, identity: dict | None = None) -> SearchIndex:
    """The index of `items` (with their `catalogue_inputs`) whose embeddings `model` computed
    (see build_index; a sharded build computes them on several processes). identity: the
    model's `model_identity`, if the caller has it already (it hashes every weight)."""
    from hybrid_retrieval.embedding import embed_queries

    kinds = model.config.metadata if model.uses_metadata else ""
    info = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source": source,
            "size": len(items), "dim": embeddings.shape[1], "model": identity or model_identity(model),
            "checkpoint": checkpoint, "embedding": {"metadata_kinds": kinds, "window_seconds": window_seconds}}
    if approximate == "ivfpq":
        embeddings = embeddings.half()  # the re-ranking store: half the file, codes do the searching
    index = SearchIndex(embeddings, [item.item_id for item in items], paths, metadata or [""] * len(items), info,
                        **item_columns(items))
    if approximate:
        texts = list(recall_queries or [caption for item in items for caption in item.captions])
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))[:1000].tolist()
        queries = embed_queries(model, [texts[i] for i in order], progress=False) if texts else None
        index.use_backend("faiss", kind=approximate, target_recall=target_recall, queries=queries, progress=progress)
    return index
