"""Tensors and a JSON header in one safetensors file: the format of the search index and of the
similarity catalogue.

The header (a JSON object with a `format` field) is stored as the file's safetensors metadata;
long text (item names, paths, descriptions) goes into uint8 tensors of UTF-8 JSON instead,
because safetensors caps its header at 100 MB, which a large catalogue's names can pass. Files
are written beside their target and renamed into place (`hub.atomic_path`), so a reader finds
the previous complete file or the new one, never a half-written file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from hybrid_retrieval.errors import BadInputError, NotFoundError
from hybrid_retrieval.hub import UnwritableError, atomic_path, check_space

HEADER_KEY = "header"


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


def check_rows(embeddings: Tensor, names: dict[str, object]) -> None:
    """Refuse (BadInputError) embeddings that are not a finite (rows, dim) float matrix, or lists
    of names (`names`: what they are called -> the value read) that are not one string per row."""
    if embeddings.dim() != 2 or not embeddings.is_floating_point():
        raise BadInputError(f"its embeddings are a {embeddings.dtype} tensor of shape {tuple(embeddings.shape)}, "
                            "not an (items, dim) float matrix")
    rows = len(embeddings)
    for name, values in names.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise BadInputError(f"its {name} are not a list of strings")
        if len(values) != rows:
            raise BadInputError(f"it has {len(values)} {name} for {rows} embedding rows")
    bad = (~torch.isfinite(embeddings).all(dim=1)).nonzero().flatten().tolist()
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


def load_tensor_file(path: str | Path, fmt: str, what: str, hint: str = "") -> tuple[dict, dict[str, Tensor]]:
    """(header, tensors) of a file `save_tensor_file` wrote with header format `fmt`.

    what: how to name the file in errors ("index"); hint: what to do when it is missing.
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
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path} is not a readable {what}: {exc}") from exc
    return header, tensors
