"""Builders for target networks. Each returns a freshly initialised ``nn.Module``; seed the global RNG before
calling one for a reproducible default init (the mapping calibrates against it).

``build_target(section)`` resolves a recipe's ``target`` section: a name from ``TARGETS`` or
``torchvision:<model>``, its keyword arguments, and optional pretrained weights from a local file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def small_mnist_cnn(
    channels: tuple[int, int] = (8, 16), hidden: int = 32, classes: int = 10, in_channels: int = 1
) -> nn.Sequential:
    """A small LeNet-like CNN for 28x28 digits (14,410 parameters at the defaults).

    conv in->c1 3x3 -> ReLU -> maxpool 2 (13x13); conv c1->c2 3x3 -> ReLU -> maxpool 2 (5x5);
    flatten c2*25 -> FC hidden -> ReLU -> FC classes. The quick-start and test target.
    """
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 25, hidden), nn.ReLU(), nn.Linear(hidden, classes),
    )


def cnn2(in_channels: int = 1, classes: int = 10) -> nn.Sequential:
    """The paper's CNN2 (LeNet-inspired), 108,618 parameters on 1x28x28 input with 10 classes.

    conv 1->16 3x3 (26x26) -> ReLU -> maxpool 2 (13x13); conv 16->32 3x3 (11x11) -> ReLU -> maxpool 2 (5x5);
    flatten 800 -> FC 128 -> ReLU -> FC classes: `small_mnist_cnn` at the paper's widths.
    """
    return small_mnist_cnn((16, 32), 128, classes, in_channels)


# Builder name -> function, as recipes name them (``target.name``). torchvision models are reached with
# the ``torchvision:`` prefix instead of being listed.
TARGETS: dict[str, Callable[..., nn.Module]] = {
    "small_mnist_cnn": small_mnist_cnn,
    "cnn2": cnn2,
}
TORCHVISION_PREFIX = "torchvision:"


def build_target(name: str, args: dict | None = None, weights: str | Path | None = None) -> nn.Module:
    """The target ``name`` built with ``args``, with pretrained ``weights`` loaded when given."""
    args = dict(args or {})
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        model_name = name[len(TORCHVISION_PREFIX):]
        available = torchvision.models.list_models()
        if model_name not in available:
            import difflib

            close = difflib.get_close_matches(model_name, available, n=3)
            raise ValueError(f"torchvision has no model {model_name!r}" + (f"; did you mean {close}?" if close else ""))
        if "weights" in args:
            raise ValueError("torchvision weights are never downloaded here: give a local file as target.weights")
        model = torchvision.models.get_model(model_name, weights=None, **args)
    elif name in TARGETS:
        model = TARGETS[name](**args)
    else:
        raise ValueError(f"unknown target {name!r}; use one of {sorted(TARGETS)} or 'torchvision:<model name>'")
    if weights is not None:
        model.load_state_dict(load_state_dict(weights), strict=True)
    return model


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a local ``.safetensors`` or ``torch.save`` file (``.pt``, ``.pth``, ``.bin``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint wrapping the weights
    return state
