"""Full training vs mapped training of one CNN on the shipped MNIST subset, measured side by side.

    python bench/mnist_core.py                 # ~2 minutes on 2 CPU cores
    python bench/mnist_core.py --epochs 30     # longer runs

Every row is an ordinary run of the mapscale trainer (`mapscale.train.train`) on a recipe built here: the same
target (the 14,410-parameter `small_mnist_cnn`, same init seed) on the same 4,000 / 1,000 split of the shipped
MNIST subset, Adam with a one-cycle schedule, batch 64, the trainer's seeded data order. It reports trainable
parameters, the reduction factor, train and test accuracy of the final model (the trainer's last evaluations),
the train-test gap and time per epoch relative to full training. Time per epoch is the median training step
time (from the throughput the trainer logs at every step, so evaluations and checkpoints are left out) times
the steps per epoch. Run directories go under ``--runs`` (default: a temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mapscale.recipe import DataSection, FullMethod, MappingMethod, OptimSection, OutputSection, Recipe, TargetSection  # noqa: E402
from mapscale.train import read_records, train, write_run_files  # noqa: E402

# name -> (lr, MappingMethod options or None for full training)
ROWS: dict[str, tuple[float, dict | None]] = {
    "full training": (1e-3, None),
    "SLVT multiplicative": (5e-2, {"grouping": "slvt"}),
    "SLVT multiplicative, theta0 offset": (5e-2, {"grouping": "slvt", "offset": "init"}),
    "LWT multiplicative": (5e-2, {"grouping": "lwt"}),
    "SLVT no modulation (WM)": (5e-2, {"grouping": "slvt", "modulation": "none"}),
    "SLVT additive alpha=0.1 (eq. 20)": (5e-2, {"grouping": "slvt", "modulation": "additive", "modulation_scale": 0.1}),
    "SLVT additive alpha=1e-4": (5e-2, {"grouping": "slvt", "modulation": "additive", "modulation_scale": 1e-4}),
}


def recipe_for(name: str, args, runs: Path) -> Recipe:
    """The row's recipe: ``small_mnist_cnn`` on the shipped MNIST 4,000 / 1,000 split, fully trained or mapped."""
    lr, options = ROWS[name]
    method = FullMethod() if options is None else MappingMethod(budget=args.budget, seed=args.seed, **options)
    return Recipe(
        name=name, seed=args.seed, target=TargetSection(name="small_mnist_cnn"), mapping=method,
        data=DataSection(name="shipped_mnist", test_size=1000, split_seed=0),
        optim=OptimSection(optimizer="adam", lr=lr, schedule="onecycle", warmup_fraction=0.15, epochs=args.epochs, batch_size=args.batch),
        output=OutputSection(root=runs, run_name=name.replace(" ", "_"), log_every=1, progress=False),
    )


def seconds_per_epoch(run_dir: Path, batch: int, steps_per_epoch: int) -> float:
    """Median training step time, from the throughput logged at every step, times the steps per epoch."""
    rates = [r["samples_per_s"] for r in read_records(run_dir) if r["split"] == "train"]
    return batch / statistics.median(rates) * steps_per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help=f"subset of {list(ROWS)}")
    parser.add_argument("--runs", type=Path, default=None, help="keep the run directories here (default: a temporary folder)")
    args = parser.parse_args()
    console = Console(width=150)
    console.print(f"shipped MNIST: 4000 train / 1000 test, {args.epochs} epochs, torch threads {torch.get_num_threads()}")

    table = Table(title=f"small_mnist_cnn on shipped MNIST, budget {args.budget}, {args.epochs} epochs, seed {args.seed}")
    for column in ["method", "trainable", "reduction", "train acc", "test acc", "gap", "s/epoch", "time vs full"]:
        table.add_column(column, justify="left" if column == "method" else "right")
    full_epoch = None
    with tempfile.TemporaryDirectory(prefix="mnist_core-") as scratch:
        runs = args.runs or Path(scratch)
        for name in args.rows:
            recipe = recipe_for(name, args, runs)
            run_dir = runs / recipe.output.run_name
            write_run_files(run_dir, recipe, None, [])
            result = train(recipe, run_dir, device="cpu", console=Console(quiet=True))
            epoch_s = seconds_per_epoch(run_dir, args.batch, result.total_steps // args.epochs)
            full_epoch = epoch_s if ROWS[name][1] is None else full_epoch
            train_acc, test_acc = result.final_train["accuracy"], result.final["accuracy"]
            ratio = f"{epoch_s / full_epoch:.2f}x" if full_epoch else "-"
            console.print(f"{name}: test {test_acc:.4f} train {train_acc:.4f} ({epoch_s:.2f} s/epoch)")
            table.add_row(
                name, f"{result.trainable:,}", f"{result.target_params / result.trainable:.0f}x", f"{train_acc:.2%}", f"{test_acc:.2%}",
                f"{(train_acc - test_acc) * 100:+.2f}", f"{epoch_s:.2f}", ratio,
            )
    console.print(table)


if __name__ == "__main__":
    main()
