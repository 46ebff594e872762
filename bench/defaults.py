"""Defaults chosen by measurement (issue 17): one relative learning rate per method, swept over every budget,
grouping, operator and target, chosen on a validation split, then checked with 3 seeds on the test split.

    python bench/defaults.py --targets cnn2 --out bench/results/defaults_cnn2.md        # ~40 minutes on 2 cores
    python bench/defaults.py --targets resnet18 gpt --out bench/results/defaults_big.md
    python bench/defaults.py --targets cnn2 --budgets 512 --lrs 0.1 0.3 --epochs 1 --out /tmp/d.md   # a quick check

**Cases.** CNN2 (108,618 parameters) on the shipped MNIST subset (4,000 train, of which 500 are held out for
validation, and 1,000 test), SLVT and LWT at every budget of ``--budgets``; torchvision ``resnet18`` (11.2M
parameters, BatchNorm) on the same 28x28 images replicated to 3 channels (the stock 3-channel stem: 9,408
weights instead of a 1-channel stem's 3,136), LWT 2,048; a GPT of 4 layers x 256 (3.3M parameters), byte-level,
one latent per block (LWT) 4,096, on a corpus this script builds from the Python standard library's own ``.py``
files (sorted, the first 4 MB; the last 10% is the test split; each split capped at its first 1,600 windows of
128 bytes, so that evaluating the whole training split for the gap stays cheap; 10% of the training windows,
drawn at random, are the validation split). Methods: the mapping
with each operator of ``--operators`` (``dense`` only for CNN2 SLVT 2,048, the one layout it builds quickly),
random subspace (``scale="relative"``, sparse projection), RPG and full training.

**Protocol.** (1) Sweep: every case at every rate of ``--lrs`` (full training: ``--full-lrs``), seed 0, scored
on the validation split. (2) The default of each method family (the mapping's operators share one) is the rate
whose worst shortfall from each case's best validation score is smallest. (3) Every case is trained at that
default with seeds 0-2, and at its own best rate with seeds 0-2 when that differs: the table gives how far the
default lands from the best (validation, mean of 3 seeds), and test score, train-test gap at the default.
(4) Step time against the plain step (full training's) measured in the same process, interleaved, and each
method's fixed-state bytes (``MappedModel.fixed_bytes``).

Every run is an ordinary mapscale run (``mapscale.train.train``) and is appended to ``<runs>/runs.jsonl`` as it
finishes: an interrupted bench resumes where it stopped. Runs go to ``--workers`` processes of one thread each.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import sysconfig
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LRS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
FULL_LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
CORPUS_BYTES = 4_000_000
GPT_ARGS = {"vocab": 256, "positions": 128, "width": 256, "layers": 4, "heads": 4}
GPT_GROUPS = {"embeddings": ["wte.*", "wpe.*"], **{f"block{i}": [f"h.{i}.*"] for i in range(4)}, "ln_f": ["ln_f.*"]}


def stdlib_sources():
    """The standard library's ``.py`` files (site-packages left out), sorted by relative path: the benches' text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for file in sorted(stdlib.rglob("*.py"), key=lambda p: p.relative_to(stdlib).as_posix()):
        if "site-packages" not in file.parts:
            yield file


def corpus(folder: Path) -> Path:
    """The standard library's ``.py`` files (`stdlib_sources`) concatenated up to `CORPUS_BYTES`."""
    path = folder / "stdlib_corpus.txt"
    if not path.exists():
        chunks, size = [], 0
        for file in stdlib_sources():
            if size >= CORPUS_BYTES:
                break
            data = file.read_bytes()
            chunks.append(data)
            size += len(data)
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(chunks)[:CORPUS_BYTES])
    return path


def base_overrides(target: str, args) -> tuple[str, list[str]]:
    """``(recipe file, overrides)`` of a target's runs before the method's."""
    common = ["output.progress=false", "output.log_every=50"]
    if target == "cnn2":
        return "recipes/mnist_cnn2.py", [*common, "data.validation_size=500", f"optim.epochs={args.epochs}"]
    if target == "resnet18":
        return "recipes/mnist_cnn2.py", [
            *common, "target.name=torchvision:resnet18", 'target.args={"num_classes": 10}', "data.channels=3",
            "data.validation_size=500", f"optim.epochs={args.resnet_epochs}",
        ]
    text = corpus(Path(args.runs))
    return "recipes/gpt2_small_lwt.py", [
        *common, f"target.args={json.dumps(GPT_ARGS)}", f"data.path={text}", "data.window=128", "data.test_size=0.1",
        "data.validation_size=0.1", "data.max_examples=1600", "optim.batch_size=16", f"optim.max_steps={args.gpt_steps}", "optim.epochs=1000",
        "output.eval_every=0",
    ]


