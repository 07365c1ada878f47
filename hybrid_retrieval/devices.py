"""Which torch device a `--device` / `device=` value means."""
from __future__ import annotations

import torch

from hybrid_retrieval.errors import BadInputError


def resolve_device(name: str) -> torch.device:
    """The device of "auto" (CUDA where torch finds a device, else the CPU), "cpu", "cuda" or "cuda:N";
    BadInputError for another name, or for CUDA where torch finds none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"device {name!r}: torch finds no CUDA device here; use --device cpu (or auto)")
    return device
