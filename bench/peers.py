"""mapscale against the simpler ways to train few parameters, on the shipped MNIST subset, side by side.

    python bench/peers.py --out bench/results/peers_mnist5k.md            # everything (about an hour, 2 cores)
    python bench/peers.py --budgets 1024 --seeds 1 --max-steps 5 --out /tmp/p.md   # a reduced check

**From scratch** (CNN2, 108,618 parameters; 4,000 train / 1,000 test): full training, mapscale SLVT and LWT
with the full Mapping Loss (stability, smoothness and alignment; fixed weights, see ``FULL_LOSS``), random-subspace
training (Li et al. 2018: ``theta0 + P z``, dense ``P``) and RPG (Wang et al. 2021: one trainable ring), each at
every trainable budget in ``--budgets`` and for every seed (the seed keys the target init, the mapping or
projection or ring, and the data order).

**Fine-tuning**: CNN2 is first trained in full on digits 0-4 (the benchmark does this itself), then tuned on
digits 5-9 of the same subset, on its two Linear layers (``7``, ``9``: 103,818 weights), by mapscale's
fine-tuning mode (L = 1, SLVT), LoRA and VeRA (``peft``, rank matched to the budget) and a linear probe (the
head ``9`` alone, 1,290 parameters, whatever the budget).

**Learning rates**: full training (1e-3) and mapscale's from-scratch rows (5e-2) keep the rates earlier
benchmarks set for them (``bench/paper_table.py``); every peer, and every fine-tuning method, takes the best
of ``--lrs`` by final test accuracy at the middle budget with the first seed (``--no-sweep``: the defaults
below), so no peer is held back by a rate chosen for mapscale. The sweep selects on the test split, as every row does alike; it says which rate each method
likes, not a held-out result.

Every row is an ordinary run of ``recipes/mnist_cnn2.py`` with overrides, trained by the mapscale trainer;
runs go under ``--runs`` and a finished run is read back, not trained again (``--fresh`` retrains). The table
gives mean and spread (population std over seeds) of final test accuracy, the train-test gap, and the median
step time relative to full training measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mapscale.methods import METHODS as LIBRARY_METHODS  # noqa: E402  (this script has its own METHODS)
from mapscale.recipe import load_recipe  # noqa: E402
from mapscale.report import RunSummary, summarize  # noqa: E402
from mapscale.train import load_run, train, write_run_files  # noqa: E402
from paper_table import finished, seconds_per_step  # noqa: E402  (bench/, this script's folder, is on sys.path)

RECIPE = ROOT / "recipes" / "mnist_cnn2.py"
# Every term of the Mapping Loss, with bench/mapping_loss.py's fixed weights, on pure generation (offset=mean:
# latents start N(0, 1)). Two other settings trained nothing on CNN2 (60 steps, SLVT 1,024, chance accuracy):
# learned λ started at 0.5 (smoothness, ~60, swamps the task loss) and alignment on offset=init recipes, whose
# latents start at 0 where the cosine has no direction (see MappingMethod.check_loss in mapscale.methods).
FULL_LOSS = ("mapping.offset=mean", "loss.coefficients=fixed", "loss.stability=1.0", "loss.smoothness=1e-3", "loss.alignment=1e-2")
OLD, NEW = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
TUNED = '["7.*", "9.*"]'


@dataclass(frozen=True)
class Method:
    key: str
    name: str
    part: str  # "scratch" or "finetune"
    overrides: tuple[str, ...]  # {budget} is replaced by the budget
    lr: float  # used without a sweep
    budgeted: bool = True
    swept: bool = True  # its learning rate comes from the sweep (mapscale's and full training's were set by earlier benches)

    @property
    def seeded(self) -> bool:
        """Its recipe section has a ``seed`` (keying the mapping, projection, ring or adapters); full training's has none."""
        chosen = next((o.split("=", 1)[1] for o in self.overrides if o.startswith("mapping.method=")), "mapping")  # the recipe's: mapping
        return "seed" in LIBRARY_METHODS[chosen].section.model_fields


