"""The search index: a catalogue embedded once by a checkpoint, searched many times.

    search_index.py   SearchIndex (embeddings, items, model identity, backend; search, search_audio), build_index
    sharded.py        build_index_sharded: one index built by several torchrun processes, resumable by shard
    query_encoder.py  open_query_encoder: the query half of the index's checkpoint (a cached ONNX export)
    store.py          the index file: save_index, load_index
    backends/         how an index is searched: exact torch (default), FAISS; one protocol
    cli.py            `hybrid-retrieval index build|info` and `hybrid-retrieval search`

Catalogues (folders, dataset splits, metadata CSVs) are read by hybrid_retrieval.data.catalogue.
The names below are imported on first use, so the command line's parser stays cheap.
"""
from hybrid_retrieval.lazy import lazy_exports

_EXPORTS = {
    "SearchIndex": "hybrid_retrieval.index.search_index",
    "build_index": "hybrid_retrieval.index.search_index",
    "build_index_sharded": "hybrid_retrieval.index.sharded",
    "open_query_encoder": "hybrid_retrieval.index.query_encoder",
    "model_identity": "hybrid_retrieval.index.search_index",
    "INDEX_FORMAT": "hybrid_retrieval.index.store",
    "load_index": "hybrid_retrieval.index.store",
    "save_index": "hybrid_retrieval.index.store",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
