"""Search backends by name: the exact torch search (default), FAISS (approximate) and Milvus
(a vector database).

Each backend is one module implementing `base.IndexBackend`; the registry maps a name to
"module:Class" and imports it only when an index uses it, so faiss and pymilvus (optional
dependencies) are never loaded by code that does not search with them.
"""
from __future__ import annotations

from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.index.backends.base import IndexBackend
from hybrid_retrieval.lazy import import_object

BACKENDS = {
    "torch": "hybrid_retrieval.index.backends.exact:ExactBackend",
    "faiss": "hybrid_retrieval.index.backends.faiss_backend:FaissBackend",
    "milvus": "hybrid_retrieval.index.backends.milvus_backend:MilvusBackend",
}
DEFAULT_BACKEND = "torch"


def backend_class(name: str) -> type[IndexBackend]:
    if name not in BACKENDS:
        raise BadInputError(f"unknown index backend {name!r}; known: {sorted(BACKENDS)}")
    return import_object(BACKENDS[name])


def create_backend(name: str = DEFAULT_BACKEND) -> IndexBackend:
    """An unbuilt backend; `build(embeddings, **options)` makes it searchable."""
    return backend_class(name)()