def method_overrides(method: str, grouping: str, budget: int) -> list[str]:
    group = json.dumps(GPT_GROUPS) if grouping == "blocks" else grouping
    if method == "full":
        return ["mapping.method=full"]
    shared = [f"mapping.grouping={group}", f"mapping.budget={budget}"]
    if method.startswith("mapping-"):
        return ["mapping.method=mapping", *shared, f"mapping.operator={method.split('-', 1)[1]}", "mapping.offset=init"]
    if method == "subspace":
        return ["mapping.method=subspace", *shared, "mapping.operator=sparse"]
    return ["mapping.method=rpg", *shared]


def cases(args) -> list[dict]:
    out = []
    for target in args.targets:
        if target == "cnn2":
            layouts = [(g, b) for g in ("slvt", "lwt") for b in args.budgets]
        else:
            layouts = [("lwt", 2048)] if target == "resnet18" else [("blocks", 4096)]
        for grouping, budget in layouts:
            methods = [f"mapping-{op}" for op in args.operators if op != "dense" or (target, grouping, budget) == ("cnn2", "slvt", 2048)]
            for method in [*methods, "subspace", "rpg"]:
                out.append({"target": target, "grouping": grouping, "budget": budget, "method": method})
        out.append({"target": target, "grouping": "-", "budget": 0, "method": "full"})
    return out


def key(case: dict, lr: float, seed: int) -> str:
    variant = f"/{case['variant']}" if case.get("variant") else ""
    return f"{case['target']}/{case['grouping']}/{case['budget']}/{case['method']}{variant}/lr{lr:g}/seed{seed}"


def family(method: str) -> str:
    return "mapping" if method.startswith("mapping-") else method


def default_lr(method: str) -> float:
    """The library's default rate of a bench method (``mapping-sparse`` is the mapping's)."""
    from mapscale.methods import METHODS

    return METHODS[family(method)].section.default_lr


def run_one(job: tuple[dict, float, int, dict]) -> dict:
    """Train one case at one rate and seed in this worker; its validation, test and train scores."""
    import torch

    from mapscale.recipe import load_recipe
    from mapscale.train import train, write_run_files

    case, lr, seed, settings = job
    torch.set_num_threads(1)
    args = argparse.Namespace(**settings)
    recipe_file, overrides = base_overrides(case["target"], args)
    overrides = [*overrides, *method_overrides(case["method"], case["grouping"], case["budget"]), *case.get("extra", []), f"optim.lr={lr}", f"seed={seed}"]
    if case["method"] != "full":
        overrides.append(f"mapping.seed={seed}")
    name = key(case, lr, seed).replace("/", "_")
    overrides += [f"output.root={args.runs}", f"output.run_name={name}"]
    recipe = load_recipe(ROOT / recipe_file, overrides)
    run_dir = Path(args.runs) / name
    write_run_files(run_dir, recipe, None, overrides)
    started = time.perf_counter()
    try:
        result = train(recipe, run_dir)
        metric = "accuracy" if case["target"] != "gpt" else "perplexity"
        scores = {split: result_split.get(metric, math.nan) for split, result_split in
                  (("validation", result.final_validation), ("test", result.final), ("train", result.final_train))}
    except Exception as err:  # a diverged or failed run is a result too (NaN), not the end of the bench
        scores = {"validation": math.nan, "test": math.nan, "train": math.nan, "error": f"{type(err).__name__}: {err}"[:300]}
    return {"key": key(case, lr, seed), **case, "lr": lr, "seed": seed, **scores, "seconds": time.perf_counter() - started}


def score(record: dict, target: str) -> float:
    """Higher is better: accuracy in points, or minus perplexity; NaN (diverged) counts as worst."""
    value = record["validation"]
    if value is None or not math.isfinite(value):
        return -math.inf
    return 100 * value if target != "gpt" else -value


