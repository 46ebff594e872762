"""Issue 18's ablation: each technique on and off, every method it applies to at its measured default rate, 3 seeds.

    python bench/techniques.py --out bench/results/techniques_cnn2.md        # ~25 minutes on 2 cores

Runs are `bench/defaults.py` runs (the same recipes, data splits, epochs and run log, under ``--runs``): CNN2 on the
shipped MNIST subset (3,500 train, 500 validation, 1,000 test), 4 epochs, SLVT and LWT at 2,048 trainable for the
generated methods, each method at its own default rate (``mapping.default_lr``, chosen by ``bench/defaults.py``).
A technique is a set of overrides applied alike to every method it applies to, so that comparisons stay fair;
a technique that adds trainable entries (direct biases, gains) takes them out of the latent budget, so that every
run of a row trains 2,048 entries. The table gives validation and test accuracy, the train-test gap (mean and
spread over the seeds) and the change in validation accuracy from the same method and layout without it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from defaults import default_lr, fmt, key, run_all, run_log  # noqa: E402  (bench/, this script's folder, is on sys.path)

GENERATED = ("mapping-sparse", "subspace", "rpg")
EVERY = (*GENERATED, "full")
CNN2_BIASES = 16 + 32 + 128 + 10  # trained directly and counted in the 2,048
CNN2_TENSORS = 8  # one gain each


@dataclass(frozen=True)
class Technique:
    overrides: tuple[str, ...] = ()
    methods: tuple[str, ...] = EVERY
    """The methods it applies to (full training trains its biases anyway; only the mapping has gains)."""
    groupings: tuple[str, ...] = ("slvt", "lwt")
    extra_trainable: int = 0
    """Trainable entries it adds, taken out of the latent budget."""


TECHNIQUES = {
    "off": Technique(),
    "shift": Technique(("data.augment_shift=2",)),
    "direct biases": Technique(('mapping.trainable=["*.bias"]',), GENERATED, extra_trainable=CNN2_BIASES),
    "direct biases, own rate": Technique(('mapping.trainable=["*.bias"]', "mapping.trainable_lr=0.003"), GENERATED, extra_trainable=CNN2_BIASES),
    "gain": Technique(("mapping.gain=true",), ("mapping-sparse",), extra_trainable=CNN2_TENSORS),
    "budget power 0": Technique(("mapping.budget_power=0",), GENERATED, ("lwt",)),
    "budget power 1": Technique(("mapping.budget_power=1",), GENERATED, ("lwt",)),
    "weight decay 0.01": Technique(("optim.optimizer=adamw", "optim.weight_decay=0.01")),
    "weight decay 0.05": Technique(("optim.optimizer=adamw", "optim.weight_decay=0.05")),
    "8 epochs": Technique(("optim.epochs=8",)),
    "16 epochs": Technique(("optim.epochs=16",)),
    "16 epochs, shift": Technique(("optim.epochs=16", "data.augment_shift=2")),
    "16 epochs, budget power 0": Technique(("optim.epochs=16", "mapping.budget_power=0"), GENERATED, ("lwt",)),
    "16 epochs, gain": Technique(("optim.epochs=16", "mapping.gain=true"), ("mapping-sparse",), extra_trainable=CNN2_TENSORS),
}


def cases_of(name: str, budget: int = 2048) -> list[dict]:
    technique = TECHNIQUES[name]
    out = []
    for method in technique.methods:
        layouts = [("-", 0)] if method == "full" else [(g, budget) for g in technique.groupings]
        for grouping, size in layouts:
            extra = list(technique.overrides)
            if method != "full" and technique.extra_trainable:
                extra.append(f"mapping.budget={size - technique.extra_trainable}")
            out.append({"target": "cnn2", "grouping": grouping, "budget": size, "method": method,
                        "variant": name.replace(" ", "-").replace(",", ""), "extra": extra})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--techniques", nargs="+", default=list(TECHNIQUES), choices=list(TECHNIQUES))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default="/tmp/mapscale-techniques")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    settings = {"epochs": args.epochs, "resnet_epochs": 1, "gpt_steps": 100, "runs": args.runs}
    log, done = run_log(args.runs)
    started = time.perf_counter()
    names = ["off", *[t for t in args.techniques if t != "off"]]
    cases = [c for name in names for c in cases_of(name)]
    seeds = range(args.seeds)
    run_all([(c, default_lr(c["method"]), s) for c in cases for s in seeds], done, log, settings, args.workers)

    def records(case: dict) -> list[dict]:
        return [done[key(case, default_lr(case["method"]), s)] for s in seeds]

    baseline = {(c["method"], c["grouping"]): statistics.mean(r["validation"] for r in records(c)) for c in cases_of("off")}
    lines = [
        "# Techniques on and off (issue 18)", "",
        f"`python bench/techniques.py {' '.join(sys.argv[1:])}` ({(time.perf_counter() - started) / 60:.0f} min of this invocation; runs "
        f"already in `{args.runs}/runs.jsonl` are read back); CNN2, {args.epochs} epochs unless the technique says otherwise, 2,048 "
        f"trainable for the generated methods, each method at its default rate, seeds 0-{args.seeds - 1}. `vs off`: validation "
        "accuracy minus the same method and layout without the technique (mean of the seeds), at 4 epochs: for a `16 epochs, X` row, "
        "X's own effect is its difference from the `16 epochs` row.", "",
        "| technique | method | grouping | lr | validation | vs off | test | train - test |", "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in cases:
        rs = records(c)
        change = 100 * (statistics.mean(r["validation"] for r in rs) - baseline[(c["method"], c["grouping"])])
        lines.append(f"| {c['variant']} | {c['method']} | {c['grouping']} | {default_lr(c['method']):g} | {fmt([r['validation'] for r in rs], 100)} | "
                     f"{change:+.2f} | {fmt([r['test'] for r in rs], 100)} | {fmt([r['train'] - r['test'] for r in rs], 100)} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
