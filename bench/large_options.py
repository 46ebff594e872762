"""What a large target needs (issue 29, item 2): the mapping's options measured on torchvision resnet18 (11.2M
parameters, 62 tensors, BatchNorm) on the shipped MNIST subset, or on the GPT 4 x 256 (``--target gpt``:
steps instead of epochs, one latent per block, norms and biases as its ``direct`` tensors), against plain
LWT and full training.

    python bench/large_options.py --out bench/results/large_options.md                 # ~15 minutes on 2 cores
    python bench/large_options.py --target gpt --epochs 100 --schedule 100 --budgets 65536 --options plain direct gain warmup --out o.md
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

DIRECT = {"resnet18": ["*bn*", "*downsample.1.*", "conv1.*", "fc.*"], "gpt": ["*ln_*", "*.bias"]}
OPTIONS = {
    "plain": lambda target: [],
    "direct": lambda target: [f"mapping.trainable={json.dumps(DIRECT[target])}", "mapping.trainable_lr=0.003", *direct_groups(target)],
    "gain": lambda target: ["mapping.gain=true"],
    "power1": lambda target: ["mapping.budget_power=1"],
    "warmup": lambda target: ["optim.warmup_fraction=0.05"],
}


def direct_groups(target: str) -> list[str]:
    """The GPT's blocks grouping without its ``ln_f`` group, which the direct norms and biases empty."""
    from defaults import GPT_GROUPS

    return [f"mapping.grouping={json.dumps({k: v for k, v in GPT_GROUPS.items() if k != 'ln_f'})}"] if target == "gpt" else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="resnet18", choices=["resnet18", "gpt"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[16384, 65536])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--option-budgets", nargs="+", type=int, help="budgets of the options other than plain (default: --budgets)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs (resnet18) or steps (gpt) of the mapping's runs")
    parser.add_argument("--schedule", nargs="+", type=int, default=[1, 2, 4, 8], help="full training's epochs (resnet18) or steps (gpt)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max-steps", type=int, help="cap every run (a reduced check, not a result)")
    parser.add_argument("--variant", default="i29")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default="/tmp/mapscale-large-options")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    args.resnet_epochs = args.gpt_steps = args.epochs  # base_overrides' schedules
    args.gpt_tokenizer = ""  # bytes, as bench/defaults.py's GPT
    gpt = args.target == "gpt"
    cap = [f"optim.max_steps={args.max_steps}"] if args.max_steps else []
    jobs = []
    for epochs in args.schedule:
        length = f"optim.max_steps={epochs}" if gpt else f"optim.epochs={epochs}"
        case = {"target": args.target, "grouping": "-", "budget": 0, "method": "full", "variant": f"{args.variant}-e{epochs}",
                "extra": [length, *cap], "option": "full", "epochs": epochs}
        jobs += [(case, default_lr("full"), seed) for seed in args.seeds]
    for option in args.options:
        for budget in args.budgets if option == "plain" else (args.option_budgets or args.budgets):
            case = {"target": args.target, "grouping": "blocks" if gpt else "lwt", "budget": budget, "method": "mapping-sparse",
                    "variant": f"{args.variant}-{option}-e{args.epochs}", "extra": [*OPTIONS[option](args.target), *cap], "option": option, "epochs": args.epochs}
            jobs += [(case, default_lr("mapping-sparse"), seed) for seed in args.seeds]
    log, done = run_log(args.runs)
    started = time.perf_counter()
    run_all(jobs, done, log, vars(args), args.workers)

    from frontier import trainable_count

    lines = [
        f"# What a large target needs: the mapping's options on {args.target}", "",
        f"`python bench/large_options.py {' '.join(sys.argv[1:])}` ({(time.perf_counter() - started) / 60:.0f} min of this invocation; {len(jobs)} runs "
        f"in `{args.runs}/runs.jsonl`). " + ("The GPT 4 x 256 (bytes) of `bench/defaults.py` on the standard library's code, one latent per block; "
        "validation and test are perplexities (lower is better). " if gpt else
        "torchvision resnet18 on the shipped MNIST subset (3,500 train, 500 validation, 1,000 test). ") +
        f"Seeds {', '.join(map(str, args.seeds))} (mean ± std), each method's default rate. One seed ranks options; it makes no accuracy claim.", "",
        f"| option | budget | trainable | P / trainable | {'steps' if gpt else 'epochs'} | lr | validation | test | {'test - train' if gpt else 'train - test'} | seconds (slowest) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    size = trainable_count({"target": args.target, "grouping": "-", "budget": 0, "method": "full", "extra": []}, args)
    for case, lr, seed in jobs:
        if seed != args.seeds[0]:
            continue
        rs = [done[key(case, lr, s)] for s in args.seeds]
        trainable = trainable_count(case, args)
        scale, gaps = (1, [r["test"] - r["train"] for r in rs]) if gpt else (100, [r["train"] - r["test"] for r in rs])
        lines.append(f"| {case['option']} | {case['budget'] or '-'} | {trainable:,} | {size / trainable:.1f} | {case['epochs']} | {lr:g} | "
                     f"{fmt([r['validation'] for r in rs], scale)} | {fmt([r['test'] for r in rs], scale)} | {fmt(gaps, scale)} | "
                     f"{max(r['seconds'] for r in rs):.0f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
