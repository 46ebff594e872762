"""Fine-tuning peers: Hugging Face ``peft`` LoRA and VeRA adapters on the layers mapscale's fine-tuning mode tunes.

The pretrained target gets adapters on the modules owning the tuned tensors (the same selectors as
``mapping.tuned``), through ``peft.get_peft_model``; only the adapters' tensors train (and any a
recipe keeps directly trainable), everything else is frozen. The result is a `MappedModel` with nothing
generated, so it trains, evaluates, checkpoints (adapters and buffers only) and reports through the same code
as mapscale's own runs; `AdapterModel.materialize` merges the adapters into the weights, so ``mapscale export``
writes the plain target's state_dict.

Trainable counts are linear in the rank ``r``: LoRA trains ``r (in + out)`` per Linear layer (``r (in k² +
out)`` per conv), VeRA ``r + out`` per Linear layer (its scaling vectors ``lambda_d``, ``lambda_b``; its shared
random ``A``, ``B`` are frozen buffers). `matching_rank` picks the rank whose count is nearest a budget.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable

import torch
from torch import nn

from mapscale.mapping.direct import DirectGenerator
from mapscale.mapping.finetune import tuned_tensors
from mapscale.mapping.layout import ParamLayout, Selector, _capture, _select
from mapscale.mapping.mapped import MappedModel

ADAPTERS = ("lora", "vera")


class AdapterModel(MappedModel):
    """A `MappedModel` around a ``peft`` model; ``materialize`` merges the adapters into the plain target's state."""

    @torch.no_grad()
    def materialize(self) -> dict[str, torch.Tensor]:
        merged = copy.deepcopy(self.target).merge_and_unload()
        return {name: t.detach().clone() for name, t in merged.state_dict().items()}


def adapted_modules(model: nn.Module, tuned: Iterable[Selector] = ()) -> list[str]:
    """Names of the modules owning the tuned tensors (every parameter's owner when ``tuned`` is empty)."""
    owners = []
    for spec in tuned_tensors(model, tuned):
        owner = spec.name.rpartition(".")[0]
        if owner not in owners:
            owners.append(owner)
    return owners


def _config(method: str, rank: int, modules: list[str], seed: int, transposed: bool = False):
    """The peft config; ``transposed``: the layers are transformers' ``Conv1D`` (GPT-2's), whose weight is
    ``(in, out)`` (peft's ``fan_in_fan_out``)."""
    import peft  # imported here: it pulls in transformers, seconds at import

    pattern = "^(" + "|".join(re.escape(m) for m in modules) + ")$"  # a str is matched whole against module names
    if method == "lora":
        return peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=pattern, lora_dropout=0.0, fan_in_fan_out=transposed)
    return peft.VeraConfig(r=rank, target_modules=pattern, projection_prng_key=seed, save_projection=True, fan_in_fan_out=transposed)


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (a Linear with its weight stored ``(in, out)``), recognised without importing transformers."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers.")


def _transposed(model: nn.Module, modules: list[str]) -> bool:
    kinds = {_is_conv1d(model.get_submodule(m)) for m in modules}
    if len(kinds) > 1:
        raise ValueError("the tuned tensors belong to both transformers Conv1D and other layers; peft takes one orientation per adapter: tune one kind")
    return kinds == {True}


def _check(model: nn.Module, method: str, rank, modules: list[str]) -> None:
    if method not in ADAPTERS:
        raise ValueError(f"unknown adapter {method!r}; choose one of {list(ADAPTERS)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"adapter rank must be an int >= 1, got {rank!r}")
    if not modules or "" in modules:
        raise ValueError("adapters attach to submodules owning the tuned tensors; select tensors of submodules (e.g. ['fc.*'])")
    supported = (nn.Linear,) if method == "vera" else (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
    wrong = [f"{m} ({type(model.get_submodule(m)).__name__})" for m in modules if not isinstance(model.get_submodule(m), supported) and not _is_conv1d(model.get_submodule(m))]
    if wrong:
        raise ValueError(f"{method} adapts {[c.__name__ for c in supported]} layers only; the tuned tensors belong to {wrong}")


def adapter_model(
    model: nn.Module,
    method: str,
    rank: int,
    tuned: Iterable[Selector] = (),
    *,
    trainable: Iterable[Selector] = (),
    seed: int = 0,
) -> AdapterModel:
    """``model`` (its current values are the pretrained weights) with ``method`` adapters of rank ``rank`` on
    the modules owning the ``tuned`` tensors. ``trainable`` selects other tensors trained directly (e.g. a new
    head); everything else is frozen. ``seed`` keys VeRA's shared random projections."""
    modules = adapted_modules(model, tuned)
    _check(model, method, rank, modules)
    num_target_params = sum(p.numel() for p in model.parameters())
    direct = set(_select(*_capture(model), list(trainable), "trainable")) if trainable else set()
    import peft

    wrapped = peft.get_peft_model(model, _config(method, rank, modules, seed, _transposed(model, modules)))
    prefix = "base_model.model."  # how peft names the plain target's tensors
    specs, _ = _capture(wrapped)
    for spec in specs:
        if spec.name.startswith(prefix) and _base_name(spec.name[len(prefix):]) in direct:
            wrapped.get_parameter(spec.name).requires_grad_(True)
    trains = {s.name: wrapped.get_parameter(s.name).requires_grad for s in specs}
    layout = ParamLayout(groups=(), trainable=tuple(s for s in specs if trains[s.name]), frozen=tuple(s for s in specs if not trains[s.name]))
    fixed = sum(b.numel() * b.element_size() for name, b in wrapped.named_buffers() if ".vera_" in name)  # VeRA's shared A, B
    # the plain target's parameter count, adapters not counted
    return AdapterModel(wrapped, DirectGenerator(layout, fixed), num_target_params=num_target_params)


def _base_name(name: str) -> str:
    """A parameter name of the wrapped model as the plain target names it (``fc.base_layer.weight`` -> ``fc.weight``)."""
    return name.replace(".base_layer.", ".")


def adapter_trainable(model: nn.Module, method: str, rank: int, tuned: Iterable[Selector] = ()) -> int:
    """Tensor elements ``method`` at ``rank`` trains on the tuned modules of ``model`` (built on a copy)."""
    import peft

    modules = adapted_modules(model, tuned)
    _check(model, method, rank, modules)
    wrapped = peft.get_peft_model(copy.deepcopy(model), _config(method, rank, modules, 0, _transposed(model, modules)))
    return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def matching_rank(model: nn.Module, method: str, budget: int, tuned: Iterable[Selector] = ()) -> tuple[int, int]:
    """``(rank, trainable)``: the rank whose trainable count is nearest ``budget`` (counts are linear in it)."""
    tuned = list(tuned)
    one, two = adapter_trainable(model, method, 1, tuned), adapter_trainable(model, method, 2, tuned)
    per_rank, base = two - one, 2 * one - two
    rank = max(1, round((budget - base) / per_rank))
    return rank, base + per_rank * rank
