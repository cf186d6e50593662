"""Process-group helpers for training under ``torchrun`` (no launcher of our own).

When ``RANK``/``WORLD_SIZE`` are set, :func:`setup` initialises the process group (NCCL on CUDA, one
GPU per local rank; gloo on CPU) unless it already is, and :func:`teardown` destroys it again if it
created it. The head is not inside DDP: :func:`all_reduce_grads` averages its gradients.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Placement", "setup", "teardown", "all_reduce_grads", "global_batch_size"]


@dataclass(frozen=True)
class Placement:
    """Where this process trains: its device, rank and world size, and whether it owns the group."""

    device: torch.device
    rank: int = 0
    world: int = 1
    owns_group: bool = False


def setup(device: str) -> Placement:
    """The device for ``device`` (``auto | cpu | cuda``) and, under torchrun, the process group."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available; use device='cpu' or 'auto'")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    owns = False
    if world > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if not use_cuda:
        return Placement(torch.device("cpu"), rank, world, owns)
    index = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else torch.cuda.current_device()
    return Placement(torch.device("cuda", index), rank, world, owns)


def teardown(where: Placement) -> None:
    """Free DDP's reference cycles while the group is alive, then destroy the group if we made it."""
    if where.world > 1:
        # DDP holds a reference cycle; free it (and its reducer) while the process group is alive,
        # else gloo can abort at interpreter exit ("terminate called without an active exception")
        gc.collect()
    if where.owns_group:
        dist.destroy_process_group()


def all_reduce_grads(module: nn.Module, world: int) -> None:
    """Average the gradients of ``module``'s parameters over ranks (one collective)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def global_batch_size(batch: int, batch_size: int, n: int) -> int:
    """Samples in global batch ``batch`` of an epoch over ``n`` samples (the last one may be short)."""
    return min(batch_size, n - batch_size * batch)
