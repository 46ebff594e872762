"""What a large target needs (issue 29, item 2): the mapping's options measured on torchvision resnet18 (11.2M
parameters, 62 tensors, BatchNorm) on the shipped MNIST subset, against plain LWT and full training.

    python bench/large_options.py --out bench/results/large_options.md                 # ~15 minutes on 2 cores
    python bench/large_options.py --epochs 1 --budgets 2048 --schedule 1 --options plain direct --max-steps 3 --out /tmp/o.md

`bench/defaults.py`'s resnet18 runs (28x28 images as 3 channels, 500 of the 4,000 training images held out for
validation, 1,000 test), the mapping LWT with the sparse operator around theta_0 at each of ``--budgets``, at
the method's default rate, ``--epochs`` epochs, seed ``--seed``; each option adds overrides to plain LWT:

- ``direct``: norms (every BatchNorm), the stem (``conv1``) and the classifier (``fc``) trained directly, as
  RPG and PRANC leave them out of their random bases (24,138 values, counted in the trainable total), at
  ``mapping.trainable_lr`` 3e-3 (full training's default) on the same schedule;
- ``gain``: one trainable scale per generated tensor (``mapping.gain``; SAID, Aghajanyan et al. 2020);
- ``power1``: the budget split across groups in proportion to size (``mapping.budget_power=1``; 0.5 is sqrt);
- ``warmup``: a shorter warm-up (``optim.warmup_fraction=0.05``; 0.15 is the default).

Full training runs at ``--schedule`` epochs (its own default rate), the measurement of the schedule it needs.
One seed: these runs rank options for a 3-seed frontier, they do not make accuracy claims by themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from defaults import default_lr, fmt, key, run_all, run_log  # noqa: E402  (bench/, this script's folder, is on sys.path)

DIRECT = ["*bn*", "*downsample.1.*", "conv1.*", "fc.*"]
OPTIONS = {
    "plain": [],
    "direct": [f"mapping.trainable={json.dumps(DIRECT)}", "mapping.trainable_lr=0.003"],
    "gain": ["mapping.gain=true"],
    "power1": ["mapping.budget_power=1"],
    "warmup": ["optim.warmup_fraction=0.05"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", nargs="+", type=int, default=[16384, 65536])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--option-budgets", nargs="+", type=int, help="budgets of the options other than plain (default: --budgets)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the mapping's runs")
    parser.add_argument("--schedule", nargs="+", type=int, default=[1, 2, 4, 8], help="full training's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, help="cap every run (a reduced check, not a result)")
    parser.add_argument("--variant", default="i29")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default="/tmp/mapscale-large-options")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    args.resnet_epochs = args.epochs  # base_overrides' resnet18 epochs
    cap = [f"optim.max_steps={args.max_steps}"] if args.max_steps else []
    jobs = []
    for epochs in args.schedule:
        case = {"target": "resnet18", "grouping": "-", "budget": 0, "method": "full", "variant": f"{args.variant}-e{epochs}",
                "extra": [f"optim.epochs={epochs}", *cap], "option": "full", "epochs": epochs}
        jobs.append((case, default_lr("full"), args.seed))
    for option in args.options:
        for budget in args.budgets if option == "plain" else (args.option_budgets or args.budgets):
            case = {"target": "resnet18", "grouping": "lwt", "budget": budget, "method": "mapping-sparse", "variant": f"{args.variant}-{option}-e{args.epochs}",
                    "extra": [*OPTIONS[option], *cap], "option": option, "epochs": args.epochs}
            jobs.append((case, default_lr("mapping-sparse"), args.seed))
    log, done = run_log(args.runs)
    started = time.perf_counter()
    run_all(jobs, done, log, vars(args), args.workers)

    from frontier import trainable_count

    lines = [
        "# What a large target needs: the mapping's options on resnet18", "",
        f"`python bench/large_options.py {' '.join(sys.argv[1:])}` ({(time.perf_counter() - started) / 60:.0f} min of this invocation; {len(jobs)} runs "
        f"in `{args.runs}/runs.jsonl`). torchvision resnet18 on the shipped MNIST subset (3,500 train, 500 validation, 1,000 test), seed {args.seed}, "
        "each method's default rate. One seed: a ranking of options, not an accuracy claim.", "",
        "| option | budget | trainable | P / trainable | epochs | lr | validation | test | train - test | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    size = trainable_count({"target": "resnet18", "grouping": "-", "budget": 0, "method": "full", "extra": []}, args)
    for case, lr, seed in jobs:
        r = done[key(case, lr, seed)]
        trainable = trainable_count(case, args)
        lines.append(f"| {case['option']} | {case['budget'] or '-'} | {trainable:,} | {size / trainable:.1f} | {case['epochs']} | {lr:g} | "
                     f"{fmt([r['validation']], 100)} | {fmt([r['test']], 100)} | {fmt([r['train'] - r['test']], 100)} | {r['seconds']:.0f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
