"""The space of trained models: runs that share a mapping differ only in their latents.

Runs with the same target, mapping section and seeds (equal `mapscale.train.fingerprint`, stored in every
checkpoint) generate their weights from one fixed mapping, so each trained model is a point ``z`` of one
low-dimensional space, a few kilobytes each (NetSpace, "Learning the Space of Deep Models", without having
to learn the space). This module makes that usable:

- `check_shared_mapping`: do the runs share a mapping? If not, which recipe fields differ (``SpaceError``).
- `Space.interpolate`: the test metric along the straight latent path ``z(t) = (1-t) z_A + t z_B`` and,
  for comparison, along the straight path between the materialised weights ``θ(t) = (1-t) θ_A + t θ_B``
  (a loss-barrier view). Everything a checkpoint holds of the model moves along the latent path (latents,
  directly trained tensors and buffers such as BatchNorm statistics); the weight path moves every tensor of
  the target's state_dict. Integer buffers take the nearer endpoint's value.
- `Space.ensemble`: the averaged-latent model and the output ensemble (mean of the members' softmax
  probabilities; the mean output for regression) next to each member.
- `search`: a new task (e.g. other classes, ``data.classes``) started from the best or the mean of existing
  latents, training only the latents, against a fresh latent: steps to a target metric.

Every metric comes from `mapscale.train.evaluate` on the first run's test split, the code path that logged
each run's own metrics, so the interpolation endpoints reproduce them exactly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from torch import Tensor, nn

from mapscale.data import DataSplits, build_datasets
from mapscale.mapping.contract import copy_latents
from mapscale.mapping.mapped import MappedModel
from mapscale.metrics import PRIMARY
from mapscale.recipe import Recipe, apply_overrides
from mapscale.report import _pyplot, _save
from mapscale.train import (
    build_model, evaluate, fingerprint, load_checkpoint, mapping_identity, read_records, restore_model_state, train, write_run_files,
)

LATENT_KEY = "generator.latents.{}"  # a group latent in a checkpoint's model state


class SpaceError(ValueError):
    """Runs that do not form one space (different mappings), or a request the space cannot answer."""


# -- runs as points of the space ------------------------------------------------------------------------------


@dataclass
class RunPoint:
    """One finished run, read from its checkpoint alone (no mapping is built)."""

    run_dir: Path
    checkpoint: dict = field(repr=False)
    recipe: Recipe = field(repr=False)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def fingerprint(self) -> str:
        return self.checkpoint["fingerprint"]

    @property
    def state(self) -> dict[str, Tensor]:
        """The checkpoint's model state: latents, directly trained tensors, buffers."""
        return self.checkpoint["model"]

    def latents(self) -> list[Tensor]:
        """The group latents, in group order."""
        state = self.state
        count = sum(1 for key in state if key.startswith(LATENT_KEY.format("")))
        if count == 0:
            raise SpaceError(f"{self.run_dir} has no latents (mapping.method={self.recipe.mapping.method!r})")
        return [state[LATENT_KEY.format(i)] for i in range(count)]

    def recorded(self) -> dict[str, float] | None:
        """The run's own last test evaluation in metrics.jsonl (at or before its checkpoint's step)."""
        records = read_records(self.run_dir)
        tests = [r for r in records if r.get("split") == "test" and r["step"] <= self.checkpoint["step"]]
        return {k: v for k, v in tests[-1].items() if k not in ("step", "split")} if tests else None


def read_points(runs: list[Path]) -> list[RunPoint]:
    """The runs' checkpoints (each a run directory or a checkpoint file)."""
    points = []
    for run in runs:
        state = load_checkpoint(Path(run))
        run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
        points.append(RunPoint(run_dir, state, Recipe.model_validate(state["recipe"])))
    return points


def mapping_fields(recipe: Recipe) -> dict[str, object]:
    """The recipe fields the fingerprint covers (`mapscale.train.mapping_identity`), as dotted names."""
    flat: dict[str, object] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = value

    walk("", mapping_identity(recipe))
    return flat


def mapping_differences(a: Recipe, b: Recipe) -> list[str]:
    """``["mapping.seed: 0 vs 1", ...]``: the fingerprinted fields where ``b`` differs from ``a``."""
    fields_a, fields_b = mapping_fields(a), mapping_fields(b)
    missing = object()
    return [
        f"{key}: {fields_a.get(key, missing)!r} vs {fields_b.get(key, missing)!r}".replace(repr(missing), "(unset)")
        for key in sorted(fields_a.keys() | fields_b.keys())
        if fields_a.get(key, missing) != fields_b.get(key, missing)
    ]


