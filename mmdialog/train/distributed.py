"""Data-parallel training under torchrun: process group setup and the few collectives the trainer needs.

`torchrun --nproc_per_node=N -m mmdialog train ...` sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT;
`init_distributed` reads them and joins the group (gloo on CPU, NCCL on CUDA). Without them it returns a
single-process Dist whose collectives are no-ops, so the trainer has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over processes, in place (returns t)."""
        if self.enabled:
            torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
        return t

    def gather(self, obj) -> list:
        """Every process's obj, in rank order, on every process (picklable objects)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()


def init_distributed(device_type: str = "cpu") -> Dist:
    """Join the process group torchrun describes in the environment (once), or a single-process Dist."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch_dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local)
        torch_dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local)


def destroy_distributed() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