def run_log(runs: str | Path) -> tuple[Path, dict]:
    """``(<runs>/runs.jsonl, {key: record} of the runs it already holds)``: what a bench resumes from."""
    log = Path(runs) / "runs.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    return log, {r["key"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}


def run_all(jobs: list, done: dict, log: Path, settings: dict, workers: int, runner=None, name=None) -> None:
    """Run the ``(case, lr, seed)`` jobs not yet in ``done`` on ``workers`` processes, with ``runner((*job,
    settings))`` (default `run_one`), appending each record to ``log`` as it finishes; ``name(job)`` is a job's
    record key (default `key`)."""
    runner, name = runner or run_one, name or (lambda job: key(*job))
    todo = [job for job in jobs if name(job) not in done]
    if not todo:
        return
    print(f"{len(todo)} runs to do ({len(jobs) - len(todo)} already done)", flush=True)
    with ProcessPoolExecutor(workers) as pool, log.open("a") as out:
        for record in pool.map(runner, [(*job, settings) for job in todo]):
            done[record["key"]] = record
            out.write(json.dumps(record) + "\n")
            out.flush()
            print(f"  {record['key']}: val {record['validation']:.4f} test {record['test']:.4f} ({record['seconds']:.0f} s)", flush=True)


def lrs_of(case: dict, args) -> list[float]:
    return args.full_lrs if case["method"] == "full" else args.lrs


def choose_defaults(all_cases: list[dict], done: dict, args) -> dict[str, float]:
    """Per method family: the rate with the smallest worst shortfall from each case's best (seed 0, validation)."""
    defaults = {}
    for fam in sorted({family(c["method"]) for c in all_cases}):
        members = [c for c in all_cases if family(c["method"]) == fam]
        lrs = lrs_of(members[0], args)
        table = {id(c): {lr: score(done[key(c, lr, 0)], c["target"]) for lr in lrs} for c in members}
        shortfall = {lr: max(max(t.values()) - t[lr] for t in table.values()) for lr in lrs}
        defaults[fam] = min(lrs, key=lambda lr: (shortfall[lr], -lr))
    return defaults


def timing(target: str, methods: list[dict], args) -> dict[str, dict]:
    """Median step time of each method against full training's, interleaved in this process, and fixed bytes."""
    import torch

    from mapscale.distributed.world import World
    from mapscale.recipe import load_recipe
    from mapscale.train import prepare, train_step
    from mapscale.train.loop import batches

    torch.set_num_threads(2)
    runs = {}
    for case in methods:
        recipe_file, overrides = base_overrides(target, args)
        recipe = load_recipe(ROOT / recipe_file, [*overrides, *method_overrides(case["method"], case["grouping"], case["budget"])])
        runs[case["method"]] = prepare(recipe, World(), "cpu")
    times: dict[str, list[float]] = {m: [] for m in runs}
    iterators = {m: batches(run, 0) for m, run in runs.items()}
    for step in range(args.timing_steps + 2):
        for method, run in runs.items():
            _, batch, micro = next(iterators[method])
            started = time.perf_counter()
            train_step(run, micro, len(batch), step)
            if step >= 2:
                times[method].append(time.perf_counter() - started)
    plain = statistics.median(times["full"])
    return {m: {"step_s": statistics.median(t), "ratio": statistics.median(t) / plain, "fixed_bytes": runs[m].model.fixed_bytes()} for m, t in times.items()}


ABLATION = {  # name -> overrides of the mapping's defaults (offset init, multiplicative modulation, onecycle)
    "offset init, multiplicative, onecycle": [],
    "offset mean": ["mapping.offset=mean"],
    "modulation none": ["mapping.modulation=none"],
    "modulation additive": ["mapping.modulation=additive"],
    "schedule cosine": ["optim.schedule=cosine"],
    "schedule constant": ["optim.schedule=constant"],
}