def check_shared_mapping(points: list[RunPoint]) -> None:
    """Raise `SpaceError` unless every run shares the first run's mapping; the message names each differing run
    and why (the recipe fields that differ, or, with equal fields, a layout built by another mapscale)."""
    if len(points) < 1:
        raise SpaceError("no runs given")
    first, problems = points[0], []
    for point in points[1:]:
        if point.fingerprint == first.fingerprint:
            continue
        why = mapping_differences(first.recipe, point.recipe)
        reason = "; ".join(why) if why else "equal recipe fields, but the generated layouts differ (runs of different mapscale versions?)"
        problems.append(f"{point.run_dir} (mapping {point.fingerprint}) differs from {first.run_dir} (mapping {first.fingerprint}): {reason}")
    if problems:
        raise SpaceError(
            "the runs do not share a mapping, so their latents are points of different spaces:\n  "
            + "\n  ".join(problems)
            + "\nRuns share a mapping when target, mapping section (latent_seed and latent_from aside) and seed are equal."
        )


# -- the space: one mapping, many latents ----------------------------------------------------------------------


@dataclass
class Interpolation:
    """Test metrics along the latent path and the weight path between two runs, at ``ts``."""

    run_a: str
    run_b: str
    metric: str
    higher_is_better: bool
    ts: list[float]
    latent: list[dict[str, float]]
    weight: list[dict[str, float]]
    recorded_a: dict[str, float] | None = None  # each run's own last logged test metrics
    recorded_b: dict[str, float] | None = None

    def barrier(self, path: str) -> float:
        """How far the metric falls below the straight line between the endpoints, at worst (>= 0: a barrier)."""
        values = [row[self.metric] for row in getattr(self, path)]
        sign = 1.0 if self.higher_is_better else -1.0
        return max(sign * ((1 - t) * values[0] + t * values[-1] - v) for t, v in zip(self.ts, values))

    def markdown(self) -> str:
        keys = [self.metric] + [k for k in self.latent[0] if k != self.metric]
        head = "| t | " + " | ".join(f"latent path {k}" for k in keys) + " | " + " | ".join(f"weight path {k}" for k in keys) + " |"
        lines = [head, "|" + "---:|" * (1 + 2 * len(keys))]
        for t, lat, wei in zip(self.ts, self.latent, self.weight):
            lines.append(f"| {t:.3f} | " + " | ".join(f"{lat[k]:.4f}" for k in keys) + " | " + " | ".join(f"{wei[k]:.4f}" for k in keys) + " |")
        lines.append("")
        lines.append(f"t = 0: {self.run_a}, t = 1: {self.run_b}. Barrier ({self.metric} below the straight line between the endpoints, at worst): "
                     f"latent path {self.barrier('latent'):.4f}, weight path {self.barrier('weight'):.4f}.")
        return "\n".join(lines) + "\n"

    def plot(self, path: Path | str) -> Path:
        plt = _pyplot()
        keys = [self.metric] + (["loss"] if "loss" in self.latent[0] and self.metric != "loss" else [])
        figure, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
        for ax, key in zip(axes[0], keys):
            ax.plot(self.ts, [r[key] for r in self.latent], "o-", label="latent path (1-t) z_A + t z_B")
            ax.plot(self.ts, [r[key] for r in self.weight], "s--", label="weight path (1-t) θ_A + t θ_B")
            ax.set_xlabel(f"t  ({self.run_a} → {self.run_b})")
            ax.set_ylabel(f"test {key}")
            ax.grid(alpha=0.3)
        axes[0][0].legend()
        return _save(figure, path)


