"""The distributed world as one small object passed explicitly (never read from globals deep inside)."""

from __future__ import annotations

import os
from dataclasses import dataclass

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