def ablation(lr: float, done: dict, log: Path, args) -> list[str]:
    """The mapping's other defaults, one change at a time from offset init / multiplicative / onecycle, on CNN2
    SLVT and LWT 2,048 (sparse operator, the default rate), 3 seeds, validation and test."""
    variants = [
        {"target": "cnn2", "grouping": g, "budget": 2048, "method": "mapping-sparse", "variant": name.replace(" ", "-").replace(",", ""), "extra": extra, "name": name}
        for g in ("slvt", "lwt") for name, extra in ABLATION.items()
    ]
    seeds = range(args.seeds)
    run_all([(v, lr, s) for v in variants for s in seeds], done, log, vars(args), args.workers)
    lines = [
        f"## The mapping's other defaults (CNN2, budget 2,048, sparse operator, lr {lr:g}, {args.seeds} seeds)", "",
        "| grouping | setting | validation | test | train - test |", "|---|---|---:|---:|---:|",
    ]
    for v in variants:
        records = [done[key(v, lr, s)] for s in seeds]
        lines.append(f"| {v['grouping']} | {v['name']} | {fmt([r['validation'] for r in records], 100)} | {fmt([r['test'] for r in records], 100)} | "
                     f"{fmt([r['train'] - r['test'] for r in records], 100)} |")
    return [*lines, ""]


