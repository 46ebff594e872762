"""Short runs whose logged numbers are pinned in ``tests/pinned/metrics.json``: refactors must keep them.

``python tests/pinned_runs.py record [CASE ...]`` trains the cases and writes their numbers; the tests in
``tests/test_pinned.py`` train them again and compare. Every numeric field of every ``metrics.jsonl`` record is
pinned except wall-clock ones (``samples_per_s``, ``seconds_*``) and ``bytes_control`` (the broadcast run
directory name is as long as its path). The runs are float64 (the pinned recipe's
``optim.precision='fp64'``), so that their numbers are the same on every CPU and thread count up to float64
rounding: ``bench/pinned_tolerance.py`` measures how far apart they land and sets the tests' tolerance.

``python tests/pinned_runs.py run OUT.json [CASE ...] [--no-onednn] [-- OVERRIDE ...]`` trains the cases in this
process (its thread count and ``ATEN_CPU_CAPABILITY`` from the environment) and writes their records to
``OUT.json`` without touching the pins: what the tolerance bench compares across configurations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
RECIPE = Path(__file__).parent / "pinned" / "recipe.py"  # recipes/mnist_cnn2.py as it was, every default spelled out
PINNED = Path(__file__).parent / "pinned" / "metrics.json"

SMALL = ["data.max_examples=640", "optim.max_steps=8", "output.log_every=1", "output.progress=false", "mapping.budget=256"]
PRETRAINED = "{pretrained}"  # replaced by the path of a seeded CNN2 state_dict (`pretrained_weights`)

# name -> overrides of the pinned recipe (CNN2 SLVT 2,048 around its init, dense operator)
CASES: dict[str, list[str]] = {
    "main": ["optim.max_steps=60", "output.progress=false"],
    "lwt": [*SMALL, "mapping.grouping=lwt"],
    "mean_additive_tanh": [*SMALL, "mapping.offset=mean", "mapping.modulation=additive", "mapping.activation=tanh"],
    "lv_wmap": [*SMALL, "mapping.offset=mean", "mapping.variant=lv-wmap"],
    "loss_terms": [*SMALL, "mapping.grouping=lwt", "mapping.offset=mean", "loss.stability=0.5", "loss.smoothness=0.5", "loss.alignment=0.5"],
    "structured": [*SMALL, "mapping.operator=structured", "optim.lr=0.3"],
    "subspace": [*SMALL, "mapping.method=subspace", "mapping.operator=seeded", "mapping.scale=none"],
    "rpg": [*SMALL, "mapping.method=rpg", "mapping.grouping=lwt", "mapping.budget_power=0.5"],
    "finetune": [*SMALL, "mapping.method=finetune", "mapping.budget=64", "mapping.operator=dense", f"target.weights={PRETRAINED}"],
    "finetune_sparse": [*SMALL, "mapping.method=finetune", "mapping.budget=64", "mapping.operator=sparse", f"target.weights={PRETRAINED}"],
    "lowrank": [*SMALL, "mapping.low_rank=8"],
    "full": [*SMALL[:-1], "mapping.method=full", "optim.lr=1e-3"],  # full training has no budget
    "lora": [*SMALL, "mapping.method=lora", "mapping.rank=1", 'mapping.tuned=["7.*","9.*"]', f"target.weights={PRETRAINED}"],
    "vera": [*SMALL, "mapping.method=vera", "mapping.rank=4", 'mapping.tuned=["7.*","9.*"]', f"target.weights={PRETRAINED}"],
}
# 2 ranks under torchrun (gloo), recorded from the 2-rank run itself
TORCHRUN_CASES: dict[str, list[str]] = {
    "torchrun_slvt": [*SMALL, "optim.max_steps=5", "optim.schedule=constant", "optim.lr=0.01"],
}
VOLATILE = ("samples_per_s", "bytes_control")  # wall clock; the control traffic carries the run directory's path


def pretrained_weights(folder: Path) -> Path:
    """A seeded CNN2 state_dict standing in for pretrained weights."""
    from mapscale.targets import cnn2

    path = folder / "cnn2_pretrained.pt"
    if not path.exists():
        torch.manual_seed(1234)
        torch.set_default_dtype(torch.float64)  # a float64 draw is the same on every CPU (a float32 one is not)
        try:
            torch.save(cnn2().state_dict(), path)
        finally:
            torch.set_default_dtype(torch.float32)
    return path


def case_overrides(name: str, folder: Path) -> list[str]:
    items = CASES.get(name) or TORCHRUN_CASES[name]
    weights = str(pretrained_weights(folder))
    return [item.replace(PRETRAINED, weights) for item in items] + [f"output.root={folder}", f"output.run_name={name}"]


def pinned_records(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl without its wall-clock fields."""
    records = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        records.append({k: v for k, v in record.items() if k not in VOLATILE and not k.startswith("seconds_")})
    return records


def run_case(name: str, folder: Path, extra: list[str] = ()) -> list[dict]:
    from mapscale.recipe import load_recipe
    from mapscale.train import train

    recipe = load_recipe(RECIPE, [*case_overrides(name, folder), *extra])
    run_dir = folder / name
    run_dir.mkdir(parents=True, exist_ok=True)
    train(recipe, run_dir)
    return pinned_records(run_dir)


def run_torchrun_case(name: str, folder: Path, extra: list[str] = ()) -> list[dict]:
    env = {"OMP_NUM_THREADS": "1", **os.environ}  # one thread per rank unless the caller chose
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "mapscale.cli", "train", str(RECIPE), *case_overrides(name, folder), *extra]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    return pinned_records(folder / name)


def record(names: list[str], folder: Path) -> None:
    pinned = json.loads(PINNED.read_text()) if PINNED.exists() else {}
    for name in names:
        pinned[name] = run_torchrun_case(name, folder) if name in TORCHRUN_CASES else run_case(name, folder)
        print(name, pinned[name][-1], flush=True)
    PINNED.parent.mkdir(exist_ok=True)
    PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")


def run(out: Path, names: list[str], extra: list[str], folder: Path) -> None:
    """Train ``names`` with ``extra`` overrides after each case's own and write ``{case: records}`` to ``out``."""
    records = {}
    for name in names:
        records[name] = run_torchrun_case(name, folder, extra) if name in TORCHRUN_CASES else run_case(name, folder, extra)
    out.write_text(json.dumps(records) + "\n")


USAGE = "usage: python tests/pinned_runs.py record [CASE ...] | run OUT.json [CASE ...] [--no-onednn] [-- OVERRIDE ...]"

if __name__ == "__main__":
    import tempfile

    command, args = sys.argv[1:2], sys.argv[2:]
    extra = args[args.index("--") + 1 :] if "--" in args else []
    args = args[: args.index("--")] if "--" in args else args
    if "--no-onednn" in args:  # oneDNN (mkldnn) convolutions off: ATen's own kernels
        torch.backends.mkldnn.enabled = False
        args.remove("--no-onednn")
    with tempfile.TemporaryDirectory() as tmp:
        if command == ["record"] and not extra:
            record(args or [*CASES, *TORCHRUN_CASES], Path(tmp))
        elif command == ["run"] and args:
            run(Path(args[0]), args[1:] or [*CASES, *TORCHRUN_CASES], extra, Path(tmp))
        else:
            sys.exit(USAGE)
