"""Evaluation: the task's metrics of a model on a dataset, weights generated once, ranks reduced."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from mapscale.distributed.world import World
from mapscale.mapping.mapped import MappedModel
from mapscale.metrics import Metrics
from mapscale.recipe import Recipe


@torch.no_grad()
def evaluate(model: MappedModel, dataset, recipe: Recipe, num_classes: int | None, device, world: World = World()) -> dict[str, float]:
    """The task's metrics of ``model`` on ``dataset``, weights generated once. In a multi-rank world every
    rank generates (a collective), evaluates its contiguous share of ``dataset``, and the sums are reduced."""
    model.eval()
    metrics = Metrics(recipe.task, num_classes)
    if world.distributed:
        share = torch.tensor_split(torch.arange(len(dataset)), world.size)[world.rank]
        dataset = torch.utils.data.Subset(dataset, share.tolist())
    # Per-token logits over a vocabulary are large: language models evaluate at the training batch size.
    batch_size = recipe.optim.batch_size if recipe.task == "language_modeling" else max(recipe.optim.batch_size, 256)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    with world.traffic.as_control():  # what evaluating moves (weights gathered once, the metrics' sums) is not a step's
        with model.cached_weights():
            for inputs, targets in loader:
                with autocast(recipe, device):
                    output = model(model_inputs(inputs, recipe, device))
                metrics.update(output, targets)
        if world.distributed:
            metrics.reduce(world.sum)
    return metrics.compute()


def model_dtype(recipe: Recipe) -> torch.dtype:
    """The dtype of a run's model and floating inputs: float64 under ``optim.precision='fp64'``, else float32
    (``bf16`` autocasts the forward of a float32 model)."""
    return torch.float64 if recipe.optim.precision == "fp64" else torch.float32


def model_inputs(inputs: torch.Tensor, recipe: Recipe, device) -> torch.Tensor:
    """``inputs`` on ``device``, floating ones in the model's dtype (`model_dtype`); token ids stay integers."""
    return inputs.to(device, model_dtype(recipe)) if inputs.is_floating_point() else inputs.to(device)


def autocast(recipe: Recipe, device):
    if recipe.optim.precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()
