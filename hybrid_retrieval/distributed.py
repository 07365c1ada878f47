"""Helpers for torchrun / DistributedDataParallel: rank info and gathering across processes."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return is_distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from every rank along dim 0, keeping the autograd graph.

    torch.distributed.nn's all_gather is differentiable: its backward sums each rank's gradient
    for this rank's slice. With the same global loss on every rank and DDP's gradient averaging,
    the parameter gradients equal those of one process that sees the whole global batch.
    """
    if not is_distributed():
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_no_grad(x: Tensor) -> Tensor:
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
