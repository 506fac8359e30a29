"""Several processes with PyTorch's own engine: torchrun starts them, this module
joins them (gloo on CPU, nccl on CUDA) and says who writes.

`torchrun --nproc_per_node N -m vggtool train ...` sets RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them vggtool
is one process. Collectives time out after `dist_timeout` seconds, so a process
that died or hangs ends the others with a message instead of a hang (torchrun
also stops the others when one exits with an error).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from vggtool.errors import VggtoolError

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sums across processes (one collective for the list)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def launched() -> bool:
    return any(k in os.environ for k in TORCHRUN_ENV)


def check_launch(device: torch.device) -> World:
    """Where this process stands per torchrun's environment (one process without it);
    a partial environment or more processes than devices is a one-line error."""
    present = [k for k in TORCHRUN_ENV if k in os.environ]
    if not present:
        return World()
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise VggtoolError(f"a distributed launch needs torchrun's environment, missing {', '.join(missing)}: "
                           "start it with `torchrun --nproc_per_node N -m vggtool train ...`")
    try:
        rank, size, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    except ValueError:
        raise VggtoolError("RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers (set by torchrun)") from None
    if device.type == "cuda" and per_node > torch.cuda.device_count():
        raise VggtoolError(f"--nproc_per_node {per_node} exceeds the {torch.cuda.device_count()} CUDA device(s) "
                           "of this node: one process per GPU")
    if device.type != "cuda" and per_node > (os.cpu_count() or 1):
        raise VggtoolError(f"--nproc_per_node {per_node} exceeds the {os.cpu_count()} CPU cores of this node")
    return World(rank, size, local) if size > 1 else World()


def join(device: torch.device, timeout_s: float) -> World:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA), or stay one process."""
    world = check_launch(device)
    if not world.distributed:
        return world
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return world


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: torch.device, world: World) -> torch.device:
    """Each process its own GPU; CPU processes share the CPU."""
    return torch.device("cuda", world.local_rank) if device.type == "cuda" else device
