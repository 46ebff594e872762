"""Run a function on N local processes with the gloo backend (CPU), and collect what each returns."""

from __future__ import annotations

import os
import socket

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn, args, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results[rank] = fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world_size: int = 2, *args) -> list:
    """``[fn(rank, world_size, *args) for each rank]``, each in its own process; ``fn`` must be importable."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(world_size, _free_port(), fn, args, results), nprocs=world_size, join=True)
        return [results[r] for r in range(world_size)]
