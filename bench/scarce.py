"""Scarce data (issue 29, item 4): the paper's claim that the mapping beats full training where data is small.
CNN2 SLVT 2,048 (the mapping, sparse operator around theta_0) against full training of all 108,618 parameters,
at a few training-set sizes, every method tuned alike on a validation split, 3 seeds.

    python bench/scarce.py --out bench/results/scarce.md                                   # ~40 min on 2 cores
    python bench/scarce.py --datasets mnist --sizes 250 --steps 20 --seeds 1 --lr-factors 1 --decays 0 --shifts 0 --out /tmp/s.md

**Data.** ``mnist``: the shipped MNIST subset (1,000 test; 500 of the 4,000 training images held out for
validation, so the largest size is the 3,500 that remain), ``--mnist-sizes``. ``deepfake``: the embedded
real-versus-generated set (``data.name=deepfake``, 800 images at 28x28 RGB: 200 test, 100 validation, 500 to
train from), ``--deepfake-sizes``. A size is ``data.train_examples``: that many training examples, each class
its share, drawn by the split seed after the hold-out, so validation and test are the same at every size.

**Schedule.** Every run takes ``--steps`` optimiser steps of batch 64 whatever the size (16 epochs of the
3,500 MNIST images is 880): a small set is seen more often, not for less time, which is where overfitting shows.

**Tuning (the same budget for both).** At every dataset and size, each method is swept over its default rate
x ``--lr-factors``, weight decay ``--decays`` and image shift ``--shifts`` (``data.augment_shift``), seed 0,
scored on validation; seeds 0-2 train at the best setting. The report gives test accuracy per size, the gap
(mapping - full), and where the two curves cross, if they do.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from defaults import default_lr, fmt, key, run_all, run_log, score  # noqa: E402  (bench/, this script's folder, is on sys.path)

METHODS = {"mapping-sparse": ("slvt", 2048), "full": ("-", 0)}
DATA = {
    "mnist": [],  # the frontier's CNN2 setting: shipped MNIST, 1,000 test, 500 validation
    "deepfake": ["data.name=deepfake", "data.image_size=28", "data.channels=3", "data.test_size=200", "data.validation_size=100",
                 f"target.args={json.dumps({'in_channels': 3, 'classes': 2})}"],
}


def cases(args) -> list[dict]:
    """One case per (dataset, size, method, weight decay, shift): the variant names them in the run log."""
    out = []
    for dataset in args.datasets:
        for size in {"mnist": args.mnist_sizes, "deepfake": args.deepfake_sizes}[dataset]:
            for method, (grouping, budget) in METHODS.items():
                for decay, shift in itertools.product(args.decays, args.shifts):
                    extra = [*DATA[dataset], f"data.train_examples={size}", f"optim.max_steps={args.steps}", "optim.epochs=100000",
                             f"output.eval_every={args.steps}", f"optim.weight_decay={decay}", f"data.augment_shift={shift}"]
                    out.append({"target": "cnn2", "grouping": grouping, "budget": budget, "method": method, "extra": extra,
                                "variant": f"{args.variant}-{dataset}-n{size}-wd{decay:g}-s{shift}",
                                "dataset": dataset, "size": size, "decay": decay, "shift": shift})
    return out


def rates(method: str, args) -> list[float]:
    return [float(f"{default_lr(method) * f:.3g}") for f in args.lr_factors]


def crossings(sizes: list[int], gaps: list[float]) -> str:
    """Where mapping - full changes sign between consecutive sizes (interpolated on the log size axis)."""
    found = []
    for (n0, g0), (n1, g1) in zip(zip(sizes, gaps), zip(sizes[1:], gaps[1:])):
        if g0 == 0:
            found.append(f"at {n0:,}")
        elif g0 * g1 < 0:
            at = math.exp(math.log(n0) + g0 / (g0 - g1) * (math.log(n1) - math.log(n0)))
            found.append(f"near {at:,.0f} examples (between {n0:,} and {n1:,}: the mapping {'ahead below' if g0 > 0 else 'behind below'})")
    if found:
        return "; ".join(found)
    lead = "the mapping" if all(g > 0 for g in gaps) else "full training" if all(g < 0 for g in gaps) else "neither"
    return f"they do not cross: {lead} ahead at every size (gaps {', '.join(f'{g:+.2f}' for g in gaps)} points)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATA), choices=list(DATA))
    parser.add_argument("--mnist-sizes", nargs="+", type=int, default=[250, 500, 1000, 3500])
    parser.add_argument("--deepfake-sizes", nargs="+", type=int, default=[125, 250, 500])
    parser.add_argument("--sizes", nargs="+", type=int, help="both datasets' sizes (a quick check)")
    parser.add_argument("--steps", type=int, default=880, help="optimiser steps of every run")
    parser.add_argument("--lr-factors", nargs="+", type=float, default=[1 / 3, 1.0, 3.0])
    parser.add_argument("--decays", nargs="+", type=float, default=[0.0, 1e-3], help="optim.weight_decay values swept")
    parser.add_argument("--shifts", nargs="+", type=int, default=[0, 2], help="data.augment_shift values swept")
    parser.add_argument("--variant", default="i29", help="names these runs in the run log")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)  # base_overrides' CNN2 epochs: max_steps rules
    parser.add_argument("--runs", default="/tmp/mapscale-scarce")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.sizes:
        args.mnist_sizes = args.deepfake_sizes = args.sizes
    log, done = run_log(args.runs)
    started = time.perf_counter()
    all_cases = cases(args)
    sweep = [(c, lr, 0) for c in all_cases for lr in rates(c["method"], args)]
    run_all(sweep, done, log, vars(args), args.workers)

    best = {}  # (dataset, size, method) -> (case, lr) of the best validation score, ties to the smaller rate
    for case, lr, _ in sweep:
        group = (case["dataset"], case["size"], case["method"])
        rank = (score(done[key(case, lr, 0)], "cnn2"), -lr, -case["decay"], -case["shift"])
        if group not in best or rank > best[group][0]:
            best[group] = (rank, case, lr)
    finals = [(case, lr, s) for _, case, lr in best.values() for s in range(args.seeds)]
    run_all(finals, done, log, vars(args), args.workers)

    lines = report(best, done, sweep, args, len(done), time.perf_counter() - started)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def report(best, done, sweep, args, runs, seconds) -> list[str]:
    from frontier import trainable_count

    picture = Path(args.out).with_suffix(".png")
    lines = [
        "# Scarce data: the mapping (CNN2 SLVT 2,048) against full training", "",
        f"`python bench/scarce.py {' '.join(sys.argv[1:])}` ({seconds / 60:.0f} min of this invocation; {runs} runs in `{args.runs}/runs.jsonl`). "
        f"{args.steps} steps of batch 64 at every size; per dataset, size and method the best of {len(args.lr_factors)} rates (x the default) x "
        f"weight decay {args.decays} x shift {args.shifts} on validation (seed 0), then seeds 0-{args.seeds - 1}. Accuracy in points.", "",
        "| data | train examples | method | trainable | chosen (lr, wd, shift) | validation | test | train - test |",
        "|---|---:|---|---:|---|---:|---:|---:|",
    ]
    curves = {}
    for (dataset, size, method), (_, case, lr) in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "mapping-sparse")):
        records = [done[key(case, lr, s)] for s in range(args.seeds)]
        tests = [100 * r["test"] for r in records if r["test"] is not None and math.isfinite(r["test"])]
        curves.setdefault(dataset, {}).setdefault(method, []).append((size, statistics.mean(tests) if tests else math.nan, statistics.pstdev(tests) if len(tests) > 1 else 0.0))
        trainable = trainable_count(case, args)  # the optimiser's count, from a meta build of the run's recipe
        gap = [100 * (r["train"] - r["test"]) for r in records]
        lines.append(f"| {dataset} | {size:,} | {method} | {trainable:,} | {lr:g}, {case['decay']:g}, {case['shift']} | "
                     f"{fmt([r['validation'] for r in records], 100)} | {fmt([r['test'] for r in records], 100)} | {fmt(gap, 1)} |")
    lines += ["", "## Where the curves cross (test means, mapping - full)", ""]
    for dataset, methods in curves.items():
        sizes = [s for s, _, _ in methods["full"]]
        gaps = [m - f for (_, m, _), (_, f, _) in zip(methods["mapping-sparse"], methods["full"])]
        lines.append(f"- {dataset}: " + ", ".join(f"{s:,}: {g:+.2f}" for s, g in zip(sizes, gaps)) + f". {crossings(sizes, gaps)}.")
    lines += ["", "## Sweep (validation, seed 0)", "", "| data | size | method | wd | shift | rates: validation |", "|---|---:|---|---:|---:|---|"]
    seen = {}
    for case, lr, _ in sweep:
        seen.setdefault(id(case), (case, []))[1].append(lr)
    for case, lrs in seen.values():
        cells = ", ".join(f"{lr:g}: {fmt([done[key(case, lr, 0)]['validation']], 100)}" for lr in lrs)
        lines.append(f"| {case['dataset']} | {case['size']:,} | {case['method']} | {case['decay']:g} | {case['shift']} | {cells} |")
    plot(curves, picture)
    return [*lines, "", f"![test accuracy against training examples]({picture.name})", ""]


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(4.8 * len(curves), 4.0), squeeze=False)
    for axis, (dataset, methods) in zip(axes[0], curves.items()):
        for method, points in methods.items():
            label = "mapping SLVT 2,048" if method != "full" else "full training"
            axis.errorbar([p[0] for p in points], [p[1] for p in points], [p[2] for p in points], marker="o", capsize=3, label=label)
        axis.set_xscale("log")
        axis.set_xlabel("training examples")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(f"CNN2 on {dataset}")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