METHODS = [
    Method("full", "full training", "scratch", ("mapping.method=full",), 1e-3, budgeted=False, swept=False),
    Method("slvt", "mapscale SLVT + Mapping Loss", "scratch", ("mapping.budget={budget}", *FULL_LOSS), 5e-2, swept=False),
    Method("lwt", "mapscale LWT + Mapping Loss", "scratch", ("mapping.grouping=lwt", "mapping.budget={budget}", *FULL_LOSS), 5e-2, swept=False),
    # An ablation of the two rows above: the recipe as committed (offset=init, task loss alone), rate swept like a peer.
    Method("slvt-plain", "mapscale SLVT, task loss, offset=init", "scratch", ("mapping.budget={budget}",), 5e-2),
    Method("subspace", "random subspace (Li et al.)", "scratch", ("mapping.method=subspace", "mapping.budget={budget}"), 5e-2),
    Method("rpg", "RPG ring (Wang et al.)", "scratch", ("mapping.method=rpg", "mapping.budget={budget}"), 5e-2),
    Method("ft-mapscale", "mapscale fine-tune (L=1)", "finetune", ("mapping.method=finetune", f"mapping.tuned={TUNED}", "mapping.budget={budget}"), 5e-2),
    Method("ft-lora", "LoRA (peft)", "finetune", ("mapping.method=lora", f"mapping.tuned={TUNED}", "mapping.budget={budget}"), 1e-2),
    Method("ft-vera", "VeRA (peft)", "finetune", ("mapping.method=vera", f"mapping.tuned={TUNED}", "mapping.budget={budget}"), 1e-2),
    Method("ft-probe", "linear probe (head only)", "finetune", ("mapping.method=full", 'mapping.frozen=["0.*", "3.*", "7.*"]'), 1e-2, budgeted=False),
]
BY_KEY = {m.key: m for m in METHODS}


def run(name: str, overrides: list[str], args, console: Console) -> tuple[RunSummary, float]:
    """Train one run (or read back its finished directory): its summary and seconds per step."""
    overrides = [*overrides, f"optim.epochs={args.epochs}", f"output.root={args.runs}", f"output.run_name={name}", "output.progress=false"]
    if args.max_steps:
        overrides.append(f"optim.max_steps={args.max_steps}")
    if args.max_examples:
        overrides.append(f"data.max_examples={args.max_examples}")
    recipe = load_recipe(RECIPE, overrides)
    run_dir = Path(args.runs) / name
    if args.fresh or not finished(run_dir) or json.loads((run_dir / "recipe.json").read_text()) != recipe.model_dump(mode="json"):
        shutil.rmtree(run_dir, ignore_errors=True)
        write_run_files(run_dir, recipe, RECIPE, overrides)
        started = time.perf_counter()
        result = train(recipe, run_dir, device="cpu", console=Console(quiet=True))
        console.print(f"  {name}: test {result.final.get('accuracy', float('nan')):.4f}, train {result.final_train.get('accuracy', float('nan')):.4f}, {time.perf_counter() - started:.0f} s")
    return summarize(run_dir), seconds_per_step(run_dir, recipe.optim.batch_size)


def method_overrides(method: Method, budget: int, seed: int, lr: float, pretrained: Path | None) -> list[str]:
    seeds = [f"seed={seed}", f"mapping.seed={seed}"] if method.seeded else [f"seed={seed}"]
    out = [o.replace("{budget}", str(budget)) for o in method.overrides] + [*seeds, f"optim.lr={lr:g}"]
    if method.part == "finetune":
        out += [f"data.classes={NEW}", f"target.weights={pretrained}"]
    return out


def pretrain(args, console: Console) -> Path:
    """CNN2 trained in full on digits 0-4: the pretrained target of the fine-tuning part (a plain state_dict)."""
    summary, _ = run("pretrain-digits0-4", ["mapping.method=full", "optim.lr=1e-3", f"data.classes={OLD}"], args, console)
    weights = Path(args.runs) / "pretrain-digits0-4" / "weights.pt"
    _, model, _ = load_run(weights.parent)
    torch.save(model.materialize(), weights)
    console.print(f"pretrained on digits 0-4: test accuracy {summary.test:.4f} (digits 0-4 test split)")
    return weights


def sweep(method: Method, args, pretrained, console: Console) -> tuple[float, dict[float, float]]:
    """The best of ``--lrs`` for ``method`` at the middle budget and first seed: ``(lr, {lr: test accuracy})``."""
    if args.no_sweep or not method.swept:
        return method.lr, {}
    budget = args.budgets[len(args.budgets) // 2]
    scores = {}
    for lr in args.lrs:
        summary, _ = run(f"sweep-{method.key}-{budget}-lr{lr:g}", method_overrides(method, budget, args.seeds[0], lr, pretrained), args, console)
        scores[lr] = summary.test
    return max(scores, key=scores.get), scores


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values) * 100
    return f"{mean:.2f} ± {statistics.pstdev(values) * 100:.2f}" if len(values) > 1 else f"{mean:.2f}"


