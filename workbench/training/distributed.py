"""Data-parallel training across processes launched by ``torchrun``.

``torchrun --nproc_per_node N ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` reads them and, for more than one
process, joins the process group (gloo on the CPU, NCCL on CUDA). A plain
``python`` launch is a world of one and needs no process group at all.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes
    ----------
    rank : int
        Global process index (0 writes files and sends events).
    world_size : int
        Number of processes.
    local_rank : int
        Index on this machine (selects the GPU).
    is_main : bool
        ``rank == 0``.
    device : torch.device
        Device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    is_main: bool = True
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one member is in use."""
        return self.world_size > 1


def resolve_device(device_pref: Literal["auto", "cpu", "cuda"] | str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` -> ``cuda:local_rank``.

    Raises
    ------
    workbench.io_utils.InputError
        ``cuda`` was asked for but no GPU is visible.
    """
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    if device_pref == "cuda":
        if not torch.cuda.is_available():
            from workbench.io_utils import InputError

            raise InputError("train.device is 'cuda' but no CUDA GPU is visible: set train.device to auto or cpu")
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Read the torchrun environment and join the process group when needed.

    Idempotent: when the default process group already exists it is reused.

    Parameters
    ----------
    device_pref : {'auto', 'cpu', 'cuda'}
        ``config.train.device``.

    Returns
    -------
    DistInfo
        World of one (no process group) unless ``WORLD_SIZE`` > 1.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    device = resolve_device(device_pref, local_rank)
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, is_main=rank == 0, device=device)


def cleanup() -> None:
    """Leave the process group (no-op when none was created).

    Unreferenced objects are collected first, so a trainer caught in a reference cycle
    releases its DDP wrapper (and the gloo work it holds) while Python is fully alive,
    not during interpreter shutdown.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _reduce_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 tensor over all processes (returns it unchanged in a world of one)."""
    if not _active():
        return values
    t = values.detach().to(_reduce_device(), torch.float64).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def all_reduce_mean(value: float) -> float:
    """Mean of a Python float over all processes (the value itself in a world of one)."""
    if not _active():
        return float(value)
    return float(all_reduce_sum(torch.tensor([float(value)], dtype=torch.float64))[0]) / dist.get_world_size()


def barrier() -> None:
    """Wait for every process (no-op in a world of one)."""
    if _active():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself in a world of one)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj):
    """List of ``obj`` from every rank, in rank order (``[obj]`` in a world of one)."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
