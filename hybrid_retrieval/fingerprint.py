"""Identities of model weights, so caches and indexes can tell which model made them."""
from __future__ import annotations

import hashlib
import json

import torch


def module_state_hash(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fingerprint_hash(fingerprint: dict) -> str:
    """A short stable hash of a JSON-serialisable fingerprint."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:20]
