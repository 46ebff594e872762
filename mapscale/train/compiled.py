"""The compiled step (``optim.compile``): what ``torch.compile`` compiles, when, and the compile time kept apart.

What is compiled is the mapped forward, `MappedModel.forward`: the generation (latents, modulation, the fixed
operators, per-tensor scales) and the target's own forward through ``functional_call``, as one graph, with its
backward (AOTAutograd). It is compiled in place (``nn.Module.compile``), so the module, its state_dict and its
checkpoints are the model's own. The Mapping Loss (its JVPs and perturbed replays call the model's parts
directly) and the optimiser step (a few thousand latents) stay eager. The generation alone (``scope="generation"``)
compiles too; `bench/compile_step.py` measures both against the plain target compiled the same way
(``bench/results/compile_step.md``).

A compiled graph is specialised to its shapes (``dynamic=False``): a run sees at most a few of them (the
training batch, a short last batch, the evaluation batches), each compiled once, and none after that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mapscale.distributed.world import World
from mapscale.mapping.mapped import MappedModel
from mapscale.recipe import Recipe, RecipeError

SCOPES = ("model", "generation")


def compile_seconds() -> float:
    """Seconds this process has spent compiling so far: dynamo's frame compiles (tracing, AOTAutograd, inductor's
    forward and, unless deferred, backward) and the backward compiles AOTAutograd defers to the first backward."""
    from torch._dynamo.utils import compilation_time_metrics

    return sum(sum(compilation_time_metrics.get(name, ())) for name in ("_compile.compile_inner", "backward._backward_impl"))


def graphs_compiled() -> int:
    """Frames dynamo has compiled so far in this process (a recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


@dataclass
class CompiledStep:
    """``optim.compile`` as resolved for a run: whether the mapped forward is compiled, why, and the compile time
    spent since the last `take` (kept out of the step time it would otherwise inflate)."""

    enabled: bool
    reason: str
    scope: str = "model"
    _reported: float = 0.0

    def take(self) -> dict[str, float]:
        """``{"compile_s": seconds spent compiling since the last call}`` (empty when not compiled): a training
        record's share of compile time, which its ``samples_per_s`` also counts."""
        if not self.enabled:
            return {}
        total = compile_seconds()
        spent, self._reported = total - self._reported, total
        return {"compile_s": spent}

    def as_dict(self) -> dict:
        return {"enabled": self.enabled, "reason": self.reason, "scope": self.scope}


def resolve_compile(recipe: Recipe, world: World, device: torch.device, generation: str = "local") -> CompiledStep:
    """``optim.compile`` for this run. ``on`` refuses (`RecipeError`, one line) what the compiled step does not
    support: the DeepSpeed engine, ``distributed.gather='per-unit'`` and sharded generation over several ranks
    (``generation``: ``distributed.generation`` resolved); ``auto`` leaves those eager and compiles on GPUs only
    (`OptimSection.compile` gives the measurement)."""
    chosen = recipe.optim.compile
    if chosen == "off":
        return CompiledStep(False, "optim.compile='off'")
    unsupported = _unsupported(recipe, world, generation)
    if chosen == "on":
        if unsupported:
            raise RecipeError(f"optim.compile='on' does not compile {unsupported}; use optim.compile='off' (or 'auto', which leaves it eager)")
        return CompiledStep(True, "optim.compile='on'")
    if unsupported:
        return CompiledStep(False, f"auto: {unsupported} is not compiled")
    if device.type != "cuda":
        return CompiledStep(False, f"auto: on {device.type}, inductor's compile time costs more than a run's steps save")
    return CompiledStep(True, "auto: on a GPU")


def _unsupported(recipe: Recipe, world: World, generation: str) -> str:
    """What of the run the compiled step does not support, in words ('' when nothing)."""
    if recipe.distributed.deepspeed is not None and world.distributed:
        return "a step under DeepSpeed's engine (distributed.deepspeed)"
    if recipe.distributed.gather == "per-unit":
        return "distributed.gather='per-unit' (its units regenerate inside activation checkpointing)"
    if world.distributed and generation == "sharded":
        return "sharded generation over several ranks (use distributed.generation='local')"
    return ""


def compile_model(model: MappedModel, scope: str = "model", **options) -> MappedModel:
    """Compile ``model``'s mapped forward (``scope="model"``) or its generation alone (``"generation"``) in place and
    return it. One generation runs first, eagerly and without gradient: it fills the caches the generator and the
    operators keep of their fixed state (segment sizes, Hadamard matrices), which the compiled graph then reads
    rather than builds. ``options`` go to ``torch.compile`` (default ``dynamic=False``)."""
    if scope not in SCOPES:
        raise ValueError(f"compile scope {scope!r} is not one of {SCOPES}")
    with torch.no_grad():
        model.generated_tensors()
    (model if scope == "model" else model.generator).compile(**{"dynamic": False, **options})
    return model
