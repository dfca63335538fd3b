"""Data-parallel training across processes started by ``torchrun`` (DistributedDataParallel).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; with
``WORLD_SIZE > 1`` :func:`setup` joins the process group: NCCL with one GPU per process (``cuda:LOCAL_RANK``)
when the device is CUDA, gloo on CPU. Gradients are averaged over processes, so with each process taking
``batch_size / world_size`` samples of the same global batch the update equals a single-process step on
the whole batch (up to float rounding). Only rank 0 logs, validates and writes checkpoints.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..errors import InputError
from ..segmentation.models import resolve_device


@dataclass(frozen=True)
class DistributedContext:
    """This process in the run: its rank, the number of processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    #: Whether :func:`setup` started the process group (and :func:`teardown` ends it).
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def world_size_from_environment() -> int:
    """``WORLD_SIZE`` set by ``torchrun`` (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device: str = "auto") -> DistributedContext:
    """The :class:`DistributedContext` of this process, joining the process group under ``torchrun``.

    Raises:
        InputError: CUDA requested but missing, or fewer GPUs than local processes.
    """
    world = world_size_from_environment()
    if world <= 1:
        return DistributedContext(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device)
    if target.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"device cuda: local rank {local_rank} but only {torch.cuda.device_count()} GPU(s); "
                             f"use --nproc_per_node <= the GPU count")
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return DistributedContext(rank, world, local_rank, target, owns)


def teardown(context: DistributedContext) -> None:
    """Leave the process group if :func:`setup` joined it.

    DistributedDataParallel wrappers sit in reference cycles; collected only at interpreter shutdown, their
    gloo work objects abort the process ("terminate called without an active exception"). So collect them
    first, then wait for every process, then destroy the group.
    """
    if context.owns_group and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def wrap(network: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """``network`` in DistributedDataParallel over the parameters that train now (itself when alone).

    Build it again whenever ``requires_grad`` changes (a new phase).
    """
    if not context.is_distributed:
        return network
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=device_ids)


def mean_over_processes(value: torch.Tensor, context: DistributedContext) -> float:
    """The mean of the scalar ``value`` over all processes."""
    if not context.is_distributed:
        return float(value)
    total = value.detach().reshape(1).to(torch.float64 if context.device.type == "cpu" else torch.float32).clone()
    dist.all_reduce(total)
    return float(total) / context.world_size


def barrier(context: DistributedContext) -> None:
    """Wait for every process (no-op alone)."""
    if context.is_distributed:
        dist.barrier()
