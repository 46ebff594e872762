"""Evaluation metrics per task, accumulated over batches: ``Metrics(task, num_classes)``, ``update``, ``compute``.

- classification: ``accuracy`` and mean cross-entropy ``loss``; for two classes (``num_classes=2``) also
  ``auc``, the ROC AUC of the softmax probability of class 1 (see `roc_auc`). AUC needs every example's score,
  which a SUM all-reduce cannot gather: after a `Metrics.reduce` over more than one rank, `compute` leaves
  ``auc`` out rather than report one rank's share as the whole;
- regression: ``mse``;
- segmentation: ``pixel_accuracy`` and ``miou`` (mean over classes that occur in the targets or the
  predictions of the per-class intersection over union), from one confusion matrix; targets equal to
  ``ignore_index`` (255) are left out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# The metric that picks the best checkpoint of each task, and whether higher is better.
PRIMARY = {
    "classification": ("accuracy", True),
    "regression": ("mse", False),
    "segmentation": ("miou", True),
    "language_modeling": ("perplexity", False),
}
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
        # Binary classification keeps every example's class-1 probability and label for the AUC.
        self.keeps_scores = task == "classification" and num_classes == 2
        self.scores: list[Tensor] = []  # each (B,) float32
        self.labels: list[Tensor] = []  # each (B,) int64
        self.ranks = 1  # how many processes' state this holds; > 1 after a multi-rank `reduce`

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor) -> None:
        output, target = output.detach().cpu(), target.detach().cpu()
        output = output if output.dtype == torch.float64 else output.float()  # fp64 runs keep float64
        if self.task == "language_modeling":  # (B, T, V) next-token logits against (B, T) ids: one example per token
            output, target = output.flatten(0, -2), target.flatten()
        if self.task in ("classification", "language_modeling"):
            self.correct += (output.argmax(1) == target).sum().item()
            self.loss_sum += F.cross_entropy(output, target, reduction="sum").item()
            self.count += target.numel()
            if self.keeps_scores:
                self.scores.append(output.softmax(1)[:, 1])
                self.labels.append(target.flatten())
        elif self.task == "regression":
            self.squared_error += (output.reshape(target.shape) - target.to(output.dtype)).pow(2).sum().item()
            self.count += target.numel()
        else:
            predicted, target = output.argmax(1).flatten(), target.flatten()
            keep = target != IGNORE_INDEX
            n = self.num_classes
            self.confusion += torch.bincount(target[keep] * n + predicted[keep], minlength=n * n).reshape(n, n)

    def reduce(self, sum_over_ranks) -> None:
        """Sum the accumulated state over processes (``sum_over_ranks``: a SUM all-reduce, e.g. `World.sum`)
        before `compute`, when each rank evaluated its share of the split.

        The per-example scores behind ``auc`` cannot be summed: when more than one rank took part, `compute`
        omits ``auc`` (with one rank, e.g. `World.sum` outside torchrun, it stays)."""
        state = [self.count, self.correct, self.loss_sum, self.squared_error, 1]  # the 1 sums to the rank count
        packed = torch.tensor(state, dtype=torch.float64)
        if self.confusion is not None:
            packed = torch.cat([packed, self.confusion.flatten().double()])
        packed = sum_over_ranks(packed)  # float64: counts stay exact below 2**53
        self.count, self.correct = int(packed[0].item()), int(packed[1].item())
        self.loss_sum, self.squared_error = packed[2].item(), packed[3].item()
        self.ranks = int(round(packed[4].item()))
        if self.confusion is not None:
            self.confusion = packed[5:].round().to(torch.int64).reshape(self.confusion.shape)

    def compute(self) -> dict[str, float]:
        if self.task == "classification":
            result = {"accuracy": self.correct / max(self.count, 1), "loss": self.loss_sum / max(self.count, 1)}
            if self.keeps_scores and self.ranks == 1:
                scores = torch.cat(self.scores) if self.scores else torch.zeros(0)
                labels = torch.cat(self.labels) if self.labels else torch.zeros(0, dtype=torch.int64)
                result["auc"] = roc_auc(scores, labels)
            return result
        if self.task == "regression":
            return {"mse": self.squared_error / max(self.count, 1)}
        if self.task == "language_modeling":
            loss = self.loss_sum / max(self.count, 1)
            return {"perplexity": math.exp(min(loss, 700.0)), "loss": loss, "token_accuracy": self.correct / max(self.count, 1)}
        confusion = self.confusion.double()
        true_positive = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        present = union > 0
        return {
            "pixel_accuracy": (true_positive.sum() / confusion.sum().clamp_min(1)).item(),
            "miou": (true_positive[present] / union[present]).mean().item() if present.any() else 0.0,
        }


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """ROC AUC of ``scores`` (N,) for binary ``labels`` (N,) in {0, 1}: the probability that a random positive
    scores above a random negative, ties counting one half.

    Rank form of the Mann-Whitney U statistic, with tied scores given their average rank:
    ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``, ``R_pos`` the sum of the positives' ranks.
    Returns ``float("nan")`` when only one class (or nothing) is present, where the AUC is undefined.
    """
    scores, positive = scores.detach().double().flatten().cpu(), labels.detach().flatten().cpu() == 1
    n_pos = int(positive.sum().item())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, group, group_size = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    last_rank = group_size.cumsum(0).double()  # 1-based rank of each tie group's last member
    average_rank = last_rank - (group_size.double() - 1) / 2  # (G,)
    rank_sum = average_rank[group][positive].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
