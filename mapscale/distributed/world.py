"""The distributed world as one small object passed explicitly (never read from globals deep inside)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """``rank`` of ``size`` processes, this process's ``device``, and the process ``group`` (None: default)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    group: object | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes run files, checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls, device: str | None = None) -> World:
        """The world a launcher (torchrun, deepspeed) describes in RANK / WORLD_SIZE / LOCAL_RANK, or a single
        process when they are absent. Uses an initialised default process group when there is one."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if dist.is_available() and dist.is_initialized():
            size, rank = dist.get_world_size(), dist.get_rank()
        if not 0 <= rank < size:
            raise ValueError(f"RANK {rank} is outside a world of size {size}")
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        return cls(rank=rank, size=size, local_rank=local_rank, device=torch.device(device))

    @classmethod
    def start(cls, backend: str = "auto", device: str | None = None, timeout_minutes: float = 30.0) -> World:
        """`from_env`, initialising the default process group first when a launcher started several ranks.

        ``backend="auto"``: nccl when this process has a GPU, gloo otherwise. Each rank uses GPU ``LOCAL_RANK``.
        """
        world = cls.from_env(device)
        if world.size > 1 and not dist.is_initialized():
            if world.device.type == "cuda":
                torch.cuda.set_device(world.device)
            chosen = backend if backend != "auto" else ("nccl" if world.device.type == "cuda" else "gloo")
            dist.init_process_group(chosen, timeout=timedelta(minutes=timeout_minutes))
            world = cls.from_env(str(world.device))
        return world

    def stop(self) -> None:
        """Leave the process group (end of a multi-rank run)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    # -- small collectives the trainer needs (no-ops in a single process) ------------------------------------

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (e.g. the run directory it chose)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank (a stop request must be agreed, or the ranks
        that carry on would wait forever in the next collective)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return bool(value.item())

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The SUM over ranks of ``tensor`` (a new tensor on ``tensor``'s device)."""
        if not self.distributed:
            return tensor.clone()
        out = tensor.to(self.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out.to(tensor.device)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.group)
