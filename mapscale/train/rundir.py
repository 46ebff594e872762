"""The run directory: its name and the files written once per run (recipe, overrides, environment)."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch

import mapscale
from mapscale.recipe import Recipe


def new_run_dir(recipe: Recipe) -> Path:
    """A fresh run directory under ``output.root``: ``run_name`` or ``<recipe name>-<timestamp>``."""
    root = Path(recipe.output.root)
    name = recipe.output.run_name or f"{recipe.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir, suffix = root / name, 1
    while run_dir.exists():
        suffix += 1
        run_dir = root / f"{name}-{suffix}"
    return run_dir


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
        "started": datetime.now().isoformat(timespec="seconds"),
    }
