"""Evaluation metrics per task, accumulated over batches: ``Metrics(task, num_classes)``, ``update``, ``compute``.

- classification: ``accuracy`` and mean cross-entropy ``loss``;
- regression: ``mse``;
- segmentation: ``pixel_accuracy`` and ``miou`` (mean over classes that occur in the targets or the
  predictions of the per-class intersection over union), from one confusion matrix; targets equal to
  ``ignore_index`` (255) are left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# The metric that picks the best checkpoint of each task, and whether higher is better.
PRIMARY = {"classification": ("accuracy", True), "regression": ("mse", False), "segmentation": ("miou", True)}
IGNORE_INDEX = 255


class Metrics:
    def __init__(self, task: str, num_classes: int | None = None) -> None:
        if task not in PRIMARY:
            raise ValueError(f"unknown task {task!r}; choose one of {list(PRIMARY)}")
        if task == "segmentation" and not num_classes:
            raise ValueError("segmentation metrics need num_classes")
        self.task, self.num_classes = task, num_classes
        self.count, self.correct, self.loss_sum, self.squared_error = 0, 0, 0.0, 0.0
        self.confusion = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.int64) if task == "segmentation" else None

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor) -> None:
        output, target = output.detach().float().cpu(), target.detach().cpu()
        if self.task == "classification":
            self.correct += (output.argmax(1) == target).sum().item()
            self.loss_sum += F.cross_entropy(output, target, reduction="sum").item()
            self.count += target.numel()
        elif self.task == "regression":
            self.squared_error += (output.reshape(target.shape) - target.float()).pow(2).sum().item()
            self.count += target.numel()
        else:
            predicted, target = output.argmax(1).flatten(), target.flatten()
            keep = target != IGNORE_INDEX
            n = self.num_classes
            self.confusion += torch.bincount(target[keep] * n + predicted[keep], minlength=n * n).reshape(n, n)

    def reduce(self, sum_over_ranks) -> None:
        """Sum the accumulated state over processes (``sum_over_ranks``: a SUM all-reduce, e.g. `World.sum`)
        before `compute`, when each rank evaluated its share of the split."""
        packed = torch.tensor([self.count, self.correct, self.loss_sum, self.squared_error], dtype=torch.float64)
        if self.confusion is not None:
            packed = torch.cat([packed, self.confusion.flatten().double()])
        packed = sum_over_ranks(packed)  # float64: counts stay exact below 2**53
        self.count, self.correct = int(packed[0].item()), int(packed[1].item())
        self.loss_sum, self.squared_error = packed[2].item(), packed[3].item()
        if self.confusion is not None:
            self.confusion = packed[4:].round().to(torch.int64).reshape(self.confusion.shape)

    def compute(self) -> dict[str, float]:
        if self.task == "classification":
            return {"accuracy": self.correct / max(self.count, 1), "loss": self.loss_sum / max(self.count, 1)}
        if self.task == "regression":
            return {"mse": self.squared_error / max(self.count, 1)}
        confusion = self.confusion.double()
        true_positive = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        present = union > 0
        return {
            "pixel_accuracy": (true_positive.sum() / confusion.sum().clamp_min(1)).item(),
            "miou": (true_positive[present] / union[present]).mean().item() if present.any() else 0.0,
        }
