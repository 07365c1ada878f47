"""The index file: one safetensors file (`tensorfile`) holding

    embeddings    float32 (n, d), the L2-normalised item embeddings
    items         uint8, UTF-8 JSON of every item's id, audio path and metadata text
    <backend>     what the search backend stores beside them (e.g. a serialised FAISS index)

and a JSON header: the format, the model's identity, the checkpoint's path, epoch and step, how
items were embedded, and the search backend's settings (for an approximate backend, what it was
tuned to and the recall@10 it measured against exact search). Written atomically.
"""
from __future__ import annotations

from pathlib import Path

from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.index.backends import backend_class
from hybrid_retrieval.index.search_index import SearchIndex
from hybrid_retrieval.tensorfile import json_tensor, load_tensor_file, save_tensor_file, tensor_json

INDEX_FORMAT = "hybrid_retrieval.index/2"


def save_index(index: SearchIndex, path: str | Path) -> Path:
    """Write `index` to the file `path` atomically: a crash leaves any previous file untouched."""
    settings, backend_tensors = index.backend.save()
    header = {**index.info, "format": INDEX_FORMAT, "search": settings}
    tensors = {"embeddings": index.embeddings.float(),
               "items": json_tensor({"ids": index.ids, "paths": index.paths, "metadata": index.metadata}),
               **backend_tensors}
    return save_tensor_file(path, tensors, header)


def load_index(path: str | Path) -> SearchIndex:
    """Read an index written by `save_index` (NotFoundError if there is none, BadInputError if the
    file is not one)."""
    header, tensors = load_tensor_file(path, INDEX_FORMAT, "index", hint="build one with `hybrid-retrieval index build`")
    try:
        items = tensor_json(tensors.pop("items"))
        embeddings = tensors.pop("embeddings")
        backend = backend_class(header["search"]["backend"]).load(header["search"], tensors, embeddings)
        return SearchIndex(embeddings, items["ids"], items["paths"], items["metadata"], header, backend)
    except (KeyError, TypeError) as exc:
        raise BadInputError(f"{path} is a damaged index: {exc!r} is missing or of the wrong type") from exc
