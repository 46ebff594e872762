"""Collectives with autograd: all-gather of row shards in forward, reduce-scatter (SUM) in backward.

``gather_rows(local, group)`` concatenates every rank's equal-length ``local`` chunk in rank order. Its
backward hands each rank the SUM over ranks of the gradient of its own chunk: each rank's loss depends on
every row, so the gradient of the global (summed) loss w.r.t. a row is that sum. Scaling to a mean is left
to the caller (or DeepSpeed's gradient averaging): reducing with AVG here and again there would divide by N
twice, and gloo's AVG has had correctness bugs.

torch 2.13+ deprecates ``all_gather_into_tensor`` / ``reduce_scatter_tensor`` (warning on every call) in
favour of ``all_gather_single`` / ``reduce_scatter_single``; the shim uses whichever this torch has.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from mapscale.distributed.traffic import Traffic

_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def all_gather_rows(local: Tensor, group=None, traffic: Traffic | None = None) -> Tensor:
    """``(L, ...) -> (N * L, ...)``: every rank's chunk, in rank order (no autograd); counted in ``traffic``."""
    world = dist.get_world_size(group)
    out = local.new_empty((world * local.shape[0], *local.shape[1:]))
    _all_gather(out, local.contiguous(), group=group)
    if traffic is not None:
        traffic.add("all_gather", out.numel() * out.element_size(), world)
    return out


def reduce_scatter_rows(full: Tensor, group=None, traffic: Traffic | None = None) -> Tensor:
    """``(N * L, ...) -> (L, ...)``: the SUM over ranks of each rank's chunk (no autograd); counted in ``traffic``."""
    world = dist.get_world_size(group)
    out = full.new_empty((full.shape[0] // world, *full.shape[1:]))
    _reduce_scatter(out, full.contiguous(), op=dist.ReduceOp.SUM, group=group)
    if traffic is not None:
        traffic.add("reduce_scatter", full.numel() * full.element_size(), world)
    return out


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: Tensor, group, traffic) -> Tensor:
        ctx.group, ctx.traffic = group, traffic
        return all_gather_rows(local, group, traffic)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return reduce_scatter_rows(grad, ctx.group, ctx.traffic), None, None


def gather_rows(local: Tensor, group=None, traffic: Traffic | None = None) -> Tensor:
    """Differentiable all-gather of equal-length row chunks (backward: SUM reduce-scatter), counted in ``traffic``."""
    return _GatherRows.apply(local, group, traffic)
