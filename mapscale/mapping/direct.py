"""Methods that generate nothing: every trained tensor is the target's own (full training, a linear probe) or
an adapter inside it (peft's LoRA / VeRA, `mapscale.mapping.adapters`).

`DirectGenerator` implements the generator contract for them with an empty flat vector, so they train,
evaluate, checkpoint, report and shard-check through the same code as the generating methods.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mapscale.mapping.contract import WHOLE, copy_latents
from mapscale.mapping.layout import ParamLayout


class DirectGenerator(nn.Module):
    """Generates no tensor: ``layout`` has no groups, only directly trainable and frozen tensors.
    ``fixed`` is the bytes of fixed state the method keeps elsewhere (VeRA's shared random projections)."""

    flat_smoothness = True
    outputs = ()
    part = WHOLE

    def __init__(self, layout: ParamLayout, fixed: int = 0) -> None:
        super().__init__()
        if layout.groups:
            raise ValueError(f"a direct method generates nothing, but the layout has {len(layout.groups)} groups")
        self.layout, self.fixed = layout, fixed
        self.latents = nn.ParameterList()

    def generate(self, start: int, stop: int, latents=None) -> Tensor:
        if (start, stop) != (0, 0):
            raise IndexError(f"elements [{start}, {stop}) of an empty flat vector")
        return torch.empty(0)

    def assemble(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {}

    def forward(self, latents=None) -> dict[str, Tensor]:
        return {}

    def start_from(self, latents) -> None:
        copy_latents(self.latents, latents)

    def jacobian_sq_norm(self, index: int) -> None:
        return None

    def modulated_row_means(self, index: int) -> None:
        return None

    def fixed_bytes(self) -> int:
        return self.fixed
