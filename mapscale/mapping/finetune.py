"""Fine-tuning mode (the paper's eq. 25): modulate frozen pretrained weights with generated elements.

The pretrained tensors ``theta0_t`` chosen for tuning (all of them, or selectors such as ``"layer4.*"``,
``"fc.*"``) are frozen. For each tuned tensor ``t`` with ``numel_t`` entries an ordinary `MappingGenerator`
generates ``E_t = ceil(numel_t / L)`` *elements* ``o_t`` (``L``: ``block_size``), and each element modulates
``L`` consecutive weights (row-major order; the last block of a tensor may be shorter)::

    additive (the paper's form):     w_t = theta0_t + alpha * sigma_t * expand(o_t)
    multiplicative (a gate):         w_t = theta0_t * (1 + alpha * expand(o_t))

with ``expand(o) = repeat_interleave(o, L)[:numel_t]`` reshaped to the tensor, ``alpha`` the fine-tuning scale
and ``sigma_t`` the std of ``theta0_t`` (``constant_init_std`` for a constant or one-entry tensor).

The element generator is the ordinary one, built on an *element layout*: a throwaway module holding one
vector of ``E_t`` entries per tuned tensor, under the tensor's own name, so groupings (slvt, lwt, globs),
budget splits, operators and modulations apply unchanged (lwt groups elements by the target's module). It runs
with ``offset="zero"`` (around a zero ``theta_0`` that is neither held nor added), latents initialised to exactly 0 and ``constant_init_std = 1``:
the generator's own calibration then makes a latent with unit-variance entries move every element by about
one, so such a latent moves an additive tensor by ``alpha`` pretrained stds, and a gated one by a relative
``alpha``. At step 0 the latents are 0, so every element is exactly 0 and the model is exactly the pretrained
one (no subtraction of an initial output is needed).

**Trainable count.** The latent budget ``D`` is spread over the element groups as usual, but a group cannot
have more orthonormal rows than elements, so an int budget is capped at the element count::

    trainable = min(D, E) (+ tensors kept directly trainable),   E = sum_t ceil(numel_t / L)

e.g. ResNet50 ``layer4`` + ``fc`` (2 classes): ``P_f`` = 14,968,834 weights, ``L`` = 250 gives ``E`` = 59,902
elements, so SLVT 1,024 trains 1,024 latents; at ``D >= E`` the mapping is square and training the latents is
training the elements themselves (for ``L = 1``: full fine-tuning of the tuned tensors, reparametrised).

**What the trainer sees.** A `MappedModel` whose generator is the element `MappingGenerator` with the
`Elements` assembly: it replaces the tuned tensors (its ``outputs``) by placeholders, as for generated ones,
and returns the tuned tensors' *final* values ``{name: w_t}``, so the Mapping Loss's terms read:

- stability: exact (perturbed latents -> perturbed final weights);
- smoothness: the Hutchinson estimate of ``||dw/dz||_F²`` of the assembled (final) weights: the assembly
  says ``flat_smoothness = False``, so ``jacobian_sq_norm`` (of the elements) returns None and
  ``smoothness_estimator="exact"`` is refused;
- alignment: the element mapping's modulated row means. Its cosine has no gradient direction at ``z = 0``
  (the start of every fine-tuning run; the loss clamps the norm at 1e-12), so recipes must not use it here.

``layout`` is the element layout's groups (tensor names of the target, element shapes) plus ``frozen``: every
untuned tensor (so checkpoints hold latents and buffers, never pretrained weights: the recipe re-reads them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from mapscale.mapping.contract import WHOLE, Part
from mapscale.mapping.generator import GeneratorConfig, MappingGenerator
from mapscale.mapping.mapped import MappedModel
from mapscale.mapping.layout import BudgetRule, Grouping, ParamLayout, Selector, TensorSpec, _capture, _preview, _select, block_grouping, shape_module

FineTuneForm = Literal["additive", "multiplicative"]
FINETUNE_FORMS = ("additive", "multiplicative")


def tuned_tensors(model: nn.Module, tuned: Iterable[Selector] = ()) -> list[TensorSpec]:
    """The parameter tensors of ``model`` the selectors choose (every one when there are none), in
    ``named_parameters()`` order, tied tensors once (their other names as aliases)."""
    specs, owners = _capture(model)
    selectors = list(tuned)
    if not selectors:
        return specs
    chosen = set(_select(specs, owners, selectors, "tuned"))
    return [s for s in specs if s.name in chosen]


def num_elements(numel: int, block_size: int) -> int:
    """``ceil(numel / L)``: the elements modulating a tensor of ``numel`` entries, ``L`` weights each."""
    return -(-numel // block_size)


@torch.no_grad()
def load_pretrained(model: nn.Module, state: Mapping[str, Tensor], tuned: Iterable[Selector] = ()) -> list[str]:
    """Load pretrained ``state`` into ``model`` by name; returns the names kept at ``model``'s own init.

    Every key must be known and every tensor and buffer of ``model`` given, but a *tuned* tensor whose shape
    differs (a new head: a 1000-class checkpoint into a 2-class ResNet50) keeps ``model``'s seeded init and is
    learned through its elements. Any other shape difference is an error, since a frozen tensor never learns.
    """
    own = model.state_dict()
    tuned_names = {n for s in tuned_tensors(model, tuned) for n in s.names}
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unknown or missing:
        raise ValueError(f"pretrained weights do not fit {type(model).__name__}: missing {_preview(missing)}, unknown {_preview(unknown)}")
    kept, loaded = [], {}
    for name, value in state.items():
        if tuple(value.shape) == tuple(own[name].shape):
            loaded[name] = value
        elif name in tuned_names:
            kept.append(name)
        else:
            raise ValueError(
                f"pretrained {name!r} has shape {tuple(value.shape)}, the target {tuple(own[name].shape)}; "
                "only tuned tensors may differ (they learn from the target's init): add it to the tuned selectors"
            )
    model.load_state_dict({**own, **loaded}, strict=True)
    return kept


HALF_DTYPES = (torch.bfloat16, torch.float16)


def keep_pretrained_dtypes(model: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Hold ``model``'s tensors in the dtype of their pretrained values where that is bfloat16 or float16 (a
    frozen 7B checkpoint in bf16 stays 2 bytes a weight instead of 4); returns the names cast. For runs that
    autocast to bf16 (``optim.precision='bf16'``), whose matmuls read the weights in bf16 anyway."""
    own = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    cast = []
    for name, value in state.items():
        tensor = own.get(name)
        if tensor is not None and value.dtype in HALF_DTYPES and tensor.is_floating_point() and tensor.dtype != value.dtype and tensor.shape == value.shape:
            tensor.data = tensor.data.to(value.dtype)
            cast.append(name)
    return cast


