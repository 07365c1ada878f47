"""Tensors and a JSON header in one safetensors file: the format of the search index and of the
similarity catalogue.

The header (a JSON object with a `format` field) is stored as the file's safetensors metadata;
long text (item names, paths, descriptions) goes into uint8 tensors of UTF-8 JSON instead,
because safetensors caps its header at 100 MB, which a large catalogue's names can pass. Files
are written beside their target and renamed into place (`hub.atomic_path`), so a reader finds
the previous complete file or the new one, never a half-written file.

Large tensors (an index's embeddings) can be read memory-mapped (`load_tensor_file(mapped=...)`):
the safetensors layout is an 8-byte header length, the JSON header (each tensor's dtype, shape
and byte range), then the tensors' bytes, so a tensor is a numpy memmap at its offset; pages are
read from disk when touched and the kernel may drop them again, so a store larger than memory can
be searched.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from hybrid_retrieval.errors import BadInputError, NotFoundError
from hybrid_retrieval.hub import UnwritableError, atomic_path, check_space

HEADER_KEY = "header"
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": None, "U8": np.uint8,
           "I64": np.int64, "I32": np.int32}
_FINITE_CHUNK = 1 << 16  # rows checked at once for NaN (bounds the temporary copies)


def json_tensor(value: object) -> Tensor:
    """`value` as UTF-8 JSON in a uint8 tensor."""
    return torch.frombuffer(bytearray(json.dumps(value).encode("utf-8")), dtype=torch.uint8)


def tensor_json(tensor: Tensor) -> object:
    """The value `json_tensor` stored (ValueError if the bytes are not UTF-8 JSON)."""
    return json.loads(bytes(tensor.numpy()).decode("utf-8"))


def write_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None,
                      target: Path | None = None) -> None:
    """`safetensors.torch.save_file` into `path` (a temporary of `target`), refused up front when
    the disk cannot hold the tensors; safetensors reports a failed write (a disk that filled up
    meanwhile) as a SafetensorError without an errno, which becomes UnwritableError naming `target`."""
    target = target or path
    check_space(target, path.parent, sum(t.numel() * t.element_size() for t in tensors.values()))
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        raise UnwritableError(target, f"safetensors could not write it ({exc})") from exc


def save_tensor_file(path: str | Path, tensors: dict[str, Tensor], header: dict) -> Path:
    """Write `tensors` and `header` (which names its `format`) to `path` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        write_safetensors({k: v.contiguous() for k, v in tensors.items()}, tmp, {HEADER_KEY: json.dumps(header)},
                          target=path)
    return path


def check_rows(embeddings: Tensor, names: dict[str, object], scan: bool = True) -> None:
    """Refuse (BadInputError) embeddings that are not a finite (rows, dim) float matrix, or lists
    of names (`names`: what they are called -> the value read) that are not one string per row.
    scan: whether to read every value for NaN (in chunks, so a memory-mapped matrix is not copied
    whole); a caller that skips it checks what it reads instead (`nonfinite_row`)."""
    if embeddings.dim() != 2 or not embeddings.is_floating_point():
        raise BadInputError(f"its embeddings are a {embeddings.dtype} tensor of shape {tuple(embeddings.shape)}, "
                            "not an (items, dim) float matrix")
    rows = len(embeddings)
    for name, values in names.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise BadInputError(f"its {name} are not a list of strings")
        if len(values) != rows:
            raise BadInputError(f"it has {len(values)} {name} for {rows} embedding rows")
    if not scan:
        return
    bad = [start + int(row) for start in range(0, rows, _FINITE_CHUNK)
           for row in (~torch.isfinite(embeddings[start:start + _FINITE_CHUNK]).all(dim=1)).nonzero().flatten()]
    if bad:
        first = next(iter(names.values()))[bad[0]] if names else bad[0]
        raise BadInputError(f"{len(bad)} of its embeddings hold NaN or infinite values (first: {first!r})")


def read_safetensors(path: str | Path, prefixes: tuple[str, ...] | None = None) -> dict[str, Tensor]:
    """The tensors of a safetensors file (only those whose names start with one of `prefixes`,
    if given: the others are not read): NotFoundError if it is missing, BadInputError naming it
    if it is empty, truncated or otherwise not a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path} is missing")
    try:
        if prefixes is not None:
            with safe_open(str(path), "pt") as handle:
                return {name: handle.get_tensor(name) for name in handle.keys() if name.startswith(prefixes)}
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        size = path.stat().st_size
        raise BadInputError(f"{path} is damaged or truncated ({size} bytes; safetensors: {exc})") from exc


def load_tensor_file(path: str | Path, fmt: str, what: str, hint: str = "",
                     mapped: Collection[str] = ()) -> tuple[dict, dict[str, Tensor]]:
    """(header, tensors) of a file `save_tensor_file` wrote with header format `fmt`.

    what: how to name the file in errors ("index"); hint: what to do when it is missing;
    mapped: tensors to map from the file instead of reading (`mapped_tensors`).
    Missing: NotFoundError; unreadable, damaged or of another format: BadInputError.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no {what} at {path}{f' ({hint})' if hint else ''}")
    try:
        with safe_open(str(path), "pt") as handle:
            raw = (handle.metadata() or {}).get(HEADER_KEY)
            header = json.loads(raw) if raw else {}
            if not isinstance(header, dict):
                raise BadInputError(f"{path} is not a hybrid_retrieval {what}: its header is a JSON "
                                    f"{type(header).__name__}, not an object")
            if header.get("format") != fmt:
                raise BadInputError(f"{path} is not a hybrid_retrieval {what} (format {header.get('format')!r}, "
                                    f"expected {fmt!r})")
            names = list(handle.keys())
            tensors = {name: handle.get_tensor(name) for name in names if name not in mapped}
        tensors.update(mapped_tensors(path, [name for name in names if name in mapped]))
    except (SafetensorError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path} is not a readable {what}: {exc}") from exc
    return header, tensors


def mapped_tensors(path: str | Path, names: Collection[str]) -> dict[str, Tensor]:
    """Tensors `names` of the safetensors file `path`, memory-mapped (copy-on-write: writing to
    one changes this process's copy, never the file). The file is expected to have passed
    `safe_open`, which checks that its header's byte ranges fit the file."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        layout = json.loads(handle.read(length))
    out = {}
    for name in names:
        entry = layout[name]
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise BadInputError(f"{path}: tensor {name!r} is {entry['dtype']}, which cannot be mapped")
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if not shape or 0 in shape:  # numpy cannot map zero bytes
            out[name] = torch.zeros(shape, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype)
            continue
        array = np.memmap(path, dtype=dtype, mode="c", offset=8 + length + begin, shape=shape)
        out[name] = torch.from_numpy(array)
    return out
