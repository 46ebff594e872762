"""Mapping Loss ablation and cost: task loss only vs the full Mapping Loss, side by side in one run.

    python bench/mapping_loss.py                      # SLVT 2048 on shipped MNIST, 6 epochs (~2 minutes)
    python bench/mapping_loss.py --grouping lwt --epochs 15
    python bench/mapping_loss.py --quick              # a few steps, to check it runs (used by the tests)

Both arms are runs of the mapscale trainer (`mapscale.train.train`) on recipes that differ only in their
``loss`` section: the same mapped ``small_mnist_cnn`` (same init seed, mapping seed, budget), the same
4,000 / 1,000 split and the trainer's seeded data order; the task-only arm has every extra term switched off,
the full arm every term on at `MappingLoss`'s defaults (λ 0.5, learned in [1e-4, 1]). Per epoch it prints each
term's mean value, coefficient and forward time, from the records the trainer logs at every step
(``loss.time_terms``); at the end, test/train accuracy (the trainer's last evaluations) and the step-time
ratio, measured in a separate phase that interleaves the arms' steps (the library's `train_step`) on one batch
(median of ``--timing-steps``). Run directories go under ``--runs`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mapscale.distributed.world import World  # noqa: E402
from mapscale.recipe import DataSection, LossSection, MappingMethod, OptimSection, OutputSection, Recipe, TargetSection  # noqa: E402
from mapscale.train import prepare, read_records, train, train_step, write_run_files  # noqa: E402

OFF = {"stability": None, "smoothness": None, "alignment": None}
FULL = {"stability": 0.5, "smoothness": 0.5, "alignment": 0.5}  # MappingLoss's defaults: every term, learned λ in [1e-4, 1]
# arm name -> loss section options; the default run compares the first two.
ARMS = {
    "task only": OFF,
    "full Mapping Loss": FULL,
    "stability only": {**OFF, "stability": 1.0},
    "smoothness only": {**OFF, "smoothness": 1.0},
    "alignment only": {**OFF, "alignment": 1.0},
    "full, fixed λ": {"coefficients": "fixed", "stability": 1.0, "smoothness": 1e-3, "alignment": 1e-2},
    "full, learned λ <= 1e4": {"coefficient_bounds": (1e-4, 1e4), "stability": 1.0, "smoothness": 1.0, "alignment": 1.0},
}
QUICK_STEPS = 5  # --quick: steps per arm


def recipe_for(name: str, args, runs: Path) -> Recipe:
    """The arm's recipe: the same mapped target, data and optimiser for every arm; only the loss differs."""
    return Recipe(
        name=name, seed=args.seed, target=TargetSection(name="small_mnist_cnn"),
        mapping=MappingMethod(grouping=args.grouping, budget=args.budget, seed=args.seed, offset="mean"),  # alignment needs a non-zero start
        loss=LossSection(**ARMS[name], time_terms=True),
        data=DataSection(name="shipped_mnist", test_size=1000, split_seed=0),
        optim=OptimSection(optimizer="adam", lr=args.lr, schedule="onecycle", warmup_fraction=0.15, epochs=args.epochs,
                           batch_size=args.batch, max_steps=QUICK_STEPS if args.quick else None),
        output=OutputSection(root=runs, run_name=name.replace(" ", "_"), log_every=1, progress=False),
    )


def epoch_summary(records: list[dict], epoch: int) -> str:
    """Each logged term's mean over the epoch's steps: each term's value and forward seconds, then the
    coefficients (λ)."""
    steps = [r for r in records if r["split"] == "train" and r["epoch"] == epoch]
    terms = [k.removeprefix("seconds_") for k in steps[0] if k.startswith("seconds_")]  # "task" and each switched-on term
    keys = {term: term for term in terms}
    for term in terms:
        keys[f"{term} s"] = f"seconds_{term}"
    keys.update({f"λ {term}": f"lambda_{term}" for term in terms if f"lambda_{term}" in steps[0]})
    order = [*(k for term in terms for k in (term, f"{term} s")), *(k for k in keys if k.startswith("λ "))]
    return "  ".join(f"{k}={sum(r[keys[k]] for r in steps) / len(steps):.4g}" for k in order)


def run_arm(name: str, args, runs: Path, console: Console) -> dict:
    recipe = recipe_for(name, args, runs)
    run_dir = runs / recipe.output.run_name
    write_run_files(run_dir, recipe, None, [])
    world = World()
    run = prepare(recipe, world, "cpu")
    result = train(recipe, run_dir, device="cpu", console=Console(quiet=True), world=world, prepared=run)
    records = read_records(run_dir)
    epochs = sorted({r["epoch"] for r in records if r["split"] == "train"})
    for epoch in epochs:
        console.print(f"[{name}] epoch {epoch + 1}/{len(epochs)}: {epoch_summary(records, epoch)}", markup=False, soft_wrap=True)
    return {"test": result.final["accuracy"], "train": result.final_train["accuracy"], "trainable": run.model.num_trainable()}


def time_arms(names: list[str], args, runs: Path, steps: int) -> dict[str, float]:
    """Median seconds per training step (`train_step`) of each arm, steps interleaved arm by arm on the same
    batch, so that load or clock drift on the machine hits every arm alike."""
    world = World()
    built = {name: prepare(recipe_for(name, args, runs), world, "cpu") for name in names}
    data = next(iter(built.values())).data.train.tensors
    inputs, targets = data[0][: args.batch], data[1][: args.batch]
    seconds = defaultdict(list)
    for step in range(steps):
        for name, run in built.items():
            start = time.perf_counter()
            train_step(run, [(inputs, targets)], len(targets), step)
            seconds[name].append(time.perf_counter() - start)
    return {name: sorted(values)[len(values) // 2] for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grouping", default="slvt")
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", default=list(ARMS)[:2], choices=list(ARMS), help="arms to run; the first is the baseline")
    parser.add_argument("--timing-steps", type=int, default=40, help="interleaved steps per arm for the step-time ratio")
    parser.add_argument("--quick", action="store_true", help=f"1 epoch of {QUICK_STEPS} steps per arm")
    parser.add_argument("--runs", type=Path, default=None, help="keep the run directories here (default: a temporary folder)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.timing_steps = 1, 3
    console = Console(width=200)
    console.print(f"shipped MNIST 4000/1000, small_mnist_cnn, {args.grouping} budget {args.budget}, "
                  f"{args.epochs} epochs, lr {args.lr}, seed {args.seed}, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="mapping_loss-") as scratch:
        runs = args.runs or Path(scratch)
        results = {name: run_arm(name, args, runs, console) for name in args.arms}
        for name, seconds in time_arms(args.arms, args, runs, args.timing_steps).items():
            results[name]["step"] = seconds

    table = Table(title="Mapping Loss ablation")
    for column in ["loss", "trainable", "train acc", "test acc", "gap", "median step ms (interleaved)", f"step time vs {args.arms[0]}"]:
        table.add_column(column, justify="left" if column == "loss" else "right")
    base = results[args.arms[0]]["step"]
    for name, r in results.items():
        table.add_row(name, f"{r['trainable']:,}", f"{r['train']:.2%}", f"{r['test']:.2%}",
                      f"{(r['train'] - r['test']) * 100:+.2f}", f"{r['step'] * 1e3:.1f}", f"{r['step'] / base:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