def table(rows: list[tuple[Method, int | None, list[tuple[RunSummary, float]]]], full_step: float | None, lrs: dict[str, float]) -> str:
    header = ["method", "budget", "trainable", "lr", "test acc % (mean ± std)", "train acc %", "gap (train - test)", "s/step", "step time vs full"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method, budget, results in rows:
        summaries = [s for s, _ in results]
        step = statistics.median(t for _, t in results)
        trainable = sorted({s.trainable for s in summaries})
        lines.append("| " + " | ".join([
            method.name, f"{budget:,}" if budget else "–", ", ".join(f"{t:,}" for t in trainable), f"{lrs[method.key]:g}",
            spread([s.test for s in summaries]), spread([s.train for s in summaries]),
            f"{statistics.fmean(s.train - s.test for s in summaries) * 100:+.2f}", f"{step:.3f}",
            f"{step / full_step:.2f}x" if full_step else "–",
        ]) + " |")
    return "\n".join(lines) + "\n"


def plot(rows, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, 2, figsize=(12, 4.5))
    for axes, part, title in zip(panels, ("scratch", "finetune"), ("from scratch (CNN2, digits 0-9)", "fine-tuning (digits 0-4 -> 5-9)")):
        for method in [m for m in METHODS if m.part == part]:
            points = [(statistics.fmean(s.trainable for s, _ in res), [s.test * 100 for s, _ in res]) for m, _, res in rows if m is method]
            if not points:
                continue
            xs = [x for x, _ in points]
            means = [statistics.fmean(v) for _, v in points]
            errors = [statistics.pstdev(v) if len(v) > 1 else 0.0 for _, v in points]
            axes.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=method.name)
        axes.set_xscale("log")
        axes.set(title=title, xlabel="trainable parameters", ylabel="test accuracy %")
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=[m.key for m in METHODS], choices=list(BY_KEY))
    parser.add_argument("--budgets", nargs="*", type=int, default=[512, 1024, 2048, 4096])
    parser.add_argument("--finetune-budgets", nargs="*", type=int, default=[1024, 2048, 4096], help="LoRA's smallest count on CNN2's Linear layers is 1,066 (rank 1)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--lrs", nargs="*", type=float, default=[3e-3, 3e-2, 3e-1, 1.0, 3.0])
    parser.add_argument("--no-sweep", action="store_true", help="use each method's default learning rate")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=None, help="cap every run (a reduced check, not a result)")
    parser.add_argument("--max-examples", type=int, default=None, help="use at most this many examples of each split (a reduced check)")
    parser.add_argument("--runs", default=str(ROOT / "bench" / "runs" / "peers"))
    parser.add_argument("--fresh", action="store_true", help="retrain runs whose finished directories exist")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table and a PNG plot next to it")
    args = parser.parse_args()
    console = Console(width=160)
    methods = [BY_KEY[k] for k in args.methods]
    console.print(f"peers on the shipped MNIST subset, {args.epochs} epochs, budgets {args.budgets} / {args.finetune_budgets}, seeds {args.seeds}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    started = time.perf_counter()
    pretrained = pretrain(args, console) if any(m.part == "finetune" for m in methods) else None
    lrs, sweeps = {}, {}
    for method in methods:
        lrs[method.key], sweeps[method.key] = sweep(method, args, pretrained, console)
        if sweeps[method.key]:
            console.print(f"{method.key}: lr {lrs[method.key]:g} ({', '.join(f'{lr:g}: {acc:.4f}' for lr, acc in sweeps[method.key].items())})")
    rows = []
    for method in methods:
        budgets = [None] if not method.budgeted else args.finetune_budgets if method.part == "finetune" else args.budgets
        for budget in budgets:
            results = [run(f"{method.key}-{budget or 'all'}-s{seed}", method_overrides(method, budget or 0, seed, lrs[method.key], pretrained), args, console) for seed in args.seeds]
            rows.append((method, budget, results))
    full_step = next((statistics.median(t for _, t in res) for m, _, res in rows if m.key == "full"), None)
    text = "\n".join(
        f"**{title}**\n\n" + table([r for r in rows if r[0].part == part], full_step, lrs)
        for part, title in (("scratch", "From scratch: CNN2 on digits 0-9"), ("finetune", "Fine-tuning: CNN2 pretrained on digits 0-4, tuned on digits 5-9"))
        if any(r[0].part == part for r in rows)
    )
    swept = "\n".join(f"- {BY_KEY[k].name}: " + ", ".join(f"lr {lr:g} -> {acc * 100:.2f}%" for lr, acc in s.items()) + f" (chose {lrs[k]:g})" for k, s in sweeps.items() if s)
    console.print(text, markup=False, highlight=False)
    console.print(swept, markup=False, highlight=False)
    if args.out is not None:
        command = " ".join(["python bench/peers.py", *sys.argv[1:]])
        header = (
            f"# mapscale against its peers on the shipped MNIST subset\n\n`{command}`: {args.epochs} epochs, batch 64, Adam with a one-cycle "
            f"schedule, seeds {args.seeds}, CPU ({torch.get_num_threads()} threads), torch {torch.__version__}; "
            f"{(time.perf_counter() - started) / 60:.0f} minutes in this invocation. Step time vs full: the median step of each row over the "
            f"median step of full training (from scratch), both measured by this invocation.\n\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + text + ("\nLearning-rate sweep (middle budget, first seed, final test accuracy):\n\n" + swept + "\n" if swept else ""))
        console.print(f"wrote {args.out} and {plot(rows, args.out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
