"""``mapping.offset=seeded`` against ``offset=init`` (issue 27): the same runs around a theta_0 redrawn from the
seed with each tensor's init statistics, and around the target's stored theta_0.

    python bench/seeded_offset.py --out bench/results/seeded_offset.md     # ~15 minutes on 2 cores

Runs are `bench/defaults.py` runs (its recipes, data splits, schedules and run log, under ``--runs``): CNN2 SLVT
2,048 on the shipped MNIST subset (``--epochs``), torchvision resnet18 LWT 2,048 on the same images
(``--resnet-epochs``), the byte-level GPT 4 x 256 with one latent per block, 4,096 (``--gpt-steps``), each with
the sparse operator. Protocol, the same for both offsets: every rate of ``--lrs`` with seed 0, scored on the
validation split (carved from the training data); then seeds 0 to ``--seeds`` - 1 at each offset's best rate.
The table gives validation and test (mean ± std over the seeds), the difference seeded - init against the
seeds' spread, and the mean wall time of a run (both offsets run in the same pool, one thread each).
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

from defaults import fmt, key, run_all, run_log, score  # noqa: E402  (bench/, this script's folder, is on sys.path)

LAYOUTS = {"cnn2": ("slvt", 2048), "resnet18": ("lwt", 2048), "gpt": ("blocks", 4096)}
OFFSETS = {"init": [], "seeded": ["mapping.offset=seeded"]}


def cases(targets: list[str]) -> list[dict]:
    return [
        {"target": t, "grouping": LAYOUTS[t][0], "budget": LAYOUTS[t][1], "method": "mapping-sparse", "variant": f"offset-{offset}", "extra": extra, "offset": offset}
        for t in targets for offset, extra in OFFSETS.items()
    ]


def finite(values: list[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.1, 0.3, 1.0])
    parser.add_argument("--epochs", type=int, default=4, help="CNN2 epochs")
    parser.add_argument("--resnet-epochs", type=int, default=1)
    parser.add_argument("--gpt-steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default="/tmp/mapscale-seeded")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    settings = {**vars(args), "full_lrs": []}
    log, done = run_log(args.runs)
    all_cases = cases(args.targets)
    started = time.perf_counter()
    run_all([(c, lr, 0) for c in all_cases for lr in args.lrs], done, log, settings, args.workers)
    best = {id(c): max(args.lrs, key=lambda lr, c=c: score(done[key(c, lr, 0)], c["target"])) for c in all_cases}
    seeds = range(args.seeds)
    run_all([(c, best[id(c)], s) for c in all_cases for s in seeds], done, log, settings, args.workers)

    lines = [
        "# `mapping.offset=seeded` against `offset=init`",
        "",
        f"`python bench/seeded_offset.py {' '.join(sys.argv[1:])}` ({(time.perf_counter() - started) / 60:.0f} min of this invocation). "
        f"CNN2 {args.epochs} epochs, resnet18 {args.resnet_epochs} epoch(s), GPT {args.gpt_steps} steps (the `bench/defaults.py` schedules); "
        f"rates {', '.join(f'{lr:g}' for lr in args.lrs)} swept on the validation split with seed 0 for each offset, then {args.seeds} seeds at each "
        "offset's best. Accuracy in points, perplexity for the GPT (lower is better).",
        "",
        "## Sweep (validation, seed 0)",
        "",
        "| target | layout | offset | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " |",
        "|---|---|---|" + "---:|" * len(args.lrs),
    ]
    for c in all_cases:
        scale = 1 if c["target"] == "gpt" else 100
        cells = [fmt([done[key(c, lr, 0)]["validation"]], scale) + (" *" if lr == best[id(c)] else "") for lr in args.lrs]
        lines.append(f"| {c['target']} | {c['grouping']} {c['budget']} | {c['offset']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## At each offset's best rate ({args.seeds} seeds)",
        "",
        "| target | offset | lr | validation | test | seeded - init (test) | seed std (test, larger) | run s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for target in args.targets:
        pair = {c["offset"]: c for c in all_cases if c["target"] == target}
        scale = 1 if target == "gpt" else 100
        records = {o: [done[key(c, best[id(c)], s)] for s in seeds] for o, c in pair.items()}
        tests = {o: finite([r["test"] * scale for r in rs]) for o, rs in records.items()}
        delta = statistics.mean(tests["seeded"]) - statistics.mean(tests["init"]) if tests["seeded"] and tests["init"] else math.nan
        spread = max(statistics.pstdev(v) if len(v) > 1 else math.nan for v in tests.values())
        for offset, c in pair.items():
            rs = records[offset]
            lines.append(
                f"| {target} | {offset} | {best[id(c)]:g} | {fmt([r['validation'] for r in rs], scale)} | {fmt([r['test'] for r in rs], scale)} | "
                + (f"{delta:+.2f} | {spread:.2f} | " if offset == "seeded" else "| | ")
                + f"{statistics.mean(r['seconds'] for r in rs):.0f} |"
            )
    lines += ["", "`seeded - init`: difference of the test means (points; perplexity for the GPT); `seed std`: the larger of the two offsets' "
              "standard deviations over seeds (population std).", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
