"""MappedModel: a target network whose parameters are generated on every forward by any method's generator.

The target keeps its buffers (BatchNorm running statistics stay ordinary buffers) and the tensors a recipe
kept out of generation (directly trainable or frozen). Each generated parameter is replaced by a zero-size,
non-persistent buffer of the same name: the attribute still exists (code such as ``Conv2d.extra_repr``
reads ``self.bias``), it holds no memory, it is in no state_dict, and the only trainable tensors are the
generator's latents and what the recipe marked trainable. The target runs its own, unmodified ``forward``
through ``torch.func.functional_call`` with the generated tensors swapped in under those names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mapscale.mapping.contract import WHOLE, Generator, Part
from mapscale.mapping.direct import DirectGenerator
from mapscale.mapping.generator import GeneratorConfig, MappingGenerator
from mapscale.mapping.layout import BudgetRule, Grouping, ParamLayout, Selector


class MappedModel(nn.Module):
    """``target`` run with parameters from ``generator`` (any method's: `mapscale.mapping.contract.Generator`).
    Takes ownership of ``target``.

    ``forward(*args, **kwargs)`` is the target's forward. ``materialize()`` returns the plain state_dict
    the original target class loads with ``load_state_dict(strict=True)``, without mapscale.
    ``num_target_params`` overrides the count taken from ``target`` (a peft-wrapped target holds adapters too).
    """

    def __init__(self, target: nn.Module, generator: nn.Module, *, num_target_params: int | None = None) -> None:
        super().__init__()
        if not isinstance(generator, Generator):
            raise TypeError(f"{type(generator).__name__} does not implement the generator contract (mapscale.mapping.contract.Generator)")
        layout = generator.layout
        self._num_target_params = num_target_params if num_target_params is not None else sum(p.numel() for p in target.parameters())  # tied once
        for spec in generator.outputs:
            for name in spec.names:
                owner_path, _, attr = name.rpartition(".")
                owner = target.get_submodule(owner_path)
                param = owner._parameters.get(attr)
                if param is None:
                    raise ValueError(f"{name!r} of the layout is not a parameter of {type(target).__name__}")
                del owner._parameters[attr]
                placeholder = torch.empty(0, dtype=param.dtype, device=param.device)
                owner.register_buffer(attr, placeholder, persistent=False)
        for spec in layout.trainable:
            target.get_parameter(spec.name).requires_grad_(True)
        for spec in layout.frozen:
            target.get_parameter(spec.name).requires_grad_(False)
        self.target = target
        self.generator = generator
        self._cached: dict[str, Tensor] | None = None
        self.sharding: Sharding | None = None
        """Set by the distributed layer (`mapscale.distributed.sharded`) when the generator holds a part: it
        generates the part, gathers the rest, and may run the target's forward gathering per unit."""

    @property
    def layout(self) -> ParamLayout:
        return self.generator.layout

    def generated_tensors(self, latents: list[Tensor] | None = None) -> dict[str, Tensor]:
        """``{parameter name: generated tensor}`` for every generated name, tied aliases included;
        ``latents`` (one per group) replace the trained ones."""
        if self._cached is not None and latents is None:
            return self._cached
        if self.sharding is not None:
            return self.sharding.generate(latents)
        return self.generator(latents)

    def forward(self, *args, **kwargs):
        if self.sharding is not None and self._cached is None:
            return self.sharding.forward(self, args, kwargs)
        return self.forward_with(self.generated_tensors(), *args, **kwargs)

    def forward_aside(self, latents: list[Tensor], *args, rng: RngState, **kwargs):
        """The target's forward with tensors generated from ``latents``, leaving the model as it was: its buffers
        (BatchNorm running statistics) get throw-away copies, and ``rng`` (`capture_rng` before the forward this
        one is compared with) is replayed, so both draw the same dropout masks (the Mapping Loss's stability)."""
        generated = self.generated_tensors(latents)
        buffers = {n: b.clone() for n, b in self.target.named_buffers() if n not in generated and b.numel() > 0}
        with torch.random.fork_rng(devices=[rng.device] if rng.device is not None else []):
            rng.restore()
            return self.forward_with({**buffers, **generated}, *args, **kwargs)

    def forward_with(self, tensors: Mapping[str, Tensor], *args, **kwargs):
        """The target's forward with ``tensors`` (generated parameters, optionally buffers) swapped in."""
        return functional_call(self.target, dict(tensors), args, kwargs, tie_weights=False, strict=False)

    @contextlib.contextmanager
    def cached_weights(self) -> Iterator[None]:
        """Generate once and reuse the tensors for every forward inside the block (evaluation loops).

        Inside, the latents must not change and no gradient reaches them; the cache ends with the block.
        """
        with torch.no_grad():
            self._cached = {name: t.detach() for name, t in self.generated_tensors().items()}
        try:
            yield
        finally:
            self._cached = None

    @torch.no_grad()
    def materialize(self) -> dict[str, Tensor]:
        """The target's full state_dict with the generated tensors filled in (detached copies)."""
        state = {name: t.detach().clone() for name, t in self.target.state_dict().items()}
        for name, tensor in self.generated_tensors().items():
            state[name] = tensor.detach().clone()
        return state

    def num_trainable(self) -> int:
        """Elements the optimiser updates: latents, modulators, mapping weights of full-dnn variants and
        directly trainable target tensors, each counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def num_target_params(self) -> int:
        """Parameter elements of the target network (tied tensors counted once)."""
        return self._num_target_params

    def fixed_bytes(self) -> int:
        """Bytes of the method's fixed state held in this process (`Generator.fixed_bytes`)."""
        return self.generator.fixed_bytes()

    def extra_repr(self) -> str:
        return (
            f"groups={len(self.layout.groups)}, latent={self.layout.total_latent_dim}, "
            f"trainable={self.num_trainable():,}, target_params={self.num_target_params():,}"
        )


@dataclass(frozen=True)
class RngState:
    """The CPU random state, and the CUDA one of ``device`` when it is a GPU (`capture_rng`)."""

    cpu: Tensor
    device: torch.device | None = None
    cuda: Tensor | None = None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.device is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def capture_rng(device: torch.device) -> RngState:
    """The random state a forward on ``device`` will draw from."""
    if device.type == "cuda":
        return RngState(torch.get_rng_state(), device, torch.cuda.get_rng_state(device))
    return RngState(torch.get_rng_state())


class Sharding(Protocol):
    """What `MappedModel` calls on the distributed layer's wrapper of a generator holding a part."""

    def generate(self, latents: list[Tensor] | None = None) -> dict[str, Tensor]:
        """Every generated tensor: the part generated here, the rest gathered (a collective)."""
        ...

    def forward(self, model: MappedModel, args: tuple, kwargs: dict):
        """The target's forward (``model.forward_with``), generating as the wrapper chooses."""
        ...


def map_model(
    model: nn.Module,
    grouping: Grouping = "slvt",
    budget: int | Mapping[str, int] = 2048,
    *,
    seed: int = 0,
    trainable: Iterable[Selector] = (),
    frozen: Iterable[Selector] = (),
    budget_rule: BudgetRule | None = None,
    device: torch.device | str | None = None,
    part: Callable[[ParamLayout], Part] | None = None,
    **generator_options,
) -> MappedModel:
    """Turn ``model`` into a `MappedModel` whose parameters are generated from small latents.

    Example::

        mapped = mapscale.map_model(net, grouping="lwt", budget=2048, seed=0)
        optimizer = torch.optim.Adam([p for p in mapped.parameters() if p.requires_grad], lr=1e-2)
        print(mapped.num_trainable(), "trainable of", mapped.num_target_params())

    ``grouping`` is ``"slvt"`` (one latent), ``"lwt"`` (one latent per module owning parameters), a dict of
    group name -> selectors or a callable; ``budget`` is the total latent size (split across groups in
    proportion to sqrt(group size)) or ``{group: latent_dim}``. ``trainable`` / ``frozen`` selectors keep
    tensors out of generation. ``generator_options`` are the fields of `GeneratorConfig` (modulation,
    modulation_scale, activation, offset, variant, operator, latent_init_std, constant_init_std,
    mapping_dtype). ``device`` defaults to where ``model``'s parameters are; ``"meta"`` builds shapes only.

    ``part`` (multi-rank runs) is called with the layout and returns the `Part` of the flat vector this
    generator holds (`mapscale.distributed.sharded` makes one per rank and gathers the rest on every forward).

    The model's current parameter values are taken as its default initialisation (seed the global RNG
    before building it for a reproducible run); its generated parameters are removed from it.
    """
    layout = ParamLayout.from_module(model, grouping, budget, trainable=trainable, frozen=frozen, budget_rule=budget_rule)
    return _mapped(model, layout, seed, device, part, generator_options)


def direct_model(model: nn.Module, frozen: Iterable[Selector] = ()) -> MappedModel:
    """``model`` with every parameter trained directly and nothing generated (the full-training baseline), as a
    `MappedModel` so that it trains, evaluates, checkpoints and reports through the same code as mapped runs.
    ``frozen`` selectors keep tensors fixed (a linear probe: all but the head)."""
    return MappedModel(model, DirectGenerator(ParamLayout.direct(model, frozen)))


def _mapped(model: nn.Module, layout: ParamLayout, seed: int, device, part, generator_options: dict) -> MappedModel:
    unknown = sorted(set(generator_options) - set(GeneratorConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown map_model options {unknown}; generator options are {sorted(GeneratorConfig.__dataclass_fields__)}")
    config = GeneratorConfig(seed=seed, **generator_options)
    held = WHOLE if part is None else part(layout)
    return build_mapped(model, layout, device, lambda init, device: MappingGenerator(layout, init, config, device=device, part=held))


def build_mapped(model: nn.Module, layout: ParamLayout, device, make_generator: Callable[[dict[str, Tensor], torch.device], nn.Module]) -> MappedModel:
    """``model`` with ``layout``'s generated tensors produced by ``make_generator(init, device)``: ``init`` holds
    the model's current values of them (its default initialisation), ``device`` defaults to where its
    parameters are. The one assembly step of `map_model` and the peer generators (`mapscale.mapping.peers`)."""
    if device is None:
        device = next(model.parameters()).device
    init = {spec.name: model.get_parameter(spec.name).detach() for spec in layout.generated_tensors()}
    return MappedModel(model, make_generator(init, device))