class Elements(nn.Module):
    """The fine-tuning assembly of a `MappingGenerator` over the element layout: each tuned tensor is its
    pretrained value modulated by its ``(E_t,)`` generated elements. The pretrained tensors are non-persistent
    buffers: never in a state_dict."""

    flat_smoothness = False  # the smoothness term is about the final weights, not the elements

    def __init__(self, tuned: list[TensorSpec], pretrained: Mapping[str, Tensor], block_size: int, form: FineTuneForm, scale: float, constant_init_std: float) -> None:
        super().__init__()
        self.outputs = tuple(tuned)  # the target tensors assembled (MappedModel replaces these)
        self.block_size, self.form, self.scale = block_size, form, scale
        element_scales = []
        for t, spec in enumerate(tuned):
            theta0 = pretrained[spec.name].detach()
            self.register_buffer(f"pretrained_{t}", theta0, persistent=False)  # spec.shape
            element_scales.append(scale if form == "multiplicative" else scale * self._std(theta0, constant_init_std))
        self.element_scales = element_scales
        self._index = {s.name: t for t, s in enumerate(tuned)}

    @staticmethod
    def _std(theta0: Tensor, fallback: float) -> float:
        if theta0.device.type == "meta" or theta0.numel() < 2:
            return fallback
        std = theta0.double().std(unbiased=False).item()
        return std if std > 1e-12 * max(1.0, theta0.double().abs().mean().item()) else fallback

    def modulate(self, name: str, elements: Tensor) -> Tensor:
        """The final tensor ``name`` from its ``(E_t,)`` elements (``L = 1`` expands nothing)."""
        t = self._index[name]
        spec, theta0 = self.outputs[t], getattr(self, f"pretrained_{t}")
        if self.block_size > 1:  # (E_t,) -> (E_t * L,) -> the first numel_t: element j modulates weights [j L, (j + 1) L)
            elements = elements.repeat_interleave(self.block_size, output_size=elements.numel() * self.block_size)[: spec.numel]
        delta = (self.element_scales[t] * elements).view(spec.shape)
        if self.form == "multiplicative":
            return (theta0 * (1 + delta)).to(spec.dtype)
        return (theta0 + delta).to(spec.dtype)

    def forward(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for name, elements in tensors.items():
            weight = self.modulate(name, elements)
            for alias in self.outputs[self._index[name]].names:
                out[alias] = weight
        return out


def finetune_model(
    model: nn.Module,
    tuned: Iterable[Selector] = (),
    block_size: int = 1,
    form: FineTuneForm = "additive",
    scale: float = 0.1,
    grouping: Grouping = "slvt",
    budget: int | Mapping[str, int] = 2048,
    *,
    seed: int = 0,
    trainable: Iterable[Selector] = (),
    budget_rule: BudgetRule | None = None,
    device: torch.device | str | None = None,
    part: Callable[[ParamLayout], Part] | None = None,
    **generator_options,
) -> MappedModel:
    """Fine-tune ``model`` (its current values are the pretrained ``theta0``) through generated elements.

    ``tuned``: selectors of the tuned tensors (layout forms: globs, regexes, module types, predicates; none
    means every tensor). ``block_size`` is the paper's ``L``; ``form`` and ``scale`` (alpha) as in the module
    docstring. ``grouping`` / ``budget`` / ``budget_rule`` group the elements exactly as `map_model` groups
    parameters (an int budget above the element count is capped at it). ``trainable`` selects untuned tensors
    trained directly; every other untuned tensor is frozen. ``generator_options`` are `GeneratorConfig` fields
    for the element generator (modulation, modulation_scale, activation, variant, operator, mapping_dtype);
    offset, latent init and calibration are fixed so the run starts exactly at ``theta0``.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size (the paper's L) must be an int >= 1, got {block_size!r}")
    if form not in FINETUNE_FORMS:
        raise ValueError(f"unknown fine-tuning form {form!r}; choose one of {list(FINETUNE_FORMS)}")
    if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
        raise ValueError(f"fine-tuning scale (alpha) must be a positive number, got {scale!r}")
    fixed = {"offset", "latent_init_std", "constant_init_std"} & set(generator_options)
    if fixed:
        raise TypeError(f"fine-tuning fixes {sorted(fixed)} so the run starts at the pretrained weights; leave them out")
    unknown = sorted(set(generator_options) - set(GeneratorConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown finetune_model options {unknown}; generator options are {sorted(GeneratorConfig.__dataclass_fields__)}")
    config = GeneratorConfig(seed=seed, offset="zero", latent_init_std=0.0, constant_init_std=1.0, **generator_options)
    if config.variant == "full-dnn":
        raise ValueError("variant 'full-dnn' freezes the latents at 0, where the mapping weights get no gradient; use 'mapping'")

    tuned_specs = tuned_tensors(model, tuned)
    specs, owners = _capture(model)
    tuned_names = {s.name for s in tuned_specs}
    untuned = [s for s in specs if s.name not in tuned_names]
    kept_trainable = set(_select(untuned, owners, list(trainable), "trainable")) if trainable else set()
    if device is None:
        device = next(model.parameters()).device

    # The element layout groups elements by the tuned tensors' own paths: one (E_t,) vector per tensor.
    # Elements compute in the run's dtype, not a half-precision checkpoint's (`keep_pretrained_dtypes`).
    compute = next((s.dtype for s in specs if s.dtype not in HALF_DTYPES), torch.float32)
    element_module = shape_module({spec.name: (num_elements(spec.numel, block_size),) for spec in tuned_specs}, dtype=compute)
    total = sum(num_elements(s.numel, block_size) for s in tuned_specs)
    if not isinstance(budget, Mapping) and isinstance(budget, int) and not isinstance(budget, bool) and budget > total:
        budget = total  # a group has at most as many orthonormal rows as elements
    if grouping == "blocks":  # the elements carry the tuned tensors' names; the blocks are the target's
        grouping = block_grouping(model)
    element_layout = ParamLayout.from_module(element_module, grouping, budget, budget_rule=budget_rule)
    layout = ParamLayout(
        groups=element_layout.groups,
        trainable=tuple(s for s in untuned if s.name in kept_trainable),
        frozen=tuple(s for s in untuned if s.name not in kept_trainable),
    )
    pretrained = {s.name: model.get_parameter(s.name).detach().to(device) for s in tuned_specs}
    assembly = Elements(tuned_specs, pretrained, block_size, form, float(scale), config.constant_init_std)
    held = WHOLE if part is None else part(layout)
    # offset="zero": the elements start at 0 and no zero base is held or added (E floats fewer, and one add less a pass)
    generator = MappingGenerator(layout, {}, config, device=device, part=held, assembly=assembly)
    return MappedModel(model, generator)
