"""Helpers for torchrun / DistributedDataParallel: rank info and gathering across processes."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed import _functional_collectives as funcol
from torch.nn.parallel import DistributedDataParallel


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


def wrap_model(model: nn.Module) -> nn.Module:
    """`model` in DistributedDataParallel when running distributed, else `model` itself.

    Towers that train have parameters the loss never reaches (EfficientAT's tagging head, the
    text encoder's pooler), and a learned temperature is used by the loss, outside the forward.
    `static_graph=True` handles both: DDP learns in the first step which parameters get
    gradients (the same ones every step here). Plain DDP fails on the unused parameters (its
    second step waits for their gradients), `find_unused_parameters=True` on the temperature
    ("marked ready twice"). Parameters no rank uses keep no gradient, as in one process.
    """
    if not is_distributed():
        return model
    return DistributedDataParallel(model, static_graph=True)


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from every rank along dim 0, keeping the autograd graph.

    The functional collective's backward sums every rank's gradient for this rank's slice (a
    reduce-scatter). With the same global loss on every rank and DDP's gradient averaging, the
    parameter gradients equal those of one process that sees the whole global batch
    (tests/test_distributed.py). torch.distributed.nn.functional.all_gather did the same and is
    deprecated in favour of this module, which is underscored but what torch's warning names.
    """
    if not is_distributed():
        return x
    return funcol.all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD)


def gather_no_grad(x: Tensor) -> Tensor:
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
