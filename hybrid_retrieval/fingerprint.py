"""Identities of model weights, so caches and indexes can tell which model made them."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch


def state_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over named tensors (names, dtypes, shapes and values, in name order): a module's
    state dict, or the same tensors read from a checkpoint file with its prefix taken off."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def module_state_hash(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and values)."""
    return state_hash(module.state_dict())


def fingerprint_hash(fingerprint: dict) -> str:
    """A short stable hash of a JSON-serialisable fingerprint."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:20]
