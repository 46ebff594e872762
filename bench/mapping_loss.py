"""Mapping Loss ablation and cost: task loss only vs the full Mapping Loss, side by side in one run.

    python bench/mapping_loss.py                      # SLVT 2048 on shipped MNIST, 6 epochs (~2 minutes)
    python bench/mapping_loss.py --grouping lwt --epochs 15
    python bench/mapping_loss.py --quick              # a few steps, to check it runs (used by the tests)

Both arms train the same mapped target (same init seed, mapping seed, budget, data order) through
`MappingLoss`, the task-only arm with every extra term switched off. Per epoch it logs every term's mean
value, coefficient and forward time; at the end, test/train accuracy and the step-time ratio, measured
in a separate phase that interleaves the arms' steps on one batch (median of ``--timing-steps``).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

import mapscale
from mapscale.data import shipped_mnist
from mapscale.loss import MappingLoss
from mapscale.targets import small_mnist_cnn

OFF = {"stability": None, "smoothness": None, "alignment": None}
# arm name -> MappingLoss options; the default run compares the first two.
ARMS = {
    "task only": OFF,
    "full Mapping Loss": {},  # MappingLoss defaults: every term, learned λ in [1e-4, 1]
    "stability only": {**OFF, "stability": 1.0},
    "smoothness only": {**OFF, "smoothness": 1.0},
    "alignment only": {**OFF, "alignment": 1.0},
    "full, fixed λ": {"coefficients": "fixed", "stability": 1.0, "smoothness": 1e-3, "alignment": 1e-2},
    "full, learned λ <= 1e4": {"coefficient_bounds": (1e-4, 1e4), "stability": 1.0, "smoothness": 1.0, "alignment": 1.0},
}


def accuracy(model, split) -> float:
    model.eval()
    with torch.no_grad(), model.cached_weights():
        return (model(split.inputs).argmax(1) == split.targets).float().mean().item()


def build(terms: dict, args, total_steps: int):
    """The mapped target (same init and mapping seed for every arm), its loss, optimiser and schedule."""
    torch.manual_seed(args.seed)
    model = mapscale.map_model(small_mnist_cnn(), args.grouping, args.budget, seed=args.seed)
    loss_fn = MappingLoss(F.cross_entropy, seed=args.seed, **terms)
    params = [p for p in [*model.parameters(), *loss_fn.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps, pct_start=0.15)
    return model, loss_fn, optimizer, schedule


def step(model, loss_fn, optimizer, schedule, inputs, targets):
    out = loss_fn(model, inputs, targets)
    optimizer.zero_grad()
    out.total.backward()
    optimizer.step()
    schedule.step()
    return out


def run_arm(name: str, terms: dict, args, train, test, console: Console) -> dict:
    steps_per_epoch = -(-len(train) // args.batch) if not args.quick else 5
    model, loss_fn, optimizer, schedule = build(terms, args, args.epochs * steps_per_epoch)
    order = torch.Generator().manual_seed(args.seed + 1)
    for epoch in range(args.epochs):
        model.train()
        logs = defaultdict(list)
        for idx in list(torch.randperm(len(train), generator=order).split(args.batch))[:steps_per_epoch]:
            out = step(model, loss_fn, optimizer, schedule, train.inputs[idx], train.targets[idx])
            for term, value in out.values.items():
                logs[term].append(value.item())
                logs[f"{term} s"].append(out.seconds[term])
            for term, value in out.coefficients.items():
                logs[f"λ {term}"].append(value.item())
        summary = "  ".join(f"{k}={sum(v) / len(v):.4g}" for k, v in logs.items())
        console.print(f"[{name}] epoch {epoch + 1}/{args.epochs}: {summary}", markup=False)
    return {"test": accuracy(model, test), "train": accuracy(model, train), "trainable": model.num_trainable()}


def time_arms(names: list[str], args, train, steps: int) -> dict[str, float]:
    """Median seconds per training step of each arm, steps interleaved arm by arm on the same batch, so
    that load or clock drift on the machine hits every arm alike."""
    built = {name: build(ARMS[name], args, steps + 1) for name in names}
    inputs, targets = train.inputs[: args.batch], train.targets[: args.batch]
    seconds = defaultdict(list)
    for _ in range(steps):
        for name, (model, loss_fn, optimizer, schedule) in built.items():
            model.train()
            start = time.perf_counter()
            step(model, loss_fn, optimizer, schedule, inputs, targets)
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
    parser.add_argument("--quick", action="store_true", help="1 epoch of 5 steps per arm")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.timing_steps = 1, 3
    console = Console(width=200)
    train, test = shipped_mnist(test_size=1000, seed=0)
    console.print(f"shipped MNIST {len(train)}/{len(test)}, small_mnist_cnn, {args.grouping} budget {args.budget}, "
                  f"{args.epochs} epochs, lr {args.lr}, seed {args.seed}, torch threads {torch.get_num_threads()}")
    results = {name: run_arm(name, ARMS[name], args, train, test, console) for name in args.arms}
    for name, seconds in time_arms(args.arms, args, train, args.timing_steps).items():
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
