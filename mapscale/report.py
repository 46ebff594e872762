"""Results of finished runs: a markdown table and PNG plots (`mapscale report RUN_DIR...`).

A run is read from its directory alone: ``recipe.json`` (what was trained) and ``metrics.jsonl`` (what
happened). The trainable count is the optimiser's (latents and learned loss coefficients), from a model built
on the meta device: shapes only, so a report on a resnet50 run costs no weights and no checkpoint load.
The train-test gap is always "how much worse on test": train - test for accuracy-like metrics, test - train
for mse (lower is better).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mapscale.metrics import PRIMARY
from mapscale.recipe import Recipe

GAP_RULE = "train − test; for mse test − train"  # positive: worse on the test split


@dataclass
class RunSummary:
    """One run's row of the table and its curves. Metric values are ``None`` where the log has none yet
    (a run stopped before its first evaluation, or before the final train-split evaluation)."""

    run: str  # the run directory's name
    recipe: str  # recipe.name
    task: str
    target: str
    strategy: str  # slvt, lwt, custom, or "finetune (L=k)"
    trainable: int  # what the optimiser updates
    target_params: int
    metric: str  # the task's primary metric (`mapscale.metrics.PRIMARY`)
    higher_is_better: bool
    test: float | None  # the last test evaluation
    train: float | None  # the final model on the training split ("train-eval")
    best: float | None  # the best test evaluation ...
    best_step: int | None  # ... and its step
    steps: int  # the last step logged
    train_loss: list[tuple[int, float]] = field(default_factory=list, repr=False)  # (step, task loss)
    test_curve: list[tuple[int, float]] = field(default_factory=list, repr=False)  # (step, primary metric)

    @property
    def reduction(self) -> float:
        """Target parameters per trainable value."""
        return self.target_params / max(self.trainable, 1)

    @property
    def gap(self) -> float | None:
        """How much worse the final model is on test than on train (``GAP_RULE``)."""
        if self.test is None or self.train is None:
            return None
        return self.train - self.test if self.higher_is_better else self.test - self.train


def strategy_name(recipe: Recipe) -> str:
    return recipe.mapping.describe()


def summarize(run_dir: Path | str) -> RunSummary:
    """Read one run directory. Raises ``FileNotFoundError`` naming the directory when it is not a run."""
    from mapscale.train import RunResult, build_loss, build_model, read_records, trainable_parameters

    run_dir = Path(run_dir)
    missing = [name for name in ("recipe.json", "metrics.jsonl") if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a run directory: no {' and no '.join(missing)}")
    try:
        recipe = Recipe.model_validate(json.loads((run_dir / "recipe.json").read_text()))
        records = read_records(run_dir)
        result = RunResult.load(run_dir)  # what a finished run reported; None for one still going or killed
    except ValueError as err:  # JSONDecodeError and pydantic's ValidationError alike
        raise ValueError(f"{run_dir} has an unreadable run file: {err}") from err
    metric, higher_is_better = PRIMARY[recipe.task]

    if result is not None:
        trainable, target_params = result.trainable, result.target_params
    else:
        model = build_model(recipe, "meta")  # shapes only: instant whatever the target's size
        trainable, target_params = sum(p.numel() for p in trainable_parameters(model, build_loss(recipe))), model.num_target_params()
    tests = [(r["step"], r[metric]) for r in records if r.get("split") == "test" and metric in r]
    train_evals = [r[metric] for r in records if r.get("split") == "train-eval" and metric in r]
    best = (max if higher_is_better else min)(tests, key=lambda t: t[1], default=(None, None))  # first of ties, as the trainer keeps
    return RunSummary(
        run=run_dir.resolve().name, recipe=recipe.name, task=recipe.task, target=recipe.target.name,
        strategy=strategy_name(recipe), trainable=trainable, target_params=target_params,
        metric=metric, higher_is_better=higher_is_better,
        test=tests[-1][1] if tests else None, train=train_evals[-1] if train_evals else None,
        best=best[1], best_step=best[0], steps=max((r["step"] for r in records), default=0),
        train_loss=[(r["step"], r["task"]) for r in records if r.get("split") == "train" and "task" in r],
        test_curve=tests,
    )


def markdown_table(summaries: list[RunSummary]) -> str:
    """One row per run. Reduction is target parameters / trainable; the gap follows ``GAP_RULE``."""
    header = [
        "run", "target", "strategy", "trainable params", "target params", "reduction", "metric",
        "test", "train", f"gap ({GAP_RULE})", "best test (step)", "steps",
    ]
    align = ["---"] * 3 + ["---:"] * 3 + ["---"] + ["---:"] * 5
    rows = [header, align]
    for s in summaries:
        rows.append([
            s.run, s.target, s.strategy, f"{s.trainable:,}", f"{s.target_params:,}", f"{s.reduction:,.1f}x", s.metric,
            _value(s.test), _value(s.train), "–" if s.gap is None else f"{s.gap:+.4f}",
            "–" if s.best is None else f"{s.best:.4f} ({s.best_step})", str(s.steps),
        ])
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows) + "\n"


def _value(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def plot_curves(summaries: list[RunSummary], path: Path | str) -> Path:
    """Two panels: the training (task) loss against step, and the test primary metric against step; one
    line per run."""
    plt = _pyplot()
    figure, (loss_axes, metric_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for s in summaries:
        if s.train_loss:
            loss_axes.plot(*zip(*s.train_loss), label=s.run)
        if s.test_curve:
            metric_axes.plot(*zip(*s.test_curve), marker="o", markersize=3, label=s.run)
    loss_axes.set(title="training loss", xlabel="step", ylabel="task loss")
    metric_axes.set(title="test", xlabel="step", ylabel=_metric_label(summaries))
    for axes in (loss_axes, metric_axes):
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize="small")
    return _save(figure, path)


def plot_metric_vs_trainable(summaries: list[RunSummary], path: Path | str) -> Path:
    """The final test primary metric against the trainable count (log scale), one labelled point per run."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    shown = [s for s in summaries if s.test is not None]
    axes.scatter([s.trainable for s in shown], [s.test for s in shown])
    for s in shown:
        axes.annotate(s.run, (s.trainable, s.test), textcoords="offset points", xytext=(5, 5), fontsize="small")
    axes.set_xscale("log")
    axes.set(title="final test metric vs trainable parameters", xlabel="trainable parameters", ylabel=_metric_label(summaries))
    axes.grid(alpha=0.3, which="both")
    return _save(figure, path)


def _metric_label(summaries: list[RunSummary]) -> str:
    metrics = sorted({s.metric for s in summaries})
    return metrics[0] if len(metrics) == 1 else f"primary metric ({', '.join(metrics)})"


def _pyplot():
    # Imported here, with the file-only backend, so `import mapscale` stays light and headless machines work.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path | str) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
