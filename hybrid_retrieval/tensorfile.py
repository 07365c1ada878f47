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
from safetensors.torch import save_file
from torch import Tensor

from hybrid_retrieval.errors import BadInputError, NotFoundError
from hybrid_retrieval.hub import atomic_path

HEADER_KEY = "header"


def json_tensor(value: object) -> Tensor:
    """`value` as UTF-8 JSON in a uint8 tensor."""
    return torch.frombuffer(bytearray(json.dumps(value).encode("utf-8")), dtype=torch.uint8)


def tensor_json(tensor: Tensor) -> object:
    """The value `json_tensor` stored."""
    return json.loads(bytes(tensor.numpy()).decode("utf-8"))


def save_tensor_file(path: str | Path, tensors: dict[str, Tensor], header: dict) -> Path:
    """Write `tensors` and `header` (which names its `format`) to `path` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={HEADER_KEY: json.dumps(header)})
    return path


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
            if not isinstance(header, dict) or header.get("format") != fmt:
                found = header.get("format") if isinstance(header, dict) else None
                raise BadInputError(f"{path} is not a hybrid_retrieval {what} (format {found!r}, expected {fmt!r})")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path} is not a readable {what}: {exc}") from exc
    return header, tensors
