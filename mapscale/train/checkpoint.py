"""Checkpoints: one schema, written atomically and read back; the mapping fingerprint, defined once.

A checkpoint (``run_dir/checkpoint.pt``) holds what a run needs to continue exactly: the model's trained
tensors and buffers (latents, directly trained tensors, BatchNorm statistics; never generated or frozen
weights), the loss's learned coefficients, the optimiser and schedule state, the step, the best metric so far,
the RNG states, the resolved recipe and the fingerprint of its mapping.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from mapscale.mapping.mapped import MappedModel
from mapscale.recipe import Recipe

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 3  # 3: the method sections of the recipe (issue 15); the loss keeps no step of its own
# Mapping fields that choose only where the latents start, not the mapping: left out of the fingerprint.
LATENT_START_FIELDS = {"latent_seed", "latent_from"}


def mapping_identity(recipe: Recipe) -> dict:
    """The recipe fields that fix a run's mapping: the target section, the mapping section (but where the
    latents start, `LATENT_START_FIELDS`) and the seed of the target's init."""
    return {
        "target": recipe.target.model_dump(mode="json"),
        "mapping": recipe.mapping.model_dump(mode="json", exclude=LATENT_START_FIELDS),
        "seed": recipe.seed,
    }


def fingerprint(model: MappedModel, recipe: Recipe) -> str:
    """Identifies the mapping: the generated tensors (names, shapes) and `mapping_identity`. Runs with equal
    fingerprints generate weights from the same fixed mapping (`mapscale.space`)."""
    layout = [(g.name, g.latent_dim, [(t.name, list(t.shape)) for t in g.tensors]) for g in model.layout.groups]
    identity = mapping_identity(recipe)
    payload = json.dumps([layout, identity["mapping"], identity["target"], identity["seed"]], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def checkpoint_state(*, step: int, best: dict, mapping_id: str, model: MappedModel, loss: dict, optim: dict, recipe: Recipe, world_size: int, device: torch.device) -> dict:
    """The checkpoint's content (the one schema `load_checkpoint` reads)."""
    return {
        "format": CHECKPOINT_FORMAT, "step": step, "fingerprint": mapping_id, "best": best,
        "model": checkpoint_model_state(model), "loss": loss, "optim": optim,
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        "recipe": recipe.model_dump(mode="json"), "seed": recipe.seed, "world_size": world_size,
    }


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, flushed, then renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """The checkpoint in ``path`` (a file or a run directory). ``FileNotFoundError`` when there is none,
    ``ValueError`` when it is not a mapscale checkpoint of this format."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file: say which, not torch's unpickling internals
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a mapscale checkpoint of format {CHECKPOINT_FORMAT} (found {found!r}): written by another version")
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["rng"]["torch"])
    if device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)


def start_latents(model: MappedModel, path: Path, mapping_id: str) -> None:
    """``mapping.latent_from``: set the group latents (and lv-wmap modulators) to those saved in ``path``
    (`mapscale.space.save_latents`), which must belong to the same mapping."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["fingerprint"] != mapping_id:
        raise ValueError(f"mapping.latent_from {path} holds latents of mapping {saved['fingerprint']}, not of this recipe's {mapping_id}: check with `mapscale space --check`")
    try:
        model.generator.start_from(saved["latents"])
    except ValueError as err:
        raise ValueError(f"mapping.latent_from {path}: {err}") from None


def checkpoint_model_state(model: MappedModel) -> dict:
    """The model state a checkpoint keeps: trained tensors and buffers (BatchNorm statistics), not the
    frozen tensors, which the recipe rebuilds."""
    frozen = {f"target.{spec.name}" for spec in model.layout.frozen}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def restore_model_state(model: MappedModel, state: dict) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = {f"target.{spec.name}" for spec in model.layout.frozen}
    if unexpected or set(missing) - frozen:
        raise ValueError(f"checkpoint does not fit the model: missing {sorted(set(missing) - frozen)}, unexpected {unexpected}")
