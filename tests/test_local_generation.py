"""distributed.generation (issue 27): under ``local`` every rank holds the whole fixed state and generates every
weight, and the all-reduce of the trainable gradients is the step's only communication; ``auto`` picks local where
the fixed state fits; checkpoints resume across modes and rank counts; the traffic counter reads exactly what
the modes' formulas say. Runs in float64, compared at the pinned tier's tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_pinned import REL_TOL
from tolerance import assert_close

from mapscale.distributed import ShardPlan, World
from mapscale.recipe import load_recipe
from mapscale.train import build_model, train
from mapscale.train.build import resolve_generation

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "mnist_cnn2.py"
STEPS = 5
COMMON = [
    "data.max_examples=640", f"optim.max_steps={STEPS}", "optim.batch_size=64", "output.log_every=1", "output.progress=false",
    "optim.schedule=constant", "optim.lr=0.01", "optim.precision=fp64",
]
PRETRAINED = ['mapping.tuned=["7.*","9.*"]']
GENERATING = {
    "mapping": ["mapping.budget=256"],
    "subspace": ["mapping.method=subspace", "mapping.budget=256"],
    "rpg": ["mapping.method=rpg", "mapping.budget=256", "mapping.grouping=lwt"],
    "finetune": ["mapping.method=finetune", "mapping.budget=64", *PRETRAINED],
    "seeded": ["mapping.budget=256", "mapping.offset=seeded"],  # theta_0 redrawn from the seed: no target.weights
}


def overrides(case: str, folder: Path, name: str, *extra: str) -> list[str]:
    weights = folder / "pretrained.pt"
    if not weights.exists():
        torch.manual_seed(11)
        from mapscale.targets import cnn2

        torch.save(cnn2().state_dict(), weights)
    pretrained = [] if case == "seeded" else [f"target.weights={weights}"]
    return [*COMMON, *GENERATING[case], *pretrained, f"output.root={folder}", f"output.run_name={name}", *extra]


def torchrun(*argv: str) -> str:
    env = {"OMP_NUM_THREADS": "1", **{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "mapscale.cli", "train", *argv],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def train_losses(run_dir: Path) -> list[float]:
    return [r["task"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


@pytest.mark.distributed
@pytest.mark.parametrize("case", list(GENERATING))
def test_local_generation_on_two_ranks_trains_like_one_process_and_like_sharded(case, tmp_path):
    recipe = load_recipe(RECIPE, overrides(case, tmp_path, "single"))
    (tmp_path / "single").mkdir()
    train(recipe, tmp_path / "single")
    for mode in ("local", "sharded"):
        torchrun(str(RECIPE), *overrides(case, tmp_path, mode, f"distributed.generation={mode}"))
    expected = train_losses(tmp_path / "single")
    assert len(expected) == STEPS and len(set(expected)) == STEPS
    for mode in ("local", "sharded"):
        assert_close(train_losses(tmp_path / mode), expected, rtol=REL_TOL, what=f"losses under {mode}")

    # The counter: local moves the all-reduce of the trainable gradients and nothing else (float64: 8 bytes a
    # value; 2 ranks: a ring factor 2 (N - 1) / N = 1); sharded adds each unit's all-gather and reduce-scatter.
    local, sharded = result(tmp_path / "local"), result(tmp_path / "sharded")
    assert local["generation"]["mode"] == "local" and sharded["generation"]["mode"] == "sharded"
    trainable = local["trainable"]
    assert local["traffic"]["steps"] == STEPS and local["traffic"]["counted"]
    assert local["traffic"]["all_reduce"] == trainable * 8 * 1.0 and local["traffic"]["all_gather"] == local["traffic"]["reduce_scatter"] == 0
    plan = ShardPlan.from_layout(build_model(load_recipe(RECIPE, overrides(case, tmp_path, "x")), "meta").layout, 2)
    expected_bytes = plan.step_bytes(trainable, 8, sharded=True)
    assert {k: sharded["traffic"][k] for k in expected_bytes} == expected_bytes
    assert expected_bytes["all_gather"] > 100 * expected_bytes["all_reduce"]  # what local generation saves
    logged = [r for r in map(json.loads, (tmp_path / "local" / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert all(r["bytes_all_reduce"] == trainable * 8 and r["bytes_all_gather"] == 0 for r in logged)


@pytest.mark.distributed
def test_a_checkpoint_resumes_across_modes_and_rank_counts(tmp_path):
    """2 steps sharded on 2 ranks, 2 more local on 2 ranks (`--resume distributed.generation=local`), the last one
    in one process: the losses of one uninterrupted process."""
    recipe = load_recipe(RECIPE, overrides("mapping", tmp_path, "single"))
    (tmp_path / "single").mkdir()
    train(recipe, tmp_path / "single")
    torchrun(str(RECIPE), *overrides("mapping", tmp_path, "moved", "distributed.generation=sharded"), "--stop-after", "2")
    out = torchrun(str(tmp_path / "moved"), "--resume", "distributed.generation=local", "--stop-after", "2")
    assert "generation: local" in out and "at step 2/5" in " ".join(out.split())
    train(load_recipe(tmp_path / "moved"), tmp_path / "moved", resume=True)
    assert_close(train_losses(tmp_path / "moved"), train_losses(tmp_path / "single"), rtol=REL_TOL, what="losses across modes")


def test_auto_picks_local_where_the_fixed_state_fits_and_sharded_where_it_does_not():
    two = World(size=2)
    sparse = load_recipe(RECIPE)
    picked = resolve_generation(sparse, two, torch.device("cpu"))
    assert picked.mode == "local" and "fit 25% of a rank's" in picked.reason and 0 < picked.fixed_bytes < 2**20
    # ResNet50 SLVT 2,048 with a stored dense mapping: 2,048 x 25.6M floats (195 GiB), on any machine of today
    dense = load_recipe(RECIPE, ["target.name=torchvision:resnet50", "mapping.operator=dense", "data.channels=3"])
    picked = resolve_generation(dense, two, torch.device("cpu"))
    assert picked.mode == "sharded" and "exceed 25% of a rank's" in picked.reason and picked.fixed_bytes > 190 * 2**30
    assert resolve_generation(dense, World(), torch.device("cpu")).mode == "local"  # one process: nothing to share
    assert resolve_generation(load_recipe(RECIPE, ["mapping.method=full"]), two, torch.device("cpu")).reason.endswith("plain data parallel")
    with pytest.raises(ValueError, match=r"distributed.generation='local' holds .* GiB of fixed state .* use distributed.generation='sharded'"):
        resolve_generation(load_recipe(RECIPE, ["target.name=torchvision:resnet50", "mapping.operator=dense", "data.channels=3", "distributed.generation=local"]), two, torch.device("cpu"))


def local_per_unit_step_on_rank(rank, world_size, overrides_):
    """One forward and backward of a local per-unit model on this rank's half of a batch: the peak bytes of
    generated unit tensors alive at once, and what the rank's counter saw."""
    from mapscale.distributed.sharded import track_gathered_units

    world = World.from_env()
    model = build_model(load_recipe(RECIPE, overrides_), "cpu", world)
    inputs = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)[rank::world_size]
    with track_gathered_units() as generated:
        torch.nn.functional.cross_entropy(model(inputs), (torch.arange(8) % 10)[rank::world_size]).backward()
    return generated.peak, dict(world.traffic.total), model.fixed_bytes()


@pytest.mark.distributed
def test_local_per_unit_generation_holds_one_unit_at_a_time_and_moves_nothing(tmp_path):
    from distributed_helpers import run_ranks

    units = ["0", "3", "7", "9"]  # CNN2's modules owning parameters: 160, 4,640, 102,528 and 1,290 of them
    extra = ["distributed.generation=local", "distributed.gather=per-unit", f"distributed.units={json.dumps(units)}"]
    results = run_ranks(local_per_unit_step_on_rank, 2, overrides("mapping", tmp_path, "x", *extra))
    whole = build_model(load_recipe(RECIPE, overrides("mapping", tmp_path, "x")), "cpu").fixed_bytes()
    for peak, traffic, fixed in results:
        assert peak == 102_528 * 8  # the largest unit, float64: never two units at once
        assert traffic["all_gather"] == traffic["reduce_scatter"] == 0  # (the gradient all-reduce is the trainer's)
        assert fixed == whole  # every rank holds the whole fixed state
