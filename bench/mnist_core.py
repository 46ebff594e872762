"""Full training vs mapped training of one CNN on the shipped MNIST subset, measured side by side.

    python bench/mnist_core.py                 # ~2 minutes on 2 CPU cores
    python bench/mnist_core.py --epochs 30     # longer runs

Every row trains the same target (the 14,410-parameter `small_mnist_cnn`, same init seed) on the same
4,000 / 1,000 split with Adam and a one-cycle schedule, and reports trainable parameters, the reduction
factor, train and test accuracy, the train-test gap and time per epoch relative to full training.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

import mapscale
from mapscale.data import Split, shipped_mnist
from mapscale.targets import small_mnist_cnn

# name -> (lr, map_model options or None for full training)
ROWS: dict[str, tuple[float, dict | None]] = {
    "full training": (1e-3, None),
    "SLVT multiplicative": (5e-2, {"grouping": "slvt"}),
    "SLVT multiplicative, theta0 offset": (5e-2, {"grouping": "slvt", "offset": "init"}),
    "LWT multiplicative": (5e-2, {"grouping": "lwt"}),
    "SLVT no modulation (WM)": (5e-2, {"grouping": "slvt", "modulation": "none"}),
    "SLVT additive alpha=0.1 (eq. 20)": (5e-2, {"grouping": "slvt", "modulation": "additive", "modulation_scale": 0.1}),
    "SLVT additive alpha=1e-4": (5e-2, {"grouping": "slvt", "modulation": "additive", "modulation_scale": 1e-4}),
}


def accuracy(model, split: Split) -> float:
    model.eval()
    with torch.no_grad():
        return (model(split.inputs).argmax(1) == split.targets).float().mean().item()


def train(model, train_split: Split, epochs: int, lr: float, batch: int, seed: int) -> float:
    """Train ``model``; return seconds per epoch."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    steps = epochs * -(-len(train_split) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(train_split), generator=order).split(batch):
            loss = F.cross_entropy(model(train_split.inputs[idx]), train_split.targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help=f"subset of {list(ROWS)}")
    args = parser.parse_args()
    console = Console(width=150)
    train_split, test_split = shipped_mnist(test_size=1000, seed=0)
    console.print(f"shipped MNIST: {len(train_split)} train / {len(test_split)} test, {args.epochs} epochs, torch threads {torch.get_num_threads()}")

    table = Table(title=f"small_mnist_cnn on shipped MNIST, budget {args.budget}, {args.epochs} epochs, seed {args.seed}")
    for column in ["method", "trainable", "reduction", "train acc", "test acc", "gap", "s/epoch", "time vs full"]:
        table.add_column(column, justify="left" if column == "method" else "right")
    full_epoch = None
    for name in args.rows:
        lr, options = ROWS[name]
        torch.manual_seed(args.seed)
        model = small_mnist_cnn()
        total = sum(p.numel() for p in model.parameters())
        if options is not None:
            model = mapscale.map_model(model, budget=args.budget, seed=args.seed, **options)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        epoch_s = train(model, train_split, args.epochs, lr, args.batch, args.seed)
        full_epoch = epoch_s if options is None else full_epoch
        train_acc, test_acc = accuracy(model, train_split), accuracy(model, test_split)
        ratio = f"{epoch_s / full_epoch:.2f}x" if full_epoch else "-"
        console.print(f"{name}: test {test_acc:.4f} train {train_acc:.4f} ({epoch_s:.2f} s/epoch)")
        table.add_row(
            name, f"{trainable:,}", f"{total / trainable:.0f}x", f"{train_acc:.2%}", f"{test_acc:.2%}",
            f"{(train_acc - test_acc) * 100:+.2f}", f"{epoch_s:.2f}", ratio,
        )
    console.print(table)


if __name__ == "__main__":
    main()
