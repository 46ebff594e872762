"""Issue 18's ablation: each technique on and off, every method at its measured default rate, 3 seeds.

    python bench/techniques.py --out bench/results/techniques_cnn2.md        # ~3 minutes on 2 cores

Runs are `bench/defaults.py` runs (the same recipes, data splits, epochs and run log, under ``--runs``): CNN2 on the
shipped MNIST subset (3,500 train, 500 validation, 1,000 test), SLVT 2,048 for the generated methods, each method
at its own default rate (``mapping.default_lr``, chosen by ``bench/defaults.py``). A technique is a set of
overrides applied to every method alike, so that comparisons stay fair; the table gives validation and test
accuracy and the train-test gap, mean and spread over the seeds.

Techniques measured so far: ``shift`` (``data.augment_shift=2``: random shifts of up to 2 pixels); ``direct
biases`` (``mapping.trainable=["*.bias"]``: the 186 biases trained directly, the latent budget lowered to 1,862 so
that the trainable count stays 2,048).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from defaults import fmt, key, run_all  # noqa: E402  (bench/, this script's folder, is on sys.path)

from mapscale.methods import METHODS  # noqa: E402

# CNN2's biases: 16 + 32 + 128 + 10 = 186 weights, trained directly and counted in the 2,048 (1,862 latents left)
TECHNIQUES = {
    "off": [],
    "shift": ["data.augment_shift=2"],
    "direct biases": ['mapping.trainable=["*.bias"]', "mapping.budget=1862"],
}
GENERATED_ONLY = {"direct biases"}  # full training trains its biases anyway
METHOD_CASES = ["mapping-sparse", "subspace", "rpg", "full"]


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
    log = Path(args.runs) / "runs.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    done = {r["key"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    started = time.perf_counter()
    cases = []
    for technique in args.techniques:
        for method in METHOD_CASES:
            if method == "full" and technique in GENERATED_ONLY:
                continue
            grouping, budget = ("-", 0) if method == "full" else ("slvt", 2048)
            cases.append({"target": "cnn2", "grouping": grouping, "budget": budget, "method": method,
                          "variant": technique.replace(" ", "-"), "extra": TECHNIQUES[technique]})
    lr = {c["method"]: METHODS["mapping" if c["method"].startswith("mapping-") else c["method"]].section.default_lr for c in cases}
    seeds = range(args.seeds)
    run_all([(c, lr[c["method"]], s) for c in cases for s in seeds], done, log, settings, args.workers)
    lines = [
        "# Techniques on and off (issue 18)", "",
        f"`python bench/techniques.py {' '.join(sys.argv[1:])}` ({(time.perf_counter() - started) / 60:.0f} min); CNN2, "
        f"{args.epochs} epochs, SLVT 2,048 for the generated methods, each method at its default rate, seeds 0-{args.seeds - 1}.", "",
        "| technique | method | lr | validation | test | train - test |", "|---|---|---:|---:|---:|---:|",
    ]
    for c in cases:
        records = [done[key(c, lr[c["method"]], s)] for s in seeds]
        lines.append(f"| {c['variant']} | {c['method']} | {lr[c['method']]:g} | {fmt([r['validation'] for r in records], 100)} | "
                     f"{fmt([r['test'] for r in records], 100)} | {fmt([r['train'] - r['test'] for r in records], 100)} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
