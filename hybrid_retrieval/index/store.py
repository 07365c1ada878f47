"""The index file: one safetensors file (`tensorfile`) holding

    embeddings    float32 (n, d), the L2-normalised item embeddings (float16 for an IVF-PQ index)
    items         uint8, UTF-8 JSON of every item's id, audio path, metadata text, tags and description
    <backend>     what the search backend stores beside them (e.g. a serialised FAISS index)

and a JSON header: the format, the model's identity, the checkpoint's path, epoch and step, how
items were embedded, and the search backend's settings (for an approximate backend, what it was
tuned to and the recall@10 it measured against exact search). Written atomically: an update
(`index add`, `index remove`) replaces the whole file.

`load_index` maps the embeddings from the file instead of reading them (`tensorfile.mapped_tensors`),
so an index larger than memory can be opened and searched. A store up to SCAN_BYTES is read once
at load to refuse NaN embeddings; a larger one is checked as searches read it (`exact.check_finite`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.index.backends import backend_class
from hybrid_retrieval.index.search_index import SearchIndex
from hybrid_retrieval.tensorfile import check_rows, json_tensor, load_tensor_file, save_tensor_file, tensor_json

INDEX_FORMAT = "hybrid_retrieval.index/2"
SCAN_BYTES = 1 << 30  # stores up to this size are scanned for NaN when loaded
STORE_DTYPES = (torch.float32, torch.float16)


def save_index(index: SearchIndex, path: str | Path) -> Path:
    """Write `index` to the file `path` atomically: a crash leaves any previous file untouched."""
    settings, backend_tensors = index.backend.save()
    header = {**index.info, "format": INDEX_FORMAT, "search": settings}
    embeddings = index.embeddings if index.embeddings.dtype in STORE_DTYPES else index.embeddings.float()
    tensors = {"embeddings": embeddings,
               "items": json_tensor({"ids": index.ids, "paths": index.paths, "metadata": index.metadata,
                                     "tags": index.tags, "descriptions": index.descriptions}),
               **backend_tensors}
    return save_tensor_file(path, tensors, header)


# What an index header holds (field -> type; nested sections by name). `build_index` writes them
# all; loading requires LOADING_FIELDS and checks the type of every field present, and the commands
# require what they print or use, so a damaged or hand-edited header is named as such instead of
# failing in the middle of a search.
HEADER_FIELDS: dict[str, type | dict] = {
    "created": str, "source": str, "size": int, "dim": int,
    "model": {"fingerprint": dict, "weights": str, "config": dict},
    "checkpoint": {"path": str},
    "embedding": {"metadata_kinds": str},
    "search": {"backend": str},
}
LOADING_FIELDS = ("size", "dim", "search")


def _check_header(header: dict, fields: dict, required: Sequence[str], where: str = "") -> None:
    for name, kind in fields.items():
        if name not in header and name not in required:
            continue
        value = header.get(name)
        expected = dict if isinstance(kind, dict) else kind
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            found = "missing" if name not in header else f"a {type(value).__name__}"
            raise BadInputError(f"header field '{where}{name}' is {found}, not a {expected.__name__}")
        if isinstance(kind, dict):
            _check_header(value, kind, list(kind), f"{where}{name}.")


def _check_items(header: dict, embeddings: Tensor, items: object) -> None:
    """The embeddings, the item lists and the header's size and dim must agree (tags and
    descriptions, which indexes written before filters lack, are empty then)."""
    if not isinstance(items, dict):
        raise BadInputError("its item table is not a JSON object")
    items.setdefault("tags", [[] for _ in range(len(embeddings))])
    items.setdefault("descriptions", [""] * len(embeddings))
    check_rows(embeddings, {f"item {name}": items.get(name) for name in ("ids", "paths", "metadata", "descriptions")},
               scan=embeddings.numel() * embeddings.element_size() <= SCAN_BYTES)
    tags = items["tags"]
    if not isinstance(tags, list) or len(tags) != len(embeddings) or not all(
            isinstance(t, list) and all(isinstance(v, str) for v in t) for t in tags):
        raise BadInputError("its item tags are not one list of strings per embedding row")
    rows, dim = embeddings.shape
    if header["size"] != rows:
        raise BadInputError(f"its header says {header['size']} items but it holds {rows}")
    if header["dim"] != dim:
        raise BadInputError(f"its header says {header['dim']}-d embeddings but they are {dim}-d")


def load_index(path: str | Path, require: Sequence[str] = ()) -> SearchIndex:
    """Read an index written by `save_index` (NotFoundError if there is none, BadInputError naming
    the file and what is wrong if it is not one, is damaged, or its header and tensors disagree).
    require: header sections needed besides LOADING_FIELDS (of HEADER_FIELDS, e.g. "model")."""
    header, tensors = load_tensor_file(path, INDEX_FORMAT, "index", hint="build one with `hybrid-retrieval index build`",
                                       mapped=("embeddings",))
    try:
        _check_header(header, HEADER_FIELDS, (*LOADING_FIELDS, *require))
        for name in ("embeddings", "items"):
            if name not in tensors:
                raise BadInputError(f"it has no {name!r} tensor")
        try:
            items = tensor_json(tensors.pop("items"))
        except ValueError as exc:  # not UTF-8, or not JSON
            raise BadInputError(f"its item table is not UTF-8 JSON ({exc})") from exc
        embeddings = tensors.pop("embeddings")
        _check_items(header, embeddings, items)
        backend = backend_class(header["search"]["backend"]).load(header["search"], tensors, embeddings)
        return SearchIndex(embeddings, items["ids"], items["paths"], items["metadata"], header, backend,
                           items["tags"], items["descriptions"])
    except KeyError as exc:  # a tensor or setting a backend stores
        raise BadInputError(f"{path} is a damaged index: {exc} is missing") from exc
    except BadInputError as exc:
        raise BadInputError(f"{path} is a damaged index: {exc}") from exc
