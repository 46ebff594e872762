"""Small targets shared by the tests: each built from a fixed seed so init statistics are reproducible."""

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="session")
def _cache_outside_home(tmp_path_factory):
    """What mapscale caches (the embedded deepfake set) goes to a folder of this test session, not the user's
    ~/.cache, unless MAPSCALE_CACHE is set; subprocesses inherit it."""
    import os

    if "MAPSCALE_CACHE" not in os.environ:
        os.environ["MAPSCALE_CACHE"] = str(tmp_path_factory.mktemp("mapscale-cache"))
    yield


class SmallCNN(nn.Module):
    """A CNN with BatchNorm (buffers that must keep working in train and eval)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


class LSTMRegressor(nn.Module):
    """The paper's LSTM shape (one layer, hidden 32, linear head), on a small input size."""

    def __init__(self, inputs: int = 6, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(inputs, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class TiedLM(nn.Module):
    """An embedding tied to the output head, the way GPT-2 ties them."""

    def __init__(self, vocab: int = 50, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))


@pytest.fixture
def seeded():
    """Build a target under a fixed global seed: ``seeded(factory)``."""

    def build(factory, seed: int = 0):
        torch.manual_seed(seed)
        return factory()

    return build

