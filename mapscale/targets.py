"""Builders for target networks. Each returns a freshly initialised ``nn.Module``; seed the global RNG before
calling one for a reproducible default init (the mapping calibrates against it).

``build_target(section)`` resolves a recipe's ``target`` section: a name from ``TARGETS``,
``torchvision:<model>`` or ``hf:<folder or model type>`` (`mapscale.hf`), its keyword arguments, and optional
pretrained weights from a local file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
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


def cnn1(in_channels: int = 1, classes: int = 10) -> nn.Sequential:
    """The paper's CNN1 (AlexNet-inspired), 537,994 parameters on 1x28x28 input with 10 classes, as the paper.

    Every conv is 3x3 with padding 1 (the paper states pad 1 only for the first; padding 1 on all four is what
    gives its 128x3x3 = 1152 features, and padding leaves the count unchanged):
    conv in->32 (28x28) -> ReLU -> maxpool 2 (14x14); conv 32->64 (14x14) -> ReLU -> maxpool 2 (7x7);
    conv 64->128 (7x7) -> ReLU; conv 128->128 (7x7) -> ReLU -> maxpool 2 (3x3, floor);
    flatten 1152 -> FC 256 -> ReLU -> FC classes.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, classes),
    )


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]


class UNet(nn.Module):
    """A small U-Net: ``len(widths)`` encoder levels, a bottleneck at twice the last width, a mirrored decoder.

    Encoder level: (3x3 conv + BN + ReLU) x 2, its output kept as the skip, then maxpool 2. Bottleneck:
    (3x3 conv + BN + ReLU) x 2 at ``2 * widths[-1]``. Decoder level: 2x2 stride-2 transpose conv halving the
    channels, concatenation with the skip, one 3x3 conv + BN + ReLU. Then a 1x1 classifier. Output: logits
    ``(N, classes, H, W)`` for input ``(N, in_channels, H, W)``, H and W divisible by ``2 ** len(widths)``.
    """

    def __init__(self, in_channels: int, classes: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.encoder = nn.ModuleList()
        for width in widths:
            self.encoder.append(nn.Sequential(*_conv_bn_relu(in_channels, width), *_conv_bn_relu(width, width)))
            in_channels = width
        bottleneck = 2 * widths[-1]
        self.bottleneck = nn.Sequential(*_conv_bn_relu(in_channels, bottleneck), *_conv_bn_relu(bottleneck, bottleneck))
        self.upsample, self.decoder = nn.ModuleList(), nn.ModuleList()
        in_channels = bottleneck
        for width in reversed(widths):
            self.upsample.append(nn.ConvTranspose2d(in_channels, width, 2, stride=2))
            self.decoder.append(nn.Sequential(*_conv_bn_relu(2 * width, width)))  # upsampled + skip channels
            in_channels = width
        self.classifier = nn.Conv2d(in_channels, classes, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, H, W) -> (N, classes, H, W)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, block, skip in zip(self.upsample, self.decoder, reversed(skips)):
            x = block(torch.cat([upsample(x), skip], dim=1))
        return self.classifier(x)


def cnn3(in_channels: int = 3, classes: int = 19, width: int = 32) -> UNet:
    """The paper's CNN3 (U-Net-inspired segmentation net for 19 Cityscapes classes on 3x256x256 input):
    exactly the paper's 1,734,803 parameters at the defaults (1,733,619 if the convs had no bias).

    Encoder levels at ``width`` x (1, 2, 4) = 32, 64, 128 channels, bottleneck 256, decoder 256->128->64->32,
    1x1 classifier; see `UNet`. Assumptions (the paper gives none of these): every 3x3 conv has padding 1 and a
    bias and is followed by BatchNorm then ReLU; the transpose convs have a bias and no BN/ReLU of their own.
    Logits come out at the input resolution (H and W divisible by 8).
    """
    return UNet(in_channels, classes, (width, 2 * width, 4 * width))


class LSTMRegressor(nn.Module):
    """One-layer ``batch_first`` LSTM with a linear head on the last time step:
    ``(N, T, inputs)`` -> ``(N, outputs)``."""

    def __init__(self, inputs: int, hidden: int, outputs: int = 1) -> None:
        super().__init__()
        self.lstm = nn.LSTM(inputs, hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden_states, _ = self.lstm(x)  # (N, T, hidden)
        return self.head(hidden_states[:, -1])


def paper_lstm(inputs: int = 67, hidden: int = 32) -> LSTMRegressor:
    """The paper's time-series LSTM, 12,961 parameters at the defaults, matching the paper exactly.

    The paper does not describe it; one layer with 67 input features and 32 hidden units (4 gates x
    (67*32 + 32*32 + 2*32 biases) = 12,928) plus a linear head 32->1 (33) is the inference that gives 12,961.
    """
    return LSTMRegressor(inputs, hidden, 1)


# Builder name -> function, as recipes name them (``target.name``). torchvision models are reached with
# the ``torchvision:`` prefix instead of being listed.
class GPT2Block(nn.Module):
    """Pre-norm transformer block of GPT-2: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``; causal attention
    through ``F.scaled_dot_product_attention``, a 4x GELU (tanh) MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.ModuleDict({"c_attn": nn.Linear(width, 3 * width), "c_proj": nn.Linear(width, width)})
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.attn["c_attn"](self.ln_1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, length, width)
        x = x + self.attn["c_proj"](attended)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """A GPT-2 decoder written in plain PyTorch (no ``transformers`` dependency: the target only needs its forward,
    and the layout needs ordinary named parameters). Token and position embeddings, ``layers`` pre-norm blocks, a
    final LayerNorm and an LM head **tied** to the token embedding (one tensor, two names; mapscale generates it
    once). ``forward(tokens (B, T) int64) -> logits (B, T, vocab)``.

    At the defaults (GPT-2 small: vocabulary 50,257, 1,024 positions, width 768, 12 layers, 12 heads) it has
    124,439,808 parameters, as Hugging Face's ``GPT2LMHeadModel``. Init as GPT-2: normal(0, 0.02) weights, zero
    biases, residual projections scaled by ``1/sqrt(2 layers)``.
    """

    def __init__(self, vocab: int = 50257, positions: int = 1024, width: int = 768, layers: int = 12, heads: int = 12) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(positions, width)
        self.h = nn.ModuleList(GPT2Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif param.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("c_proj.weight") or name.endswith("mlp.2.weight") else 0.02
                nn.init.normal_(param, std=std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.wpe.num_embeddings:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the {self.wpe.num_embeddings} positions")
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def gpt2(vocab: int = 50257, positions: int = 1024, width: int = 768, layers: int = 12, heads: int = 12) -> GPT2:
    """GPT-2 (small at the defaults, 124,439,808 parameters); smaller ones by ``width``/``layers``/``heads``."""
    return GPT2(vocab, positions, width, layers, heads)


TARGETS: dict[str, Callable[..., nn.Module]] = {
    "small_mnist_cnn": small_mnist_cnn,
    "cnn1": cnn1,
    "cnn2": cnn2,
    "cnn3": cnn3,
    "paper_lstm": paper_lstm,
    "gpt2": gpt2,
}
TORCHVISION_PREFIX = "torchvision:"
HF_PREFIX = "hf:"


def build_target(name: str, args: dict | None = None, weights: str | Path | None = None, task: str = "classification") -> nn.Module:
    """The target ``name`` built with ``args``, with pretrained ``weights`` loaded when given. ``task`` picks the
    head of a Hugging Face model (``hf:``; `mapscale.hf.build`)."""
    args = dict(args or {})
    if name.startswith(HF_PREFIX):
        from mapscale import hf

        model = hf.build(name[len(HF_PREFIX):], args, task)
    elif name.startswith(TORCHVISION_PREFIX):
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
        raise ValueError(f"unknown target {name!r}; use one of {sorted(TARGETS)}, 'torchvision:<model name>' or 'hf:<folder or model type>'")
    if weights is not None:
        model.load_state_dict(load_state_dict(weights), strict=True)
    return model


def ships_weights(name: str) -> bool:
    """Whether the target ``name`` is built with pretrained weights of its own (``hf:<folder>``), without ``target.weights``."""
    if not name.startswith(HF_PREFIX):
        return False
    from mapscale.hf import is_folder

    return is_folder(name[len(HF_PREFIX):])


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
