"""The frontier (issues 18 and 29): test score against trainable parameters from a few hundred trainable values
up to d = P, every method's rate chosen on the validation split with one tuning budget, 3 seeds, and each
method's *reduction at parity*.

    python bench/frontier.py --targets cnn2 --out bench/results/frontier.md          # ~1 hour on 2 cores
    python bench/frontier.py --targets resnet18 --out bench/results/frontier_resnet18.md
    python bench/frontier.py --targets cnn2 --budgets 512 2048 --groupings slvt --epochs 1 --seeds 1 --out /tmp/f.md  # a quick check

Runs are `bench/defaults.py` runs (its recipes, data splits and run log, under ``--runs``): CNN2 on the shipped
MNIST subset (SLVT and LWT, ``--budgets``, ``--epochs``), torchvision resnet18 on the same images (LWT,
``--resnet-budgets``, ``--resnet-epochs``), the GPT 4 x 256 from scratch on the standard library's code (one
latent per block, ``--gpt-budgets``, ``--gpt-steps``, ``--gpt-tokenizer``). A budget above a target's P is
run at d = P (the sparse operator is then a signed permutation: full training reparameterised).

**Tuning (the same budget for every method).** Each generated method is swept over the rates
``default x --lr-factors`` at ``--tune-budgets`` anchor budgets (the first, middle and last of the list by
default), seed 0, scored on the validation split; every budget then trains at the best rate of its nearest
anchor (on the log axis). Full training gets as many sweep runs: ``len(factors) x len(anchors)`` rates spaced
by sqrt(3) around its default. Seed-0 sweep runs at the chosen rate are the final seed-0 runs.

**Reduction at parity.** For a method's curve (test mean of the seeds against the trainable count), the largest
``P / trainable`` at which it is within ``--parity`` points of full training's test mean (CNN2, resnet18) or
within ``--parity-ppl`` of its perplexity (GPT), interpolated linearly on the log trainable axis between the two
budgets around the crossing. The spread is that of the same figure on each seed's own curve. A curve that
never crosses reports its smallest gap; one that crosses at its first budget reports a bound (``>=``).
``--extra`` adds overrides to every generated method's runs (an option measured on the frontier).
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

from defaults import default_lr, fmt, key, run_all, run_log, score  # noqa: E402  (bench/, this script's folder, is on sys.path)

GENERATED = ("mapping-sparse", "subspace", "rpg")
POWERS = {"cnn2": range(9, 18, 2), "resnet18": range(11, 21, 3), "gpt": range(12, 21, 2)}
TITLES = {"cnn2": "CNN2", "resnet18": "resnet18", "gpt": "GPT 4 x 256"}


def layouts(target: str, args) -> list[tuple[str, list[int]]]:
    """``[(grouping, budgets)]`` of a target: budgets above its generated count run at d = P."""
    budgets = {"cnn2": args.budgets, "resnet18": args.resnet_budgets, "gpt": args.gpt_budgets}[target]
    size = generated_count(target, args)
    budgets = sorted({min(b, size) for b in budgets})
    groupings = args.groupings if target == "cnn2" else ["lwt"] if target == "resnet18" else ["blocks"]
    return [(g, budgets) for g in groupings]


def data_extra(target: str, args) -> list[str]:
    extra = [f"data.augment_shift={args.shift}"] if target == "cnn2" and args.shift else []
    return extra + ([f"data.tokenizer={args.gpt_tokenizer}"] if target == "gpt" and args.gpt_tokenizer else [])


def curves(args) -> list[dict]:
    """One case per (target, grouping, method, budget), and full training per target."""
    out = []
    for target in args.targets:
        data = data_extra(target, args)
        for grouping, budgets in layouts(target, args):
            for method in args.methods:
                out += [{"target": target, "grouping": grouping, "budget": b, "method": method, "variant": args.variant, "extra": [*data, *args.extra]} for b in budgets]
        out.append({"target": target, "grouping": "-", "budget": 0, "method": "full", "variant": args.variant, "extra": data})
    return out


def anchors(budgets: list[int], count: int) -> list[int]:
    """``count`` budgets of the sorted list, evenly spread over it (first and last included)."""
    if count >= len(budgets):
        return list(budgets)
    if count == 1:
        return [budgets[len(budgets) // 2]]
    return sorted({budgets[round(i * (len(budgets) - 1) / (count - 1))] for i in range(count)})


def tune_anchors(budgets: list[int], args) -> list[int]:
    """A curve's sweep budgets: ``--anchor-budgets`` where given (those on the curve; a budget added later then
    reuses the runs of the anchors already swept), else ``--tune-budgets`` spread over the sorted list."""
    if not args.anchor_budgets:
        return anchors(budgets, args.tune_budgets)
    chosen = sorted(set(budgets) & set(args.anchor_budgets))
    if not chosen:
        raise SystemExit(f"--anchor-budgets {args.anchor_budgets} names none of the curve's budgets {budgets}")
    return chosen


def rate_grid(method: str, args, tuned_budgets: int) -> list[float]:
    """The sweep rates of a method: the generated ones ``default x factors``; full training as many rates in all
    as a generated curve gets (factors x anchors), sqrt(3) apart around its default."""
    base = default_lr(method)
    if method != "full":
        return [float(f"{base * f:.3g}") for f in args.lr_factors]
    count = len(args.lr_factors) * tuned_budgets
    return [float(f"{base * 3 ** ((k - (count - 1) / 2) / 2):.3g}") for k in range(count)]


def higher_better(target: str) -> bool:
    return target != "gpt"


def plan(all_cases: list[dict], args) -> tuple[list[tuple], callable]:
    """The sweep jobs, and ``chosen(case, done) -> lr`` once they are done."""
    sweep, anchor_of = [], {}
    for case in all_cases:
        family = [c for c in all_cases if (c["target"], c["grouping"], c["method"]) == (case["target"], case["grouping"], case["method"])]
        budgets = sorted(c["budget"] for c in family)
        tuned = tune_anchors(budgets, args) if case["method"] != "full" else [0]
        nearest = min(tuned, key=lambda b: (abs(math.log(max(b, 1)) - math.log(max(case["budget"], 1))), b))
        anchor_of[id(case)] = next(c for c in family if c["budget"] == nearest)
        if case["budget"] in tuned:
            n_anchors = len(tune_anchors(sorted({c["budget"] for c in all_cases if c["target"] == case["target"] and c["method"] != "full"}), args))
            sweep += [(case, lr, 0) for lr in rate_grid(case["method"], args, max(n_anchors, 1))]

    def chosen(case: dict, done: dict) -> float:
        anchor = anchor_of[id(case)]
        rates = [lr for c, lr, _ in sweep if c is anchor]
        return max(rates, key=lambda lr: (score(done[key(anchor, lr, 0)], case["target"]), -lr))

    return sweep, chosen


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


def generated_count(target: str, args) -> int:
    """P: the parameters full training trains (every one a generating method can generate)."""
    return trainable_count({"target": target, "grouping": "-", "budget": 0, "method": "full", "extra": data_extra(target, args)}, args)


def mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.mean(finite) if finite else math.nan


def display(target: str, value: float) -> float:
    """Accuracy in points, perplexity as is."""
    return 100 * value if higher_better(target) else value


def crossing(points: list[tuple[int, float]], threshold: float, higher: bool) -> tuple[float | None, str]:
    """The smallest trainable count at which the curve ``[(trainable, score)]`` (sorted) reaches ``threshold``,
    interpolated on the log axis; ``(None, why)`` when it never does; a first point already there is a bound."""
    meets = [(t, s) for t, s in points if math.isfinite(s) and (s >= threshold if higher else s <= threshold)]
    if not meets:
        return None, "never"
    first = points.index(meets[0])
    if first == 0:
        return float(points[0][0]), "bound"
    (t0, s0), (t1, s1) = points[first - 1], points[first]
    if not math.isfinite(s0):
        return float(t1), "exact"
    fraction = (threshold - s0) / (s1 - s0)
    return math.exp(math.log(t0) + fraction * (math.log(t1) - math.log(t0))), "exact"


def parity(rows: list[dict], args) -> list[dict]:
    """Per target, grouping and method: the reduction at parity (mean curve and each seed's), and the best gap."""
    out = []
    for target in args.targets:
        full = [r for r in rows if r["target"] == target and r["method"] == "full"][0]
        size, reference = full["trainable"], mean([x["test"] for x in full["records"]])
        higher = higher_better(target)
        threshold = reference - args.parity / 100 if higher else reference * (1 + args.parity_ppl)
        for grouping in sorted({r["grouping"] for r in rows if r["target"] == target and r["method"] != "full"}):
            for method in args.methods:
                curve = sorted((r for r in rows if (r["target"], r["grouping"], r["method"]) == (target, grouping, method)), key=lambda r: r["trainable"])
                if not curve:
                    continue
                at, kind = crossing([(r["trainable"], mean([x["test"] for x in r["records"]])) for r in curve], threshold, higher)
                seeds = []
                for s in range(args.seeds):
                    t, _ = crossing([(r["trainable"], r["records"][s]["test"]) for r in curve], threshold, higher)
                    seeds.append(size / t if t else math.nan)
                best = max(curve, key=lambda r: display(target, mean([x["test"] for x in r["records"]])) * (1 if higher else -1))
                out.append({"target": target, "grouping": grouping, "method": method, "reduction": size / at if at else None, "kind": kind,
                            "seeds": seeds, "reference": reference, "threshold": threshold, "size": size,
                            "best_gap": display(target, mean([x["test"] for x in best["records"]])) - display(target, reference), "best_at": best["trainable"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=["cnn2", "resnet18", "gpt"], choices=["cnn2", "resnet18", "gpt"])
    parser.add_argument("--methods", nargs="+", default=list(GENERATED), choices=list(GENERATED))
    parser.add_argument("--groupings", nargs="+", default=["slvt", "lwt"], choices=["slvt", "lwt"], help="CNN2's")
    parser.add_argument("--budgets", nargs="+", type=int, default=[2**k for k in POWERS["cnn2"]], help="CNN2's")
    parser.add_argument("--resnet-budgets", nargs="+", type=int, default=[2**k for k in POWERS["resnet18"]])
    parser.add_argument("--gpt-budgets", nargs="+", type=int, default=[2**k for k in POWERS["gpt"]])
    parser.add_argument("--epochs", type=int, default=16, help="CNN2 epochs")
    parser.add_argument("--resnet-epochs", type=int, default=8)
    parser.add_argument("--gpt-steps", type=int, default=1000)
    parser.add_argument("--gpt-tokenizer", default="bpe:4096", help="data.tokenizer of the GPT runs ('' for bytes)")
    parser.add_argument("--lr-factors", nargs="+", type=float, default=[1 / 3, 1.0, 3.0])
    parser.add_argument("--tune-budgets", type=int, default=3, help="anchor budgets of each curve's rate sweep")
    parser.add_argument("--anchor-budgets", nargs="*", type=int, default=[], help="the anchor budgets themselves (instead of --tune-budgets)")
    parser.add_argument("--parity", type=float, default=0.5, help="points below full training's test accuracy")
    parser.add_argument("--parity-ppl", type=float, default=0.02, help="relative perplexity above full training's")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every generated method's runs")
    parser.add_argument("--shift", type=int, default=2, help="data.augment_shift of every CNN2 run, full training's included")
    parser.add_argument("--variant", default="final", help="names these runs in the run log (runs of other code or settings need another)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default="/tmp/mapscale-frontier")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    settings = vars(args)
    log, done = run_log(args.runs)
    started = time.perf_counter()
    seeds = range(args.seeds)
    all_cases = curves(args)
    sweep, chosen = plan(all_cases, args)
    run_all(sweep, done, log, settings, args.workers)
    rates = {id(c): chosen(c, done) for c in all_cases}
    run_all([(c, rates[id(c)], s) for c in all_cases for s in seeds], done, log, settings, args.workers)

    rows = [{**c, "lr": rates[id(c)], "records": [done[key(c, rates[id(c)], s)] for s in seeds], "trainable": trainable_count(c, args)} for c in all_cases]
    picture = Path(args.out).with_suffix(".png")
    at_parity = parity(rows, args)
    plot(rows, at_parity, picture)
    lines = report(rows, at_parity, sweep, done, args, len(done), time.perf_counter() - started) + [f"![test score against trainable parameters]({picture.name})", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def report(rows, at_parity, sweep, done, args, runs, seconds) -> list[str]:
    schedules = {"cnn2": f"CNN2 {args.epochs} epochs" + (f" (data.augment_shift={args.shift})" if args.shift else ""),
                 "resnet18": f"resnet18 {args.resnet_epochs} epochs", "gpt": f"GPT {args.gpt_steps} steps ({args.gpt_tokenizer or 'bytes'})"}
    lines = [
        "# The frontier: test score against trainable parameters, up to d = P", "",
        f"`python bench/frontier.py {' '.join(sys.argv[1:])}` ({seconds / 60:.0f} min of this invocation; {runs} runs in `{args.runs}/runs.jsonl`). "
        f"{', '.join(schedules[t] for t in args.targets)}; seeds 0-{args.seeds - 1}; accuracy in points (CNN2, resnet18) or perplexity (GPT, "
        f"lower is better). Rates: {len(args.lr_factors)} per anchor budget ({', '.join(f'{f:.3g}' for f in args.lr_factors)} x the method's default) at "
        f"{args.tune_budgets if not args.anchor_budgets else 'the ' + ', '.join(map(str, args.anchor_budgets))} anchors per curve, seed 0, validation; full training as many rates. "
        + (f"Generated methods with `{' '.join(args.extra)}`." if args.extra else ""), "",
        "## Reduction at parity", "",
        f"Largest P / trainable within {args.parity:g} points of full training's test accuracy (GPT: within {100 * args.parity_ppl:g}% of its perplexity), "
        "from the mean curve; the spread from each seed's own curve (min-max); `never`: the best gap of the curve instead.", "",
        "| target | grouping | method | full training (test) | reduction at parity | per seed | best gap (at trainable) |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for p in at_parity:
        reduction = "never" if p["reduction"] is None else (">= " if p["kind"] == "bound" else "") + f"{p['reduction']:.1f}x"
        finite = [s for s in p["seeds"] if math.isfinite(s)]
        spread = f"{min(finite):.1f}x-{max(finite):.1f}x ({len(finite)}/{len(p['seeds'])} seeds reach it)" if finite else "none reach it"
        lines.append(f"| {p['target']} | {p['grouping']} | {p['method']} | {display(p['target'], p['reference']):.2f} | {reduction} | {spread} | "
                     f"{p['best_gap']:+.2f} ({p['best_at']:,}) |")
    lines += ["", "## Every point (rate chosen on validation)", "",
              "| target | grouping | budget | method | lr | trainable | P / trainable | validation | test | train - test |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    sizes = {p["target"]: p["size"] for p in at_parity}
    for r in rows:
        gpt = not higher_better(r["target"])
        gap = [(x["test"] - x["train"]) if gpt else 100 * (x["train"] - x["test"]) for x in r["records"]]
        scale = 1 if gpt else 100
        ratio = sizes.get(r["target"], r["trainable"]) / r["trainable"]
        lines.append(f"| {r['target']} | {r['grouping']} | {r['budget'] or '-'} | {r['method']} | {r['lr']:g} | {r['trainable']:,} | {ratio:.1f} | "
                     f"{fmt([x['validation'] for x in r['records']], scale)} | {fmt([x['test'] for x in r['records']], scale)} | {fmt(gap, 1)} |")
    lines += ["", "GPT's gap column is test - train perplexity.", "", "## Rate sweep (validation, seed 0)", "",
              "| target | grouping | budget | method | " + "rates: validation |", "|---|---|---:|---|---|"]
    seen = {}
    for case, lr, _ in sweep:
        seen.setdefault(id(case), (case, []))[1].append(lr)
    for case, lrs in seen.values():
        scale = 1 if not higher_better(case["target"]) else 100
        cells = ", ".join(f"{lr:g}: {fmt([done[key(case, lr, 0)]['validation']], scale)}" for lr in lrs)
        lines.append(f"| {case['target']} | {case['grouping']} | {case['budget'] or '-'} | {case['method']} | {cells} |")
    return lines + [""]


def plot(rows: list[dict], at_parity: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["target"], r["grouping"]) for r in rows if r["method"] != "full"}, key=lambda p: (list(TITLES).index(p[0]), p[1] != "slvt"))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.2), squeeze=False)
    colours = {"mapping-sparse": "tab:blue", "subspace": "tab:orange", "rpg": "tab:green"}
    for axis, (target, grouping) in zip(axes[0], panels):
        scale = 100 if higher_better(target) else 1
        full = next(r for r in rows if r["target"] == target and r["method"] == "full")
        values = [scale * x["test"] for x in full["records"] if x["test"] is not None and math.isfinite(x["test"])]
        centre, spread = statistics.mean(values), statistics.pstdev(values)
        axis.axhspan(centre - spread, centre + spread, color="black", alpha=0.12)
        axis.axhline(centre, color="black", label=f"full training ({full['trainable']:,})")
        threshold = next(p["threshold"] for p in at_parity if p["target"] == target)
        axis.axhline(scale * threshold, color="black", linestyle=":", label="parity")
        for method, colour in colours.items():
            chosen = sorted((r for r in rows if (r["target"], r["grouping"], r["method"]) == (target, grouping, method)), key=lambda r: r["trainable"])
            if not chosen:
                continue
            stats = []
            for r in chosen:
                v = [scale * x["test"] for x in r["records"] if x["test"] is not None and math.isfinite(x["test"])]
                stats.append((statistics.mean(v), statistics.pstdev(v)) if v else (math.nan, math.nan))
            axis.errorbar([r["trainable"] for r in chosen], [s[0] for s in stats], [s[1] for s in stats], color=colour, marker="o", label=method, capsize=3)
        axis.set_xscale("log")
        axis.set_xlabel("trainable parameters")
        axis.set_ylabel("test perplexity" if not higher_better(target) else "test accuracy (%)")
        axis.set_title(f"{TITLES[target]} {grouping.upper()}")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
