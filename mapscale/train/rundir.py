"""The run directory: its name, the files written once per run (recipe, overrides, environment), the run an
``output.resume=auto`` invocation continues, and `load_run`, which rebuilds a finished or interrupted run."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch

import mapscale
from mapscale.mapping.mapped import MappedModel
from mapscale.recipe import Recipe
from mapscale.train.build import build_model
from mapscale.train.checkpoint import load_checkpoint, restore_model_state


def new_run_dir(recipe: Recipe) -> Path:
    """A fresh run directory under ``output.root``: ``run_name`` or ``<recipe name>-<timestamp>``."""
    root = Path(recipe.output.root)
    name = recipe.output.run_name or f"{recipe.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir, suffix = root / name, 1
    while run_dir.exists():
        suffix += 1
        run_dir = root / f"{name}-{suffix}"
    return run_dir


def continued_run_dir(recipe: Recipe, restart: int = 0) -> Path | None:
    """Under ``output.resume='auto'``, the run directory this invocation continues, or None for a new one.

    The candidate is ``output.root/output.run_name`` when a name is given; else, in a worker group torchrun
    restarted (``restart`` > 0), the directory whose ``environment.json`` records this job's
    ``TORCHELASTIC_RUN_ID``. A candidate that holds another recipe, or is a folder but not a run directory,
    raises ValueError (nothing is overwritten). A matching directory without a checkpoint yet (the first attempt
    died before one) is continued from step 0: its partial ``metrics.jsonl`` is dropped by the caller."""
    if recipe.output.resume != "auto":
        return None
    root, candidate = Path(recipe.output.root), None
    if recipe.output.run_name:
        candidate = root / recipe.output.run_name
    elif restart and os.environ.get("TORCHELASTIC_RUN_ID") and root.is_dir():
        job = os.environ["TORCHELASTIC_RUN_ID"]
        mine = [d for d in root.iterdir() if _elastic_run_id(d) == job]
        candidate = max(mine, key=lambda d: d.stat().st_mtime) if mine else None
    if candidate is None or not candidate.exists():
        return None
    recorded = candidate / "recipe.json"
    if not recorded.is_file():
        raise ValueError(f"output.resume='auto': {candidate} exists and is not a run directory (no recipe.json); choose another output.run_name")
    there, here = json.loads(recorded.read_text()), json.loads(recipe.model_dump_json())
    for resolved in (there, here):  # how a run starts is not what it runs: a run begun without 'auto' continues too
        resolved.get("output", {}).pop("resume", None)
    differences = recipe_differences(there, here)
    if differences:
        shown = "; ".join(f"{key}: {there!r} there, {here!r} here" for key, there, here in differences[:5])
        more = f" (and {len(differences) - 5} more)" if len(differences) > 5 else ""
        raise ValueError(f"output.resume='auto': {candidate} holds another recipe ({shown}{more}); choose another output.run_name or output.resume='never'")
    return candidate


def recipe_differences(there: dict, here: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(dotted key, value there, value here)`` where two resolved recipes differ."""
    out = []
    for key in sorted(set(there) | set(here)):
        a, b = there.get(key, "<unset>"), here.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += recipe_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def _elastic_run_id(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "environment.json").read_text()).get("torchelastic_run_id")
    except (OSError, ValueError, AttributeError):
        return None


def write_run_files(run_dir: Path, recipe: Recipe, source: Path | None, overrides: list[str]) -> None:
    """Once per run: the recipe file, the overrides, the resolved recipe and the environment.
    ``mapscale train <run_dir>/recipe.json`` reproduces the run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if source is not None and source.suffix == ".py":
        shutil.copyfile(source, run_dir / "recipe_source.py")
    (run_dir / "overrides.json").write_text(json.dumps(list(overrides), indent=2) + "\n")
    (run_dir / "recipe.json").write_text(recipe.model_dump_json(indent=2) + "\n")
    (run_dir / "environment.json").write_text(json.dumps(environment(), indent=2) + "\n")


def environment() -> dict:
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "mapscale": mapscale.__version__}
    for package in ("torchvision", "deepspeed", "datasets", "pydantic", "safetensors"):
        try:  # read from the installed metadata: importing deepspeed alone takes seconds
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    return {
        "versions": versions,
        "git_commit": commit,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torchelastic_run_id": os.environ.get("TORCHELASTIC_RUN_ID"),  # how a restarted torchrun job finds this run
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def load_run(run: Path, device: torch.device | str = "cpu") -> tuple[Recipe, MappedModel, dict]:
    """``(recipe, model, checkpoint)`` of a run directory or checkpoint file: the model rebuilt from the
    recorded recipe with the checkpoint's latents (and buffers) loaded."""
    state = load_checkpoint(Path(run))
    recipe = Recipe.model_validate(state["recipe"])
    model = build_model(recipe, device)
    restore_model_state(model, state["model"])
    return recipe, model, state
