"""Sharding wraps every method from outside: on 2 ranks (torchrun, gloo, 2 local processes) each method trains
like one process on the same global batch, and each rank of a generating method holds about half its fixed
state. ``python tests/test_methods_distributed.py`` prints the table (bytes per rank, loss differences)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mapscale.recipe import load_recipe
from mapscale.targets import cnn2
from mapscale.train import build_model, train
from tolerance import assert_close

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "mnist_cnn2.py"
STEPS = 5
COMMON = [
    "data.max_examples=640", f"optim.max_steps={STEPS}", "optim.batch_size=64", "output.log_every=1", "output.progress=false",
    "optim.schedule=constant", "optim.lr=0.01", "optim.grad_clip=1.0", "distributed.generation=sharded",
]  # sharded generation: each rank holds half the fixed state (local generation: tests/test_local_generation.py)
PRETRAINED = ['mapping.tuned=["7.*","9.*"]']
CASES = {
    "mapping": ["mapping.budget=256"],
    "subspace": ["mapping.method=subspace", "mapping.budget=256"],
    "rpg": ["mapping.method=rpg", "mapping.budget=256", "mapping.grouping=lwt"],
    # dense: its (64 x E) mapping is what shards; the sparse default's fixed state is its per-group tables, whole on
    # every rank (the elements start at 0 around nothing, offset="zero"), so finetune_sparse checks the losses only
    "finetune": ["mapping.method=finetune", "mapping.budget=64", "mapping.operator=dense", *PRETRAINED],
    "finetune_sparse": ["mapping.method=finetune", "mapping.budget=64", "mapping.operator=sparse", *PRETRAINED],
    # dense: the factors are small, so the sparse operator's per-group tables (whole on every rank) would dominate
    # what splits; the mapping case covers the sparse operator on 2 ranks
    "lowrank": ["mapping.budget=256", "mapping.low_rank=8", "mapping.operator=dense"],
    "full": ["mapping.method=full", "optim.lr=1e-3"],  # nothing generated: the ranks only average gradients
    "lora": ["mapping.method=lora", "mapping.rank=1", *PRETRAINED],
}
GENERATING = ("mapping", "subspace", "rpg", "finetune", "lowrank")


def case_overrides(case: str, folder: Path, name: str) -> list[str]:
    weights = folder / "pretrained.pt"
    if not weights.exists():
        torch.manual_seed(11)
        torch.save(cnn2().state_dict(), weights)
    return [*COMMON, *CASES[case], f"target.weights={weights}", f"output.root={folder}", f"output.run_name={name}"]


def train_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["task"] for r in records if r["split"] == "train"]


def torchrun(argv: list[str]) -> None:
    env = {"OMP_NUM_THREADS": "1", **os.environ}  # one thread per rank unless the caller chose
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def fixed_bytes_on_rank(rank, world_size, overrides):
    from mapscale.distributed import World

    return build_model(load_recipe(RECIPE, overrides), "cpu", World.from_env()).fixed_bytes()


def measure(case: str, folder: Path) -> dict:
    """One process and 2 ranks: their losses and each one's fixed-state bytes."""
    from distributed_helpers import run_ranks

    single = case_overrides(case, folder, "single")
    (folder / "single").mkdir(parents=True, exist_ok=True)
    train(load_recipe(RECIPE, single), folder / "single")
    torchrun(["-m", "mapscale.cli", "train", str(RECIPE), *case_overrides(case, folder, "two")])
    return {
        "losses": train_losses(folder / "single"),
        "losses_two_ranks": train_losses(folder / "two"),
        "bytes": build_model(load_recipe(RECIPE, single)).fixed_bytes(),
        "bytes_per_rank": run_ranks(fixed_bytes_on_rank, 2, single),
    }


@pytest.mark.distributed
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_train_like_one_process_holding_half_the_fixed_state(case, tmp_path):
    result = measure(case, tmp_path)
    losses, two = result["losses"], result["losses_two_ranks"]
    assert len(losses) == len(two) == STEPS and len(set(losses)) == STEPS  # the run moves
    assert_close(two, losses, rtol=1e-5, what="losses")
    if case in GENERATING:
        assert result["bytes"] > 0
        assert max(result["bytes_per_rank"]) <= 0.55 * result["bytes"], result
    else:  # nothing to shard: every rank holds what one process holds
        assert result["bytes_per_rank"] == [result["bytes"]] * 2


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    print("| method | fixed state, 1 process (B) | rank 0 (B) | rank 1 (B) | heaviest / 1 process | max rel. loss difference, 5 steps |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(case, Path(tmp))
        worst = max(abs(a - b) / abs(b) for a, b in zip(r["losses_two_ranks"], r["losses"]))
        ratio = max(r["bytes_per_rank"]) / r["bytes"] if r["bytes"] else float("nan")
        print(f"| {case} | {r['bytes']:,} | {r['bytes_per_rank'][0]:,} | {r['bytes_per_rank'][1]:,} | {ratio:.3f} | {worst:.1e} |", flush=True)