@dataclass
class Ensemble:
    """Each member's test metrics, the averaged-latent model's and the output ensemble's."""

    metric: str
    members: dict[str, dict[str, float]]
    averaged_latent: dict[str, float]
    output_ensemble: dict[str, float]

    def rows(self) -> list[tuple[str, dict[str, float]]]:
        return [*self.members.items(), ("averaged latent", self.averaged_latent), ("output ensemble (mean softmax)", self.output_ensemble)]

    def markdown(self) -> str:
        keys = [self.metric] + [k for k in self.averaged_latent if k != self.metric]
        lines = ["| model | " + " | ".join(f"test {k}" for k in keys) + " |", "|---|" + "---:|" * len(keys)]
        lines += [f"| {name} | " + " | ".join(f"{values[k]:.4f}" for k in keys) + " |" for name, values in self.rows()]
        return "\n".join(lines) + "\n"

    def plot(self, path: Path | str) -> Path:
        plt = _pyplot()
        names, values = zip(*[(name, row[self.metric]) for name, row in self.rows()])
        figure, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names)), 4))
        colors = ["tab:gray"] * len(self.members) + ["tab:blue", "tab:orange"]
        ax.bar(range(len(names)), values, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        low = min(values)
        ax.set_ylim(max(0.0, low - 0.1 * (max(values) - low + 1e-3) - 0.02), None)
        ax.set_ylabel(f"test {self.metric}")
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
        return _save(figure, path)


class _WithWeights(nn.Module):
    """The mapped model run with fixed plain weights (a materialised state_dict): the weight path."""

    def __init__(self, model: MappedModel, tensors: dict[str, Tensor]) -> None:
        super().__init__()
        self.model, self.tensors = model, tensors

    def forward(self, x):
        return self.model.forward_with(self.tensors, x)

    def cached_weights(self):
        return contextlib.nullcontext()


class _OutputEnsemble(nn.Module):
    """Mean of the members' output probabilities, returned as log-probabilities (so the task's cross-entropy is the
    ensemble's NLL and argmax its prediction); for regression the mean output."""

    def __init__(self, model: MappedModel, members: list[dict[str, Tensor]], task: str) -> None:
        super().__init__()
        self.model, self.members, self.task = model, members, task

    def forward(self, x):
        outputs = [self.model.forward_with(tensors, x) for tensors in self.members]
        if self.task == "regression":
            return torch.stack(outputs).mean(0)
        dim = 1 if self.task == "segmentation" else -1  # classes: (B, C, H, W) or (..., C)
        probabilities = torch.stack([o.float().softmax(dim) for o in outputs]).mean(0)
        return probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()

    def cached_weights(self):
        return contextlib.nullcontext()


def _lerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """``(1-t) a + t b``, exactly ``a`` at 0 and ``b`` at 1; integer tensors take the nearer endpoint."""
    if not a.is_floating_point():
        return a if t <= 0.5 else b
    return (1 - t) * a + t * b


def _mean(tensors: list[Tensor]) -> Tensor:
    if not tensors[0].is_floating_point():
        return tensors[0]
    return torch.stack(tensors).mean(0)


@dataclass
class Space:
    """Runs sharing one mapping, with the mapping built once (from the first run's recipe) and its test split."""

    points: list[RunPoint]
    model: MappedModel = field(repr=False)
    data: DataSplits = field(repr=False)
    device: torch.device = torch.device("cpu")

    @classmethod
    def open(cls, runs: list[Path], device: torch.device | str = "cpu") -> Space:
        points = read_points(runs)
        check_shared_mapping(points)
        recipe = points[0].recipe
        model = build_model(recipe, device)
        if fingerprint(model, recipe) != points[0].fingerprint:
            raise SpaceError(f"{points[0].run_dir}: this mapscale builds mapping {fingerprint(model, recipe)} from its recipe, "
                             f"not the checkpoint's {points[0].fingerprint} (written by another version?)")
        return cls(points, model, build_datasets(recipe.data, recipe.task), torch.device(device))

    @property
    def recipe(self) -> Recipe:
        return self.points[0].recipe

    @property
    def metric(self) -> tuple[str, bool]:
        return PRIMARY[self.recipe.task]

    def evaluate_state(self, state: dict[str, Tensor]) -> dict[str, float]:
        """Test metrics of the model with ``state`` (a checkpoint's model state) restored: the trainer's path."""
        restore_model_state(self.model, {k: v.to(self.device) for k, v in state.items()})
        return evaluate(self.model, self.data.test, self.recipe, self.data.num_classes, self.device)

    def evaluate_weights(self, tensors: dict[str, Tensor]) -> dict[str, float]:
        """Test metrics of the target run with plain ``tensors`` (its whole state_dict)."""
        return evaluate(_WithWeights(self.model, tensors), self.data.test, self.recipe, self.data.num_classes, self.device)

    def materialize(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The target's plain state_dict generated from ``state``."""
        restore_model_state(self.model, {k: v.to(self.device) for k, v in state.items()})
        return self.model.materialize()

    def interpolate(self, a: int = 0, b: int = 1, steps: int = 11) -> Interpolation:
        """The test metrics at ``steps`` evenly spaced ``t`` in [0, 1] along the latent and the weight path."""
        if steps < 2:
            raise SpaceError(f"--steps must be at least 2 (the endpoints), got {steps}")
        point_a, point_b = self.points[a], self.points[b]
        ts = [i / (steps - 1) for i in range(steps)]
        theta_a, theta_b = self.materialize(point_a.state), self.materialize(point_b.state)
        latent, weight = [], []
        for t in ts:
            latent.append(self.evaluate_state({k: _lerp(v, point_b.state[k], t) for k, v in point_a.state.items()}))
            weight.append(self.evaluate_weights({k: _lerp(v, theta_b[k], t) for k, v in theta_a.items()}))
        name, higher = self.metric
        return Interpolation(point_a.name, point_b.name, name, higher, ts, latent, weight, point_a.recorded(), point_b.recorded())

    def ensemble(self) -> Ensemble:
        """Each member, the model at the mean of the members' states (latents, trained tensors, buffers) and
        the output ensemble of the members."""
        if len(self.points) < 2:
            raise SpaceError("an ensemble needs at least two runs")
        members = {p.name: self.evaluate_state(p.state) for p in self.points}
        if len(members) < len(self.points):  # same directory names from different folders
            members = {str(p.run_dir): self.evaluate_state(p.state) for p in self.points}
        averaged = self.evaluate_state({k: _mean([p.state[k] for p in self.points]) for k in self.points[0].state})
        weights = [self.materialize(p.state) for p in self.points]
        output = evaluate(_OutputEnsemble(self.model, weights, self.recipe.task), self.data.test, self.recipe, self.data.num_classes, self.device)
        return Ensemble(self.metric[0], members, averaged, output)


# -- warm starts: a new task from existing latents ------------------------------------------------------------


def save_latents(path: Path, latents: list[Tensor], mapping_id: str, **info: str | float | int) -> Path:
    """The file `mapping.latent_from` reads: the group latents and the mapping they belong to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"latents": [z.detach().cpu().clone() for z in latents], "fingerprint": mapping_id, "info": info}, path)
    return path


@dataclass
class Search:
    """A warm-started run (latents from the sources) against a fresh one on the same recipe."""

    init: str  # "best" or "mean"
    metric: str
    higher_is_better: bool
    target: float
    criterion: str  # what picks the best source: the task's loss ("loss"), else the primary metric
    source_scores: dict[str, float]  # each source's criterion on the new task's training split, before training
    chosen: str  # the source whose latents start the warm run, or "mean of N"
    curves: dict[str, list[tuple[int, float]]]  # "warm"/"fresh": (step, test metric), step 0 included
    run_dirs: dict[str, Path]
    final: dict[str, dict[str, float]]
    seconds_per_step: dict[str, float] = field(default_factory=dict)

    def steps_to(self, arm: str, target: float | None = None) -> int | None:
        """The first evaluated step whose test metric reaches ``target``; None if it never does."""
        target = self.target if target is None else target
        for step, value in self.curves[arm]:
            if (value >= target) if self.higher_is_better else (value <= target):
                return step
        return None

    def speedup(self, target: float | None = None) -> float | None:
        warm, fresh = self.steps_to("warm", target), self.steps_to("fresh", target)
        if warm is None or fresh is None:
            return None
        return fresh / warm if warm else float("inf")

    def markdown(self, targets: list[float] | None = None) -> str:
        targets = targets or [self.target]
        lines = [
            f"Warm start: {self.init} ({self.chosen}). Sources' {self.criterion} on the new task's training split before training: "
            + ", ".join(f"{k} {v:.4f}" for k, v in self.source_scores.items()) + ".",
            "",
            "| start | test " + self.metric + " at step 0 | final test " + self.metric + " | "
            + " | ".join(f"steps to {t:g}" for t in targets) + " |",
            "|---|---:|---:|" + "---:|" * len(targets),
        ]
        for arm in ("warm", "fresh"):
            steps = [self.steps_to(arm, t) for t in targets]
            lines.append(f"| {arm} | {self.curves[arm][0][1]:.4f} | {self.final[arm][self.metric]:.4f} | "
                         + " | ".join("not reached" if s is None else str(s) for s in steps) + " |")
        speedups = [self.speedup(t) for t in targets]
        lines.append("| speed-up (fresh / warm steps) | | | " + " | ".join("-" if s is None else f"{s:.1f}x" for s in speedups) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: Path | str) -> Path:
        plt = _pyplot()
        figure, ax = plt.subplots(figsize=(6.5, 4))
        for arm, style in (("warm", "o-"), ("fresh", "s--")):
            steps, values = zip(*self.curves[arm])
            ax.plot(steps, values, style, markersize=3, label=f"{arm} latent" + (f" ({self.init})" if arm == "warm" else ""))
        ax.axhline(self.target, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("step")
        ax.set_ylabel(f"test {self.metric}")
        ax.grid(alpha=0.3)
        ax.legend()
        return _save(figure, path)


def _latent_state(model: MappedModel, latents: list[Tensor]) -> None:
    copy_latents(model.generator.latents, latents)


def search(
    recipe: Recipe,
    sources: list[Path],
    out: Path,
    *,
    init: str = "best",
    target: float = 0.9,
    eval_every: int = 10,
    device: torch.device | str = "cpu",
    console: Console | None = None,
) -> Search:
    """Train ``recipe`` twice under ``out``: from the sources' latents (``init="best"``: the source whose
    latents give the lowest task loss on the new task's training split before training, the primary metric
    where the task has no loss; ``"mean"``: their mean) and from the recipe's own fresh latent init; each
    evaluated every ``eval_every`` steps on the new task's test split. The loss, not the accuracy, picks: on
    classes no source has seen every source scores 0% but their losses differ; the test split is not looked at.

    Only the latents start from the sources: directly trained tensors, buffers and the optimiser start fresh.
    The recipe must share the sources' mapping (its data, optimiser and latent_seed may differ)."""
    if init not in ("best", "mean"):
        raise SpaceError(f"--init is 'best' or 'mean', not {init!r}")
    console = console or Console(quiet=True)
    points = read_points(sources)
    check_shared_mapping(points)
    mapping_id = fingerprint(build_model(recipe, "meta"), recipe)
    if mapping_id != points[0].fingerprint:
        why = "; ".join(mapping_differences(points[0].recipe, recipe)) or "the generated layouts differ"
        raise SpaceError(f"the recipe's mapping {mapping_id} is not the sources' {points[0].fingerprint} ({points[0].run_dir}): {why}")
    runs = {"warm": out / "warm", "fresh": out / "fresh"}
    taken = [str(p) for p in runs.values() if p.exists()]
    if taken:
        raise SpaceError(f"{', '.join(taken)} already exist; remove them or give another --out")

    metric, higher = PRIMARY[recipe.task]
    data = build_datasets(recipe.data, recipe.task)
    model = build_model(recipe, device)  # the fresh start, and the vehicle for the sources' latents
    fresh_start = evaluate(model, data.test, recipe, data.num_classes, device)
    scores, criterion = {}, None
    for point in points:
        _latent_state(model, point.latents())
        values = evaluate(model, data.train, recipe, data.num_classes, device)
        criterion = "loss" if "loss" in values else metric
        scores[point.name] = values[criterion]
    if init == "mean":
        latents, chosen = [torch.stack(z).mean(0) for z in zip(*(p.latents() for p in points))], f"mean of {len(points)} runs"
    else:
        lowest = criterion == "loss" or not higher
        pick = (min if lowest else max)(range(len(points)), key=lambda i: scores[points[i].name])
        latents, chosen = points[pick].latents(), points[pick].name
    _latent_state(model, latents)
    warm_start = evaluate(model, data.test, recipe, data.num_classes, device)
    del model

    latent_file = save_latents(out / "warm_start_latents.pt", latents, mapping_id, init=init, chosen=chosen,
                               sources=",".join(str(p.run_dir) for p in points))
    recipes = {
        "warm": apply_overrides(recipe, [f"mapping.latent_from={latent_file}", f"output.eval_every={eval_every}"]),
        "fresh": apply_overrides(recipe, [f"output.eval_every={eval_every}"]),
    }
    starts = {"warm": warm_start, "fresh": fresh_start}
    curves, final, seconds = {}, {}, {}
    for arm in ("warm", "fresh"):
        console.print(f"[{arm}] training {recipes[arm].name} in {runs[arm]}")
        write_run_files(runs[arm], recipes[arm], None, [])
        result = train(recipes[arm], runs[arm], device=str(device), console=console)
        records = read_records(runs[arm])
        curves[arm] = [(0, starts[arm][metric])] + [(r["step"], r[metric]) for r in records if r["split"] == "test"]
        final[arm], seconds[arm] = result.final, result.wall_seconds / max(result.step, 1)
    return Search(init, metric, higher, target, criterion, scores, chosen, curves, runs, final, seconds)


def latent_distances(points: list[RunPoint]) -> list[list[float]]:
    """Euclidean distances between the runs' concatenated latents."""
    flat = [torch.cat([z.flatten().float() for z in p.latents()]) for p in points]
    return [[torch.linalg.vector_norm(a - b).item() for b in flat] for a in flat]
