"""Evaluation: the task's metrics of a model on a dataset, weights generated once, ranks reduced."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from mapscale.distributed.world import World
from mapscale.mapping.mapped import MappedModel
from mapscale.metrics import Metrics
from mapscale.recipe import Recipe
from mapscale.train.loader import make_loader


EVAL_OUTPUT_BYTES = 2**27
"""What one evaluation batch's outputs may hold (128 MiB): the batch size is this over one example's output bytes
(its logits: classes, classes x pixels, or window x vocabulary), at most ``max(256, optim.batch_size)``."""
SAMPLE_SEED = 7_919
"""Added to the recipe's seed for the periodic evaluations' sample: the same examples at every evaluation."""


@torch.no_grad()
def evaluate(
    model: MappedModel, dataset, recipe: Recipe, num_classes: int | None, device, world: World = World(), *, sample: bool = False,
) -> dict[str, float]:
    """The task's metrics of ``model`` on ``dataset``, weights generated once. ``sample``: on the fixed, seeded
    sample of at most ``output.eval_batches`` evaluation batches (`eval_sample`; the record then says how many
    examples, ``examples``), else on all of it. In a multi-rank world every rank generates (a collective),
    evaluates its contiguous share, and the sums are reduced."""
    model.eval()
    metrics = Metrics(recipe.task, num_classes)
    batch_size = eval_batch_size(recipe, dataset, num_classes)
    chosen = eval_sample(len(dataset), batch_size, recipe) if sample else None
    if chosen is not None:
        dataset = torch.utils.data.Subset(dataset, chosen)
    if world.distributed:
        share = torch.tensor_split(torch.arange(len(dataset)), world.size)[world.rank]
        dataset = torch.utils.data.Subset(dataset, share.tolist())
    loader = make_loader(dataset, recipe, device, batch_size=batch_size)
    with world.traffic.as_control():  # what evaluating moves (weights gathered once, the metrics' sums) is not a step's
        with model.cached_weights():
            for inputs, targets in loader:
                with autocast(recipe, device):
                    output = model(model_inputs(inputs, recipe, device))
                metrics.update(output, targets)
        if world.distributed:
            metrics.reduce(world.sum)
    result = metrics.compute()
    return result if chosen is None else {**result, "examples": len(chosen)}


def eval_batch_size(recipe: Recipe, dataset, num_classes: int | None) -> int:
    """``output.eval_batch_size``, else the most examples whose outputs fit `EVAL_OUTPUT_BYTES`: one example's
    output is ``num_classes`` (or 1) values per target element (a class, a pixel, a token), in the model's dtype."""
    if recipe.output.eval_batch_size is not None:
        return recipe.output.eval_batch_size
    if not len(dataset):
        return 1
    target = torch.as_tensor(dataset[0][1])
    per_example = (num_classes or 1) * max(target.numel(), 1) * model_dtype(recipe).itemsize
    return max(1, min(max(256, recipe.optim.batch_size), EVAL_OUTPUT_BYTES // per_example))


def eval_sample(size: int, batch_size: int, recipe: Recipe) -> list[int] | None:
    """The examples (sorted indices) a periodic evaluation sees: a seeded random ``output.eval_batches x
    batch_size`` of ``size``, the same at every evaluation and on every rank; None when that covers them all."""
    limit = recipe.output.eval_batches
    if limit is None or limit * batch_size >= size:
        return None
    order = torch.randperm(size, generator=torch.Generator().manual_seed(recipe.seed + SAMPLE_SEED))
    return order[: limit * batch_size].sort().values.tolist()


def model_dtype(recipe: Recipe) -> torch.dtype:
    """The dtype of a run's model and floating inputs: float64 under ``optim.precision='fp64'``, else float32
    (``bf16`` autocasts the forward of a float32 model)."""
    return torch.float64 if recipe.optim.precision == "fp64" else torch.float32


def model_inputs(inputs: torch.Tensor, recipe: Recipe, device) -> torch.Tensor:
    """``inputs`` on ``device``, floating ones in the model's dtype (`model_dtype`); token ids stay integers."""
    # non_blocking: a copy from pinned memory (`mapscale.train.loader` pins on CUDA) overlaps the work before it
    return inputs.to(device, model_dtype(recipe), non_blocking=True) if inputs.is_floating_point() else inputs.to(device, non_blocking=True)


def autocast(recipe: Recipe, device):
    if recipe.optim.precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()
