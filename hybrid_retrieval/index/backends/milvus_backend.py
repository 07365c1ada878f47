"""Search in Milvus, a vector database, through pymilvus: Milvus Lite for a local `.db` path,
or a Milvus standalone server or cluster by URI (`http://host:19530`), with the same code.

pymilvus and milvus-lite are optional (`pip install -e ".[milvus]"`); this module is imported only
when an index uses Milvus. The index file records the URI and the collection; the collection holds
each item's vector with its name, tags and description, keyed by a stable id (`RowIds`), so search,
add and remove go to Milvus, and a filter is Milvus's own boolean expression
(`ItemFilter.milvus_expression`). The index file keeps the embeddings too, so `--exact` search and
recall measurement stay local.

Updates never change what a saved index file sees: an add upserts vectors under new ids (which
the saved file does not know, so its searches skip them), and a remove only marks ids removed in
the id table (the vectors stay in Milvus, skipped by searches) until the file is written. The
first update after an index is loaded deletes what the collection holds beyond its id table:
ids past it (an add whose file was never written) and ids it marks removed.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from hybrid_retrieval.deps import optional_import
from hybrid_retrieval.errors import BadInputError, NotFoundError, OfflineError
from hybrid_retrieval.index.backends.base import RecallProbe, RowIds
from hybrid_retrieval.index.filters import ItemFilter, ItemRecord

pymilvus = optional_import("pymilvus", "milvus", "a Milvus index")

MAX_LIMIT = 16384  # Milvus's largest top-k
INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX")  # FLAT: exact; the others approximate
_INSERT_BATCH = 2048  # rows per insert call (bounds one gRPC message)
_MAX_TEXT = 65535  # bytes of a Milvus VARCHAR; the longest name or description stored
_MAX_TAGS, _MAX_TAG = 1024, 512  # tags per item, bytes per tag
_SERVER = re.compile(r"^(https?|tcp|unix)://|^unix:", re.IGNORECASE)


def resolve_uri(uri: str) -> str:
    """A server URI as given; a local path (Milvus Lite) made absolute, so the index file finds
    it from any folder (NotFoundError if its folder does not exist). Milvus Lite takes only paths
    ending in .db."""
    if _SERVER.match(uri):
        return uri
    if not uri.endswith(".db"):
        raise BadInputError(f"Milvus URI {uri!r} is neither a server (http://host:19530) nor a Milvus Lite "
                            "file path ending in .db")
    path = Path(uri).expanduser().resolve()
    if not path.parent.is_dir():
        raise NotFoundError(f"the folder of the Milvus Lite database {path} does not exist")
    return str(path)


def _connect(uri: str) -> pymilvus.MilvusClient:
    uri = resolve_uri(uri)
    try:
        return pymilvus.MilvusClient(uri)
    except pymilvus.MilvusException as exc:
        raise OfflineError(f"cannot reach Milvus at {uri}: {exc.message}") from exc


def _fits(text: str, limit: int, what: str) -> str:
    if len(text.encode("utf-8")) > limit:
        raise BadInputError(f"{what} {text[:40]!r}... is longer than Milvus stores ({limit} bytes)")
    return text


def _rows(vectors: Tensor, ids: Tensor, items: Sequence[ItemRecord]) -> list[dict]:
    if len(items) and max(len(item.tags) for item in items) > _MAX_TAGS:
        raise BadInputError(f"an item has more than {_MAX_TAGS} tags, more than the Milvus collection holds")
    return [{"id": int(i), "vector": v, "name": _fits(item.name, _MAX_TEXT, "item name"),
             "tags": [_fits(tag, _MAX_TAG, "tag") for tag in item.tags],
             "description": _fits(item.description, _MAX_TEXT, "description")}
            for i, v, item in zip(ids.tolist(), vectors.float().tolist(), items)]


class MilvusBackend:
    """A Milvus collection of the index's vectors and item records; `ids` maps its keys to rows."""

    name = "milvus"
    filters = True

    def __init__(self) -> None:
        self.client: pymilvus.MilvusClient | None = None
        self.settings: dict = {}
        self.ids = RowIds.fresh(0)
        self.embeddings: Tensor | None = None
        self.queries: Tensor | None = None
        self.untidy = False  # whether the collection may hold ids the id table does not know or has removed

    @property
    def exact(self) -> bool:
        return self.settings["index_type"] == "FLAT"

    @property
    def collection(self) -> str:
        return self.settings["collection"]

    def build(self, embeddings: Tensor, items: Sequence[ItemRecord] = (), *, uri: str,
              collection: str = "hybrid_retrieval", index_type: str = "FLAT", queries: Tensor | None = None,
              progress: bool = True) -> None:
        """A new collection `collection` at `uri` (one of that name is replaced) holding the
        embeddings and `items`. index_type: Milvus's vector index (INDEX_TYPES; FLAT is exact,
        the others report the recall@10 they measured, as `RecallProbe` says)."""
        if index_type not in INDEX_TYPES:
            raise BadInputError(f"Milvus index type must be one of {INDEX_TYPES}, not {index_type!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", collection):
            raise BadInputError(f"Milvus collection name {collection!r} must be letters, digits and underscores, "
                                "not starting with a digit")
        uri = resolve_uri(uri)
        self.client = _connect(uri)
        self.settings = {"backend": self.name, "uri": uri, "collection": collection, "index_type": index_type}
        if self.client.has_collection(collection):
            self.client.drop_collection(collection)
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=embeddings.shape[1])
        schema.add_field("name", pymilvus.DataType.VARCHAR, max_length=_MAX_TEXT)
        schema.add_field("tags", pymilvus.DataType.ARRAY, element_type=pymilvus.DataType.VARCHAR,
                         max_capacity=_MAX_TAGS, max_length=_MAX_TAG)
        schema.add_field("description", pymilvus.DataType.VARCHAR, max_length=_MAX_TEXT)
        index_params = self.client.prepare_index_params()
        index_params.add_index("vector", index_type=index_type, metric_type="IP")
        self.client.create_collection(collection, schema=schema)
        self.client.create_index(collection, index_params, sync=False)  # Milvus Lite cannot be waited on
        self.client.load_collection(collection)
        self.embeddings, self.queries, self.ids, self.untidy = embeddings, queries, RowIds.fresh(0), False
        self.add(embeddings, 0, items)
        self.retune()

    def search(self, queries: Tensor, k: int, where: ItemFilter | None = None) -> tuple[Tensor, Tensor]:
        """Milvus's top-k, asking for more while answers carry ids the index does not hold."""
        k = min(k, self.ids.live, MAX_LIMIT)
        data = queries.float().tolist()
        limit = k
        while True:
            answers = self.client.search(self.collection, data=data, limit=limit, filter=where.milvus_expression()
                                         if where else "", output_fields=[], search_params={"metric_type": "IP"})
            found = [[(hit["distance"], row) for hit, row in zip(hits, self.ids.to_rows(
                torch.tensor([hit["id"] for hit in hits], dtype=torch.long)).tolist()) if row >= 0]
                for hits in answers]
            unknown = any(len(kept) < k and len(hits) == limit for kept, hits in zip(found, answers))
            if not unknown or limit >= MAX_LIMIT:
                break
            limit = min(MAX_LIMIT, 2 * limit)
        scores = torch.full((len(queries), k), -float("inf"))
        rows = torch.full((len(queries), k), -1, dtype=torch.long)
        for i, kept in enumerate(found):
            for j, (score, row) in enumerate(kept[:k]):
                scores[i, j], rows[i, j] = score, row
        return scores, rows

    def add(self, embeddings: Tensor, start: int, items: Sequence[ItemRecord] = ()) -> None:
        """Upsert the new rows (over any ids an interrupted update left behind)."""
        self._tidy()
        self.embeddings = embeddings
        ids = self.ids.add(start, len(embeddings) - start)
        for first in range(0, len(ids), _INSERT_BATCH):
            part = slice(first, first + _INSERT_BATCH)
            self.client.upsert(self.collection, _rows(embeddings[start:][part], ids[part],
                                                      [items[i] for i in range(len(ids))[part]]))

    def remove(self, rows: Sequence[int], embeddings: Tensor) -> None:
        """Mark the rows' ids removed; their vectors are deleted by the first update after the
        index file that says so is loaded (until then searches skip them)."""
        self._tidy()
        self.embeddings = embeddings
        self.ids.remove(rows)

    def _tidy(self) -> None:
        """Once after loading: delete the ids past the id table and those it marks removed."""
        if not self.untidy:
            return
        dead = torch.nonzero(self.ids.rows < 0)[:, 0].tolist()
        self.client.delete(self.collection, filter=f"id >= {len(self.ids.rows)}")
        for first in range(0, len(dead), _INSERT_BATCH):
            self.client.delete(self.collection, ids=dead[first:first + _INSERT_BATCH])
        self.untidy = False

    def retune(self) -> None:
        """Nothing to tune here (Milvus's own search parameters are left at its defaults); an
        approximate index type's recall@10 is measured and recorded."""
        if self.exact:
            return
        probe = RecallProbe.make(self.embeddings, self.queries)
        self.settings.update({"recall@10": round(probe.measure(lambda q, k: self.search(q, k)[1]), 4),
                              "recall_queries": probe.describe()})

    def save(self) -> tuple[dict, dict[str, Tensor]]:
        tensors = {"milvus_rows": self.ids.rows}
        if self.queries is not None:
            tensors["milvus_queries"] = self.queries.float()
        return self.settings, tensors

    @classmethod
    def load(cls, settings: dict, tensors: dict[str, Tensor], embeddings: Tensor) -> MilvusBackend:
        """The saved collection, connected: NotFoundError if it is gone, OfflineError if the
        server cannot be reached, BadInputError if it does not hold the index's items."""
        missing = sorted({"uri", "collection", "index_type"} - set(settings))
        if missing:
            raise BadInputError(f"its Milvus settings lack {missing}")
        backend = cls()
        backend.settings, backend.ids = settings, RowIds(tensors["milvus_rows"])
        backend.embeddings, backend.queries = embeddings, tensors.get("milvus_queries")
        backend.untidy = True
        backend.client = _connect(settings["uri"])
        if not backend.client.has_collection(backend.collection):
            raise NotFoundError(f"the index's Milvus collection {backend.collection!r} is not at {settings['uri']}")
        if backend.ids.live != len(embeddings):
            raise BadInputError(f"its Milvus id table holds {backend.ids.live} items, but the index has "
                                f"{len(embeddings)}")
        return backend