def plot(all_cases: list[dict], done: dict, args, path: Path) -> None:
    """Validation score against the learning rate, seed 0: one panel per target, one line per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in ("cnn2", "resnet18", "gpt") if t in args.targets]
    figure, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4.2), squeeze=False)
    colours = {"mapping": "tab:blue", "subspace": "tab:orange", "rpg": "tab:green"}
    for axis, target in zip(axes[0], targets):
        for c in (c for c in all_cases if c["target"] == target and c["method"] != "full"):
            values = [done[key(c, lr, 0)]["validation"] for lr in args.lrs]
            values = [(100 * v if target != "gpt" else v) if v is not None and math.isfinite(v) else math.nan for v in values]
            axis.plot(args.lrs, values, color=colours[family(c["method"])], alpha=0.45, linewidth=1, marker=".")
        axis.set_xscale("log")
        axis.set_xlabel("relative learning rate")
        axis.set_ylabel("validation perplexity (log)" if target == "gpt" else "validation accuracy (%)")
        if target == "gpt":
            axis.set_yscale("log")
        else:
            axis.set_ylim(40 if target == "resnet18" else 60, 100)
        axis.set_title({"cnn2": "CNN2, SLVT and LWT, budgets 512-4,096", "resnet18": "resnet18, LWT 2,048", "gpt": "GPT 4 x 256, LWT 4,096"}[target])
    for fam, colour in colours.items():
        axes[0][0].plot([], [], color=colour, label=fam if fam != "mapping" else "mapping (every operator)")
    axes[0][0].legend(loc="lower center")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def fmt(values: list[float], scale: float) -> str:
    values = [v * scale for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "diverged"
    return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=["cnn2", "resnet18", "gpt"], choices=["cnn2", "resnet18", "gpt"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    parser.add_argument("--operators", nargs="+", default=["sparse", "structured", "dense"])
    parser.add_argument("--lrs", nargs="+", type=float, default=LRS)
    parser.add_argument("--full-lrs", nargs="+", type=float, default=FULL_LRS)
    parser.add_argument("--epochs", type=int, default=4, help="CNN2 epochs")
    parser.add_argument("--resnet-epochs", type=int, default=1)
    parser.add_argument("--gpt-steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timing-steps", type=int, default=10)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--ablation", action="store_true", help="also the offset / modulation / schedule ablation on CNN2")
    parser.add_argument("--runs", default="/tmp/mapscale-defaults")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    settings = vars(args)
    log, done = run_log(args.runs)
    all_cases = cases(args)
    started = time.perf_counter()

    run_all([(c, lr, 0) for c in all_cases for lr in lrs_of(c, args)], done, log, settings, args.workers)
    defaults = choose_defaults(all_cases, done, args)
    best = {id(c): max(lrs_of(c, args), key=lambda lr: score(done[key(c, lr, 0)], c["target"])) for c in all_cases}
    seeds = range(args.seeds)
    jobs = [(c, defaults[family(c["method"])], s) for c in all_cases for s in seeds]
    jobs += [(c, best[id(c)], s) for c in all_cases for s in seeds if best[id(c)] != defaults[family(c["method"])]]
    run_all(jobs, done, log, settings, args.workers)
    timed = {"cnn2": ("slvt", 2048), "resnet18": ("lwt", 2048), "gpt": ("blocks", 4096)}  # one layout per target
    timings = {} if args.no_timing else {
        t: timing(t, [c for c in all_cases if c["target"] == t and (c["method"] == "full" or (c["grouping"], c["budget"]) == timed[t])], args)
        for t in args.targets
    }

    lines = [
        "# Defaults by measurement: one relative learning rate per method",
        "",
        f"`python bench/defaults.py {' '.join(sys.argv[1:])}` ({(time.perf_counter() - started) / 60:.0f} min of this invocation; "
        f"{len(done)} runs in `runs.jsonl`). CNN2 {args.epochs} epochs, resnet18 {args.resnet_epochs} epochs, GPT {args.gpt_steps} steps; "
        "scores: accuracy in points (CNN2, resnet18) or perplexity (GPT); rates chosen on the validation split, seed 0; "
        f"3 seeds ({', '.join(map(str, seeds))}) at the default and at each case's best.",
        "",
        "Defaults chosen (smallest worst shortfall over the family's cases): "
        + ", ".join(f"**{fam}** {lr:g}" for fam, lr in defaults.items()),
        "",
        "## Sweep (validation, seed 0)",
        "",
        "| target | grouping | budget | method | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " |",
        "|---|---|---:|---|" + "---:|" * len(args.lrs),
    ]
    for c in all_cases:
        scale = 100 if c["target"] != "gpt" else 1
        cells = [fmt([done[key(c, lr, 0)]["validation"]], scale) + (" *" if lr == best[id(c)] else "") for lr in lrs_of(c, args)]
        lines.append(f"| {c['target']} | {c['grouping']} | {c['budget'] or '-'} | {c['method']} | " + " | ".join(cells) + " |")
    lines += ["", f"Full training's rates, in the same columns: {', '.join(f'{lr:g}' for lr in args.full_lrs)}. `*`: the case's best.", ""]
    lines += [
        "## The default against each case's best (3 seeds)",
        "",
        "| target | grouping | budget | method | default lr | best lr | validation at default | validation at best | default - best | test at default | train - test at default |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in all_cases:
        gpt = c["target"] == "gpt"
        scale = 1 if gpt else 100
        d, b = defaults[family(c["method"])], best[id(c)]
        at = {lr: [done[key(c, lr, s)] for s in seeds] for lr in {d, b}}
        val = {lr: [r["validation"] for r in rs] for lr, rs in at.items()}
        finite = {lr: [v for v in vs if v is not None and math.isfinite(v)] for lr, vs in val.items()}
        delta = (statistics.mean(finite[d]) - statistics.mean(finite[b])) * scale if finite[d] and finite[b] else math.nan
        gap = [(r["train"] - r["test"]) * (1 if gpt else 100) for r in at[d]]
        if gpt:  # perplexity: the gap is test - train, and the difference is relative
            delta = 100 * (statistics.mean(finite[d]) / statistics.mean(finite[b]) - 1) if finite[d] and finite[b] else math.nan
            gap = [r["test"] - r["train"] for r in at[d]]
        unit = "%" if gpt else " pt"
        lines.append(
            f"| {c['target']} | {c['grouping']} | {c['budget'] or '-'} | {c['method']} | {d:g} | {b:g} | {fmt(val[d], scale)} | {fmt(val[b], scale)} | "
            f"{delta:+.2f}{unit} | {fmt([r['test'] for r in at[d]], scale)} | {fmt(gap, 1)} |"
        )
    lines += ["", "GPT rows: perplexity (lower is better); `default - best` is the relative excess perplexity, the gap is test - train perplexity.", ""]
    if timings:
        lines += ["## Step time and fixed state", "", "| target | method | step s | step / plain | fixed state bytes |", "|---|---|---:|---:|---:|"]
        for t, rows in timings.items():
            for m, row in rows.items():
                lines.append(f"| {t} | {m} | {row['step_s']:.4f} | {row['ratio']:.2f}x | {row['fixed_bytes']:,} |")
        lines += ["", f"Median of {args.timing_steps} steps after 2 warm-up steps, methods interleaved step by step in one process on 2 threads; "
                  "CNN2 at SLVT 2,048, resnet18 at LWT 2,048, GPT at LWT 4,096.", ""]
    if args.ablation and "cnn2" in args.targets:
        lines += ablation(defaults["mapping"], done, log, args)
    picture = Path(args.out).with_suffix(".png")
    plot(all_cases, done, args, picture)
    lines += [f"![validation against learning rate]({picture.name})", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
