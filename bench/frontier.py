"""The frontier (issue 18): test score against trainable parameters for every method at its defaults, 3 seeds, and
issue 18's targets checked against it.

    python bench/frontier.py --out bench/results/frontier.md      # ~45 minutes on 2 cores

Runs are `bench/defaults.py` runs (its recipes, data splits and run log, under ``--runs``), every method at its
library defaults and its default rate, one schedule for every method of a target: CNN2 on the shipped MNIST
subset, SLVT and LWT at 512-4,096 (``--epochs``); torchvision resnet18 on the same images, LWT 2,048
(``--resnet-epochs``); the byte-level GPT 4 x 256, one latent per block, 4,096 (``--gpt-steps``). Full training
runs at its default rate and, for reference, at the best rate `bench/defaults.py` measured for that target
(``FULL_BEST``). ``--extra`` adds overrides to every generated method's runs (an ablation of a default).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from defaults import default_lr, fmt, key, run_all, run_log  # noqa: E402  (bench/, this script's folder, is on sys.path)

GENERATED = ("mapping-sparse", "subspace", "rpg")
FULL_BEST = {"cnn2": 1e-2, "resnet18": 1e-3, "gpt": 3e-4}  # bench/results/defaults.md, "best lr" of full training
TRAINABLE = "trainable"


def cases(args) -> list[dict]:
    out = []
    extra = list(args.extra)
    for target in args.targets:
        data = [f"data.augment_shift={args.shift}"] if target == "cnn2" and args.shift else []
        layouts = [(g, b) for g in ("slvt", "lwt") for b in args.budgets] if target == "cnn2" else [("lwt", 2048)] if target == "resnet18" else [("blocks", 4096)]
        for grouping, budget in layouts:
            out += [{"target": target, "grouping": grouping, "budget": budget, "method": m, "variant": args.variant, "extra": [*data, *extra]} for m in GENERATED]
        out.append({"target": target, "grouping": "-", "budget": 0, "method": "full", "variant": args.variant, "extra": data})
    return out


def jobs_of(case: dict, seeds) -> list[tuple]:
    rates = [default_lr(case["method"])]
    if case["method"] == "full" and FULL_BEST[case["target"]] != rates[0]:
        rates.append(FULL_BEST[case["target"]])
    return [(case, lr, s) for lr in rates for s in seeds]


def trainable_count(case: dict, args) -> int:
    """The optimiser's trainable count of a case (the CLI's ``trainable parameters``), from a meta build."""
    import torch

    from defaults import base_overrides, method_overrides
    from mapscale.recipe import load_recipe
    from mapscale.train import build_loss, build_model, trainable_parameters

    recipe_file, overrides = base_overrides(case["target"], args)
    recipe = load_recipe(ROOT / recipe_file, [*overrides, *method_overrides(case["method"], case["grouping"], case["budget"]), *case["extra"]])
    model = build_model(recipe, torch.device("meta"))
    return sum(p.numel() for p in trainable_parameters(model, build_loss(recipe)))


def mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.mean(finite) if finite else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=["cnn2", "resnet18", "gpt"], choices=["cnn2", "resnet18", "gpt"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    parser.add_argument("--epochs", type=int, default=4, help="CNN2 epochs")
    parser.add_argument("--resnet-epochs", type=int, default=1)
    parser.add_argument("--gpt-steps", type=int, default=100)
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every generated method's runs")
    parser.add_argument("--shift", type=int, default=0, help="data.augment_shift of every CNN2 run, full training's included")
    parser.add_argument("--variant", default="frontier", help="names these runs in the run log (runs of other code or settings need another)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default="/tmp/mapscale-frontier")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    settings = vars(args)
    log, done = run_log(args.runs)
    started = time.perf_counter()
    seeds = range(args.seeds)
    all_cases = cases(args)
    jobs = [job for c in all_cases for job in jobs_of(c, seeds)]
    run_all(jobs, done, log, settings, args.workers)

    rows = []
    for c in all_cases:
        for lr in sorted({lr for case, lr, _ in jobs_of(c, seeds)}, reverse=True):
            records = [done[key(c, lr, s)] for s in seeds]
            rows.append({**c, "lr": lr, "records": records, "trainable": trainable_count(c, args)})
    lines = [
        "# The frontier: test score against trainable parameters, every method at its defaults",
        "",
        f"`python bench/frontier.py {' '.join(sys.argv[1:])}` ({(time.perf_counter() - started) / 60:.0f} min of this invocation; "
        f"{len(done)} runs in `{args.runs}/runs.jsonl`). CNN2 {args.epochs} epochs, resnet18 {args.resnet_epochs} epochs, GPT "
        f"{args.gpt_steps} steps, one schedule for every method of a target{f' (CNN2 with data.augment_shift={args.shift})' if args.shift else ''}; seeds {seeds.start}-{seeds.stop - 1}; accuracy in points "
        "(CNN2, resnet18) or perplexity (GPT, lower is better). Full training at its default rate and at the best rate "
        "`bench/defaults.py` measured for the target (marked `best`)." + (f" Generated methods with `{' '.join(args.extra)}`." if args.extra else ""),
        "",
        "| target | grouping | budget | method | lr | trainable | validation | test | train - test |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gpt = r["target"] == "gpt"
        scale = 1 if gpt else 100
        gap = [(x["test"] - x["train"]) if gpt else 100 * (x["train"] - x["test"]) for x in r["records"]]
        label = r["method"] + (" (best)" if r["method"] == "full" and r["lr"] != default_lr("full") else "")
        lines.append(f"| {r['target']} | {r['grouping']} | {r['budget'] or '-'} | {label} | {r['lr']:g} | {r['trainable']:,} | "
                     f"{fmt([x['validation'] for x in r['records']], scale)} | {fmt([x['test'] for x in r['records']], scale)} | {fmt(gap, 1)} |")
    lines += ["", "GPT's gap column is test - train perplexity.", "", *targets(rows), ""]
    picture = Path(args.out).with_suffix(".png")
    plot(rows, picture)
    lines += [f"![test score against trainable parameters]({picture.name})", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def targets(rows: list[dict]) -> list[str]:
    """Issue 18's targets, each checked on the test means of the rows (met / missed, by how much)."""
    test = {(r["target"], r["grouping"], r["budget"], r["method"], r["lr"]): mean([x["test"] for x in r["records"]]) for r in rows}
    gaps = {(r["target"], r["grouping"], r["budget"], r["method"], r["lr"]): mean([x["train"] - x["test"] for x in r["records"]]) for r in rows}

    def get(target, grouping, budget, method, table=test):
        lr = default_lr(method)
        return table.get((target, grouping, budget, method, lr), math.nan)

    lines = ["## Issue 18's targets (test means of 3 seeds; each method at its defaults)", "", "| target | measured | met |", "|---|---|---|"]
    budgets = sorted({r["budget"] for r in rows if r["target"] == "cnn2" and r["budget"]})
    full_cnn2 = get("cnn2", "-", 0, "full")
    for grouping in ("slvt", "lwt"):
        for b in budgets:
            m, s, p = (100 * get("cnn2", grouping, b, x) for x in GENERATED)
            lines.append(f"| CNN2 {grouping} {b:,}: mapping >= RPG and subspace | {m:.2f} vs RPG {p:.2f}, subspace {s:.2f} | {'yes' if m >= max(p, s) else 'no'} |")
        if 4096 in budgets:
            m = 100 * get("cnn2", grouping, 4096, "mapping-sparse")
            lines.append(f"| CNN2 {grouping} 4,096: mapping >= full training | {m:.2f} vs {100 * full_cnn2:.2f} | {'yes' if m >= 100 * full_cnn2 else 'no'} ({m - 100 * full_cnn2:+.2f}) |")
        if 2048 in budgets:
            m = 100 * get("cnn2", grouping, 2048, "mapping-sparse")
            lines.append(f"| CNN2 {grouping} 2,048: within 0.5 points of full training | {m:.2f} vs {100 * full_cnn2:.2f} | {'yes' if m >= 100 * full_cnn2 - 0.5 else 'no'} ({m - 100 * full_cnn2:+.2f}) |")
            g, f = 100 * get("cnn2", grouping, 2048, "mapping-sparse", gaps), 100 * get("cnn2", "-", 0, "full", gaps)
            lines.append(f"| CNN2 {grouping} 2,048: train-test gap <= full training's | {g:.2f} vs {f:.2f} | {'yes' if g <= f else 'no'} |")
    if any(r["target"] == "resnet18" for r in rows):
        m, f = 100 * get("resnet18", "lwt", 2048, "mapping-sparse"), 100 * get("resnet18", "-", 0, "full")
        lines.append(f"| resnet18 LWT 2,048: within 1 point of full training | {m:.2f} vs {f:.2f} | {'yes' if m >= f - 1 else 'no'} ({m - f:+.2f}) |")
    if any(r["target"] == "gpt" for r in rows):
        m, f, p = get("gpt", "blocks", 4096, "mapping-sparse"), get("gpt", "-", 0, "full"), get("gpt", "blocks", 4096, "rpg")
        best = test.get(("gpt", "-", 0, "full", FULL_BEST["gpt"]), math.nan)
        lines.append(f"| GPT 4,096: perplexity within 5% of full training's | {m:.2f} vs {f:.2f} at full's default rate, {best:.2f} at its best | "
                     f"{'yes' if m <= 1.05 * f else 'no'} ({100 * (m / f - 1):+.1f}%); against the best rate {'yes' if m <= 1.05 * best else 'no'} ({100 * (m / best - 1):+.1f}%) |")
        lines.append(f"| GPT 4,096: perplexity <= RPG's | {m:.2f} vs {p:.2f} | {'yes' if m <= p else 'no'} |")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, g) for t, g in (("cnn2", "slvt"), ("cnn2", "lwt"), ("resnet18", "lwt"), ("gpt", "blocks")) if any(r["target"] == t for r in rows)]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.2), squeeze=False)
    colours = {"mapping-sparse": "tab:blue", "subspace": "tab:orange", "rpg": "tab:green", "full": "black"}
    for axis, (target, grouping) in zip(axes[0], panels):
        scale = 1 if target == "gpt" else 100
        for method, colour in colours.items():
            chosen = [r for r in rows if r["target"] == target and r["method"] == method and (r["grouping"] == grouping or method == "full")]
            for r in chosen:
                values = [scale * x["test"] for x in r["records"] if x["test"] is not None and math.isfinite(x["test"])]
                r["mean"], r["std"] = (statistics.mean(values), statistics.pstdev(values)) if values else (math.nan, math.nan)
            if method == "full":
                for r in chosen:
                    best = r["lr"] != default_lr("full")
                    axis.errorbar([r["trainable"]], [r["mean"]], [r["std"]], color=colour, marker="s" if not best else "D", fillstyle="full" if not best else "none",
                                  linestyle="", label=f"full training ({'best rate' if best else 'default rate'})", capsize=3)
                continue
            chosen.sort(key=lambda r: r["trainable"])
            axis.errorbar([r["trainable"] for r in chosen], [r["mean"] for r in chosen], [r["std"] for r in chosen], color=colour, marker="o", label=method, capsize=3)
        axis.set_xscale("log")
        axis.set_xlabel("trainable parameters")
        axis.set_ylabel("test perplexity" if target == "gpt" else "test accuracy (%)")
        axis.set_title({"cnn2": f"CNN2 {grouping.upper()}", "resnet18": "resnet18 LWT", "gpt": "GPT 4 x 256, per block"}[target])
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
