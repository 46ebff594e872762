import pytest
import torch

from mapscale.metrics import Metrics


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
