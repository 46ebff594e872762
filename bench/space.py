"""A space of trained models on the shipped MNIST subset: 4 runs of CNN2 SLVT 2,048 that share one mapping and
differ only in their latent init seed; interpolation, ensembles and warm-started search across their latents.

    python bench/space.py                                     # the full experiment (about 15 minutes on 2 CPU cores)
    python bench/space.py --out bench/results/space_mnist5k.md
    python bench/space.py --quick --runs /tmp/space --out /tmp/space.md   # a reduced check, not a result

Every run is an ordinary run of ``recipes/mnist_cnn2.py`` (CNN2 SLVT 2,048 around the target's init,
``offset="init"``) with ``mapping.latent_init_std=1`` (a latent start of unit-variance entries, which moves each
tensor by one init std: the recipe's default 0 would start every run at the same point) and
``mapping.latent_seed=i``, so all runs share the mapping fingerprint. The sources learn digits 0-4
(``data.classes``, about 2,000 of the 4,000 training images); interpolation and ensembles are measured on their
test split (the 500 test images of digits 0-4). The new task of the search is digits 5-9, started from the best
source latent (the lowest loss on the new task's training split before training) and from the mean source latent, against
a fresh latent (another latent seed), each evaluated every ``--eval-every`` steps on the digits 5-9 test split.
Source runs already finished under ``--runs`` are read back, not trained again (``--fresh`` retrains).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mapscale.recipe import load_recipe  # noqa: E402
from mapscale.report import _pyplot, _save  # noqa: E402
from mapscale.space import Space, latent_distances, search  # noqa: E402
from mapscale.train import load_checkpoint, train, write_run_files  # noqa: E402

RECIPE = ROOT / "recipes" / "mnist_cnn2.py"
OLD_DIGITS, NEW_DIGITS = "[0,1,2,3,4]", "[5,6,7,8,9]"
TARGETS = (0.8, 0.9, 0.95)


def source_runs(args) -> list[Path]:
    """The source runs (trained unless finished under --runs)."""
    dirs = []
    for i in range(1, args.sources + 1):
        run_dir = args.runs / f"cnn2-slvt-{args.budget}-latent-seed-{i}"
        overrides = [*args.common, f"data.classes={OLD_DIGITS}", f"mapping.latent_seed={i}", f"optim.epochs={args.epochs}",
                     f"output.root={args.runs}", f"output.run_name={run_dir.name}", "output.progress=false"]
        finished = (run_dir / "checkpoint.pt").exists() and not args.fresh
        if finished:
            state = load_checkpoint(run_dir)
            finished = state["step"] > 0 and state["recipe"]["optim"]["epochs"] == args.epochs
        if not finished:
            shutil.rmtree(run_dir, ignore_errors=True)
            recipe = load_recipe(RECIPE, overrides)
            write_run_files(run_dir, recipe, RECIPE, overrides)
            started = time.perf_counter()
            result = train(recipe, run_dir, device="cpu")
            print(f"{run_dir.name}: {result.step} steps in {time.perf_counter() - started:.0f} s, test accuracy {result.final['accuracy']:.4f}", flush=True)
        else:
            print(f"{run_dir.name}: finished run read back", flush=True)
        dirs.append(run_dir)
    return dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=4, help="source runs (latent seeds 1..N)")
    parser.add_argument("--budget", type=int, default=2048, help="latent size (SLVT)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each source run (the recipe's 8)")
    parser.add_argument("--search-epochs", type=int, default=4, help="epochs of each search run")
    parser.add_argument("--eval-every", type=int, default=4, help="search runs: evaluate every N steps")
    parser.add_argument("--steps", type=int, default=11, help="interpolation points, endpoints included")
    parser.add_argument("--max-examples", type=int, default=None, help="cap each split (a reduced check, not a result)")
    parser.add_argument("--quick", action="store_true", help="2 sources, latent 256, a few steps: checks the script, measures nothing")
    parser.add_argument("--runs", type=Path, default=ROOT / "bench" / "runs" / "space")
    parser.add_argument("--fresh", action="store_true", help="retrain source runs that exist")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "space_mnist5k.md")
    args = parser.parse_args()
    if args.quick:
        args.sources, args.budget, args.epochs, args.search_epochs, args.eval_every, args.steps = 2, 256, 1, 1, 2, 3
        args.max_examples = args.max_examples or 300
    args.common = [f"mapping.budget={args.budget}", "mapping.latent_init_std=1.0"]
    if args.max_examples:
        args.common.append(f"data.max_examples={args.max_examples}")
    started = time.perf_counter()

    # 1. The source runs: digits 0-4, one mapping, different latent init seeds.
    sources = source_runs(args)

    # 2. Interpolation between every pair, and the ensembles.
    space = Space.open(sources)
    pairs = [(a, b) for a in range(len(sources)) for b in range(a + 1, len(sources))]
    interpolations = [space.interpolate(a, b, args.steps) for a, b in pairs]
    ensemble = space.ensemble()
    distances = latent_distances(space.points)
    del space
    print(f"interpolation and ensembles done at {time.perf_counter() - started:.0f} s", flush=True)

    # 3. The new task (digits 5-9) from the sources' latents against a fresh latent.
    new_task = [*args.common, f"data.classes={NEW_DIGITS}", f"mapping.latent_seed={args.sources + 1}", f"optim.epochs={args.search_epochs}",
                f"output.root={args.runs}", "output.progress=false"]
    searches = {}
    for init in ("best", "mean"):
        out = args.runs / f"search-{init}"
        shutil.rmtree(out, ignore_errors=True)
        searches[init] = search(load_recipe(RECIPE, new_task), sources, out, init=init, target=TARGETS[1], eval_every=args.eval_every)
        print(f"search from the {init} latent done at {time.perf_counter() - started:.0f} s", flush=True)

    text = report(args, sources, interpolations, ensemble, distances, searches, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    plot(interpolations, ensemble, searches, args.out.with_suffix(".png"))
    print(text)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def report(args, sources, interpolations, ensemble, distances, searches, seconds: float) -> str:
    lines = [
        f"# A space of trained models: CNN2 SLVT {args.budget:,} on the shipped MNIST subset",
        "",
        f"`python bench/space.py{' --quick' if args.quick else ''}` ({seconds / 60:.1f} min on {torch.get_num_threads()} CPU threads). "
        f"{len(sources)} runs of `recipes/mnist_cnn2.py` on digits 0-4 (`data.classes={OLD_DIGITS}`), {args.epochs} epochs, "
        f"`mapping.latent_init_std=1`, `mapping.latent_seed=1..{len(sources)}`: one mapping (fingerprint {load_checkpoint(sources[0])['fingerprint']}), "
        "different starting latents. Metrics on the digits 0-4 test split"
        + (f" (capped at {args.max_examples} examples per split)" if args.max_examples else "") + ".",
        "",
        "## Interpolation: latent path vs weight path",
        "",
        "| pair | accuracy at t=0 | at t=1 | latent path at t=0.5 | weight path at t=0.5 | latent path minimum | weight path minimum | barrier latent | barrier weight |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in interpolations:
        mid = len(result.ts) // 2
        lat, wei = [r["accuracy"] for r in result.latent], [r["accuracy"] for r in result.weight]
        lines.append(f"| {result.run_a.split('-')[-1]} - {result.run_b.split('-')[-1]} | {lat[0]:.4f} | {lat[-1]:.4f} | {lat[mid]:.4f} | {wei[mid]:.4f} | "
                     f"{min(lat):.4f} | {min(wei):.4f} | {result.barrier('latent'):.4f} | {result.barrier('weight'):.4f} |")
    lines += [
        "",
        "Pair a - b: latent seeds. Barrier: the largest fall of test accuracy below the straight line between the endpoints "
        "(0: none). The endpoints equal each run's own logged final test accuracy exactly (the same evaluation).",
        "",
        f"The whole curve of the first pair ({interpolations[0].run_a} to {interpolations[0].run_b}):",
        "",
        interpolations[0].markdown(),
        "Latent distances between the runs (Euclidean, latent of "
        f"{args.budget:,}): " + ", ".join(f"{i + 1}-{j + 1} {distances[i][j]:.1f}" for i in range(len(distances)) for j in range(i + 1, len(distances))) + ".",
        "",
        "## Ensembles",
        "",
        ensemble.markdown(),
        "Averaged latent: one model, the mean of the members' latents. Output ensemble: the mean of the members' softmax "
        "probabilities (the loss is its NLL), at the members' total cost.",
        "",
        f"## Warm start: a new task (digits 5-9) from the sources' latents, {args.search_epochs} epochs, evaluated every {args.eval_every} steps",
        "",
    ]
    for init, result in searches.items():
        lines += [f"### init = {init}", "", result.markdown(list(TARGETS)),
                  f"Seconds per step: warm {result.seconds_per_step['warm']:.3f}, fresh {result.seconds_per_step['fresh']:.3f} (including evaluations).", ""]
    lines.append(f"![interpolation, ensembles, warm start]({args.out.with_suffix('.png').name})")
    return "\n".join(lines) + "\n"


def plot(interpolations, ensemble, searches, path: Path) -> Path:
    plt = _pyplot()
    figure, (ax_interp, ax_ens, ax_search) = plt.subplots(1, 3, figsize=(17, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, result in enumerate(interpolations):
        color, label = colors[k % len(colors)], f"{result.run_a.split('-')[-1]}-{result.run_b.split('-')[-1]}"
        ax_interp.plot(result.ts, [r["accuracy"] for r in result.latent], "o-", color=color, markersize=3, label=f"{label} latent")
        ax_interp.plot(result.ts, [r["accuracy"] for r in result.weight], "s--", color=color, markersize=3, alpha=0.7, label=f"{label} weight")
    ax_interp.set(xlabel="t", ylabel="test accuracy (digits 0-4)", title="latent path (solid) vs weight path (dashed)")
    ax_interp.legend(fontsize=7, ncol=2)
    ax_interp.grid(alpha=0.3)
    names = [f"seed {name.split('-')[-1]}" for name in ensemble.members] + ["averaged latent", "output ensemble"]
    values = [row["accuracy"] for _, row in ensemble.rows()]
    ax_ens.bar(range(len(names)), values, color=["tab:gray"] * len(ensemble.members) + ["tab:blue", "tab:orange"])
    ax_ens.set_xticks(range(len(names)), names, rotation=20, ha="right")
    low = min(values)
    ax_ens.set_ylim(max(0.0, low - 0.05), min(1.0, max(values) + 0.02))
    for i, v in enumerate(values):
        ax_ens.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
    ax_ens.set(ylabel="test accuracy (digits 0-4)", title="members, averaged latent, output ensemble")
    for init, result in searches.items():
        steps, acc = zip(*result.curves["warm"])
        ax_search.plot(steps, acc, "o-", markersize=2, label=f"warm ({init})")
    steps, acc = zip(*searches["best"].curves["fresh"])
    ax_search.plot(steps, acc, "k--", label="fresh latent")
    ax_search.set(xlabel="step", ylabel="test accuracy (digits 5-9)", title="new task: warm vs fresh latent")
    ax_search.grid(alpha=0.3)
    ax_search.legend()
    return _save(figure, path)


if __name__ == "__main__":
    main()
