"""The distributed world as one small object passed explicitly (never read from globals deep inside)."""

from __future__ import annotations

import atexit
import os
import sys
import pickle
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist

from mapscale.distributed.traffic import Traffic


def attempt_store(world_size: int, timeout: timedelta) -> dist.Store | None:
    """Under torchrun's agent store, a client of it whose keys are this attempt's alone; None elsewhere (torch's
    own ``env://`` rendezvous then applies).

    Since torch 2.5 (pytorch/pytorch#128096) torchrun's agent hosts one TCPStore for every attempt of a job, and
    ``init_process_group("env://")`` connects to it (``torch.distributed.rendezvous._create_c10d_store``, "we create
    a new TCPStore for every retry so no need to add prefix for each attempt", which no longer holds) under the
    same prefix (``default_pg``) each time. Workers restarted after a failure (``--max-restarts``) then read the
    first attempt's keys: gloo the dead ranks' addresses ("connectFullMesh failed ... Connection refused"), NCCL
    its unique id (pytorch/pytorch#135712). A prefix per attempt (``TORCHELASTIC_RESTART_COUNT``, which every
    agent of a job advances together when the worker group restarts) keeps each attempt's keys apart, for gloo
    and NCCL alike. An agent that is itself replaced (a new node joining) counts from 0 again: there, start
    torchrun with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, which gives every rendezvous round a store of its own.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timeout)
    prefix = f"mapscale/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return dist.PrefixStore(prefix, client)


@dataclass(frozen=True)
class World:
    """``rank`` of ``size`` processes, this process's ``device``, the process ``group`` (None: default) and the
    `Traffic` its collectives record (every collective mapscale issues counts itself there)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    group: object | None = None
    traffic: Traffic = field(default_factory=Traffic, compare=False, repr=False)

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
            timeout = timedelta(minutes=timeout_minutes)
            store = attempt_store(world.size, timeout)
            if store is None:
                dist.init_process_group(chosen, timeout=timeout)
            else:
                dist.init_process_group(chosen, timeout=timeout, store=store, rank=world.rank, world_size=world.size)
            world = cls.from_env(str(world.device))
        return world

    @property
    def restart(self) -> int:
        """How many times torchrun has restarted this worker group (``TORCHELASTIC_RESTART_COUNT``; 0 elsewhere)."""
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)

    def stop(self) -> None:
        """Leave the process group (end of a multi-rank run)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def exit(self, code: int) -> NoReturn:
        """End this rank's process with ``code``: leave the process group, run the ``atexit`` handlers, flush,
        then ``os._exit`` instead of tearing the interpreter down.

        Interpreter teardown is where gloo aborts a finished run: `destroy_process_group` does not join a
        process group's worker threads while DeepSpeed (or anyone) still holds the group, and a worker that
        drops the last reference to a collective's tensor during ``Py_FinalizeEx`` needs the GIL, so its
        thread exits inside a C++ destructor and ``std::terminate`` kills the rank with SIGABRT ("terminate
        called without an active exception"; the launcher then reports a failure after a complete run). The
        core dump of such a rank shows it: ``c10d::ProcessGroupGloo::runLoop`` -> ``~AsyncAllreduceWork`` ->
        ``decref_pyobject`` -> ``PyThread_exit_thread``, beside the main thread in ``Py_FinalizeEx``. Same
        bug: pytorch/pytorch#190489. Everything a run writes is closed before this point.
        """
        self.stop()
        atexit._run_exitfuncs()  # what interpreter teardown would have run (logging, DeepSpeed, torch)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)

    # -- small collectives the trainer needs (no-ops in a single process) ------------------------------------

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (e.g. the run directory it chose)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        self.traffic.add("broadcast", len(pickle.dumps(box[0])), self.size, control=True)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank (a stop request must be agreed, or the ranks
        that carry on would wait forever in the next collective)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        self.traffic.add("all_reduce", value.numel() * value.element_size(), self.size, control=True)
        return bool(value.item())

    def sum(self, tensor: torch.Tensor, *, control: bool = False) -> torch.Tensor:
        """The SUM over ranks of ``tensor`` (a new tensor on ``tensor``'s device); ``control``: a sum that steers the
        run (logged means, evaluation counts) rather than trains it, counted apart."""
        if not self.distributed:
            return tensor.clone()
        out = tensor.to(self.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        self.traffic.add("all_reduce", out.numel() * out.element_size(), self.size, control=control)
        return out.to(tensor.device)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.group)
