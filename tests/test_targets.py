"""The paper's target networks: parameter counts against the paper's appendix, output shapes, and the
``TARGETS`` table."""

import pytest
import torch

from mapscale.targets import TARGETS, build_target, cnn1, cnn2, cnn3, paper_lstm


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("builder", "paper"), [(cnn1, 537_994), (cnn2, 108_618), (cnn3, 1_734_803), (paper_lstm, 12_961)]
)
def test_parameter_counts_match_the_paper(builder, paper):
    assert count(builder()) == paper


def test_cnn1_keeps_the_papers_spatial_sizes():
    model = cnn1()
    features = model[:-4](torch.zeros(2, 1, 28, 28))  # everything before the flatten
    assert features.shape == (2, 128, 3, 3)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_cnn2_output_shape():
    assert cnn2()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_cnn3_gives_logits_at_the_input_resolution():
    model = cnn3().eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 19, 64, 64)
    assert cnn3(in_channels=1, classes=4, width=4)(torch.zeros(1, 1, 16, 24)).shape == (1, 4, 16, 24)


def test_paper_lstm_predicts_one_value_from_the_last_step():
    model = paper_lstm()
    assert model(torch.zeros(3, 5, 67)).shape == (3, 1)
    assert paper_lstm(inputs=4, hidden=8)(torch.zeros(2, 7, 4)).shape == (2, 1)


@pytest.mark.parametrize("name", ["cnn1", "cnn2", "cnn3", "paper_lstm", "small_mnist_cnn"])
def test_targets_are_registered_and_built_by_name(name, monkeypatch):
    built = object()
    monkeypatch.setitem(TARGETS, name, lambda **args: (built, args))
    assert build_target(name, {"classes": 3}) == (built, {"classes": 3})  # the registry's builder, with the args


def test_registered_targets_have_the_papers_sizes():
    assert count(build_target("cnn2")) == 108_618 and count(build_target("small_mnist_cnn")) == 14_410


def test_build_target_passes_arguments():
    assert build_target("cnn1", {"classes": 2})(torch.zeros(1, 1, 28, 28)).shape == (1, 2)
