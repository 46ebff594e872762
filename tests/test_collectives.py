"""Collective autograd on 2 gloo processes against a single-process reference."""

import warnings

import torch
from distributed_helpers import run_ranks
from tolerance import assert_close

from mapscale.distributed.collectives import gather_rows
import pytest

pytestmark = pytest.mark.distributed  # several local processes (gloo): `pytest -m distributed`

CHUNK = 5


def full_rows() -> torch.Tensor:
    return torch.arange(2 * CHUNK * 3, dtype=torch.float32).reshape(2 * CHUNK, 3) / 7


def rank_weights(rank: int) -> torch.Tensor:
    return torch.randn(2 * CHUNK, 3, generator=torch.Generator().manual_seed(100 + rank))


def gather_and_backward(rank: int, world_size: int):
    local = full_rows()[rank * CHUNK : (rank + 1) * CHUNK].clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecation warning on every call
        gathered = gather_rows(local)
        (gathered * rank_weights(rank)).sum().backward()  # each rank's own loss on all rows
    return gathered.detach(), local.grad


def test_gather_forward_is_the_concatenation_and_backward_sums_every_ranks_gradient():
    results = run_ranks(gather_and_backward, 2)
    for rank, (gathered, grad) in enumerate(results):
        assert torch.equal(gathered, full_rows())
        # The summed loss over ranks: d/d(row) = sum of every rank's weight on that row.
        expected = (rank_weights(0) + rank_weights(1))[rank * CHUNK : (rank + 1) * CHUNK]
        assert_close(grad, expected, rtol=0, atol=1e-6, what="gradient")


def world_of(rank: int, world_size: int):
    from mapscale.distributed.world import World

    world = World.from_env()
    return world.rank, world.size, world.is_main, world.distributed


def test_world_from_env_single_and_two_ranks(monkeypatch):
    from mapscale.distributed.world import World

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    single = World.from_env()
    assert (single.rank, single.size, single.is_main, single.distributed) == (0, 1, True, False)
    assert run_ranks(world_of, 2) == [(0, 2, True, True), (1, 2, False, True)]


def test_world_exit_runs_atexit_handlers_flushes_and_returns_the_code():
    """`World.exit` skips interpreter teardown (where gloo's worker threads abort a finished rank), so it must
    do what teardown would have: run the atexit handlers and flush what is buffered."""
    import subprocess
    import sys

    script = (
        "import atexit, sys\n"
        "from mapscale.distributed.world import World\n"
        "atexit.register(lambda: print('atexit ran'))  # left in the buffer: World.exit flushes it\n"
        "sys.stdout.write('buffered, no newline')\n"
        "World().exit(3)\n"
        "print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "buffered, no newline" in done.stdout and "atexit ran" in done.stdout
    assert "not reached" not in done.stdout
