import math

import pytest
import torch

from mapscale.metrics import Metrics, roc_auc


def one_hot_logits(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, classes).movedim(-1, 1).float() * 5


def test_classification_accuracy_and_loss_accumulate_over_batches():
    metrics = Metrics("classification")
    metrics.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    metrics.update(torch.tensor([[0.0, 3.0]]), torch.tensor([1]))
    result = metrics.compute()
    assert result["accuracy"] == pytest.approx(2 / 3)
    expected = torch.nn.functional.cross_entropy(torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0, 1]))
    assert result["loss"] == pytest.approx(expected.item(), rel=1e-6)


def test_regression_mse_matches_the_shape_of_the_targets():
    metrics = Metrics("regression")
    metrics.update(torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [4.0]]))
    assert metrics.compute()["mse"] == pytest.approx((1 + 4) / 2)


def test_segmentation_pixel_accuracy_and_miou_by_hand():
    target = torch.tensor([[[0, 0], [1, 2]]])        # 4 pixels, classes 0, 1, 2
    predicted = torch.tensor([[[0, 1], [1, 2]]])
    metrics = Metrics("segmentation", num_classes=3)
    metrics.update(one_hot_logits(predicted, 3), target)
    result = metrics.compute()
    assert result["pixel_accuracy"] == pytest.approx(3 / 4)
    # IoU: class 0: 1 / (2 + 1 - 1) = 1/2; class 1: 1 / (1 + 2 - 1) = 1/2; class 2: 1/1
    assert result["miou"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_segmentation_ignores_the_ignore_index_and_absent_classes():
    target = torch.tensor([[[0, 255], [0, 0]]])
    metrics = Metrics("segmentation", num_classes=4)
    metrics.update(one_hot_logits(torch.zeros(1, 2, 2, dtype=torch.long), 4), target)
    assert metrics.compute() == {"pixel_accuracy": 1.0, "miou": 1.0}  # classes 1-3 never occur


def test_unknown_task_and_missing_classes_are_errors():
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        Metrics("ranking")
    with pytest.raises(ValueError, match="need num_classes"):
        Metrics("segmentation")


def logits_for_probability(p_class_1: list[float]) -> torch.Tensor:
    """Two-class logits whose softmax gives class 1 the probability ``p_class_1``."""
    p = torch.tensor(p_class_1, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1).float()


def test_roc_auc_by_hand():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered correctly
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)


def test_roc_auc_counts_ties_as_one_half():
    # pairs (pos, neg): (0.5, 0.5) tie = 1/2, (0.5, 0.2) = 1, (0.9, 0.5) = 1, (0.9, 0.2) = 1 -> 3.5 / 4
    assert roc_auc(torch.tensor([0.5, 0.2, 0.5, 0.9]), torch.tensor([0, 0, 1, 1])) == pytest.approx(3.5 / 4)
    assert roc_auc(torch.full((4,), 0.3), torch.tensor([0, 1, 0, 1])) == pytest.approx(0.5)


def test_roc_auc_perfect_inverted_and_undefined():
    labels = torch.tensor([0, 0, 0, 1, 1])
    scores = torch.tensor([0.1, 0.2, 0.3, 0.7, 0.9])
    assert roc_auc(scores, labels) == 1.0
    assert roc_auc(-scores, labels) == 0.0
    assert math.isnan(roc_auc(scores, torch.ones(5, dtype=torch.long)))
    assert math.isnan(roc_auc(torch.zeros(0), torch.zeros(0, dtype=torch.long)))


def test_binary_classification_reports_auc_over_batches():
    metrics = Metrics("classification", num_classes=2)
    metrics.update(logits_for_probability([0.1, 0.4]), torch.tensor([0, 0]))
    metrics.update(logits_for_probability([0.35, 0.8]), torch.tensor([1, 1]))
    result = metrics.compute()
    assert result["auc"] == pytest.approx(0.75)
    assert result["accuracy"] == pytest.approx(3 / 4)  # 0.35 is called class 0
    assert "auc" not in Metrics("classification", num_classes=10).compute()


def test_auc_survives_a_one_rank_reduce_and_is_left_out_after_a_multi_rank_one():
    def make() -> Metrics:
        metrics = Metrics("classification", num_classes=2)
        metrics.update(logits_for_probability([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        return metrics

    single = make()
    single.reduce(lambda t: t.clone())
    assert single.compute()["auc"] == pytest.approx(0.75)
    double = make()
    double.reduce(lambda t: 2 * t)  # two ranks holding the same state
    assert "auc" not in double.compute() and double.count == 8


def test_segmentation_reduce_sums_the_confusion_matrix():
    metrics = Metrics("segmentation", num_classes=3)
    metrics.update(one_hot_logits(torch.tensor([[[0, 1], [1, 2]]]), 3), torch.tensor([[[0, 0], [1, 2]]]))
    metrics.reduce(lambda t: 2 * t)
    assert metrics.confusion.sum().item() == 8
    assert metrics.compute()["miou"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
