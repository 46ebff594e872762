"""MappedModel: a target network whose parameters are generated on every forward by a MappingGenerator.

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

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from mapscale.mapping.generator import GeneratorConfig, MappingGenerator, Shard
from mapscale.mapping.layout import BudgetRule, Grouping, ParamLayout, Selector


class MappedModel(nn.Module):
    """``target`` run with parameters from ``generator``. Takes ownership of ``target``.

    ``forward(*args, **kwargs)`` is the target's forward. ``materialize()`` returns the plain state_dict
    the original target class loads with ``load_state_dict(strict=True)``, without mapscale.
    """

    def __init__(self, target: nn.Module, generator: MappingGenerator) -> None:
        super().__init__()
        layout = generator.layout
        self._num_target_params = sum(p.numel() for p in target.parameters())  # before any is replaced; tied once
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
        self.just_in_time = False
        """Sharded generators only: gather each sharding unit that is a module of the target just before it
        runs, free it after, and regenerate it in backward (see `_forward_just_in_time`)."""

    @property
    def layout(self) -> ParamLayout:
        return self.generator.layout

    def generated_tensors(self) -> dict[str, Tensor]:
        """``{parameter name: generated tensor}`` for every generated name, tied aliases included."""
        return self._cached if self._cached is not None else self.generator()

    def forward(self, *args, **kwargs):
        if self.just_in_time and self._cached is None:
            return self._forward_just_in_time(args, kwargs)
        return self.forward_with(self.generated_tensors(), *args, **kwargs)

    def _forward_just_in_time(self, args, kwargs):
        """The forward with each unit module's tensors generated and gathered only while that module runs.

        Each unit module runs under non-reentrant activation checkpointing: its gathered tensors are freed when
        it returns and regenerated (and re-gathered, in the same order on every rank) when backward reaches
        it, so peak generated-parameter memory is one unit plus the units gathered whole (not modules).
        """
        shard = self.generator.shard
        if shard is None:
            raise RuntimeError("just-in-time gathering needs a sharded generator (distributed.gather='per-unit' on several ranks)")
        modules = dict(self.target.named_modules())
        eager: dict[str, Tensor] = {}
        with contextlib.ExitStack() as stack:
            for index, unit in enumerate(shard.units):
                if unit.name in modules and unit.name:
                    stack.enter_context(_unit_just_in_time(modules[unit.name], unit.name, lambda index=index: self.generator.generate_unit(index)))
                else:
                    eager.update(self.generator.generate_unit(index))
            return self.forward_with(eager, *args, **kwargs)

    def forward_with(self, tensors: Mapping[str, Tensor], *args, **kwargs):
        """The target's forward with ``tensors`` (generated parameters, optionally buffers) swapped in."""
        return functional_call(self.target, dict(tensors), args, kwargs, tie_weights=False, strict=False)

    @contextlib.contextmanager
    def cached_weights(self) -> Iterator[None]:
        """Generate once and reuse the tensors for every forward inside the block (evaluation loops).

        Inside, the latents must not change and no gradient reaches them; the cache ends with the block.
        """
        with torch.no_grad():
            self._cached = {name: t.detach() for name, t in self.generator().items()}
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

    def mapping_bytes(self) -> int:
        return self.generator.mapping_bytes()

    def extra_repr(self) -> str:
        return (
            f"groups={len(self.layout.groups)}, latent={self.layout.total_latent_dim}, "
            f"trainable={self.num_trainable():,}, target_params={self.num_target_params():,}"
        )


@contextlib.contextmanager
def _unit_just_in_time(module: nn.Module, prefix: str, generate) -> Iterator[None]:
    """While active, ``module``'s forward generates its tensors (``generate() -> {full name: tensor}``) and runs
    under non-reentrant checkpointing. Its forward is swapped on the instance for the duration only, the way
    ``functional_call`` swaps tensors; running twice (recomputation) restores the module's buffers, so
    BatchNorm statistics are updated once per step."""
    original = type(module).forward.__get__(module)
    calls, inside = [0], [False]

    def run_unit(*args, **kwargs):
        tensors = {name[len(prefix) + 1 :]: t for name, t in generate().items()}
        recompute = calls[0] > 0
        calls[0] += 1
        saved = {n: b.clone() for n, b in module.named_buffers() if b.numel()} if recompute else {}
        inside[0] = True
        try:
            return functional_call(module, tensors, args, kwargs, tie_weights=False, strict=False)
        finally:
            inside[0] = False
            with torch.no_grad():
                for name, value in saved.items():
                    module.get_buffer(name).copy_(value)

    def forward(*args, **kwargs):
        if inside[0]:  # the call functional_call makes inside run_unit
            return original(*args, **kwargs)
        return checkpoint(run_unit, *args, use_reentrant=False, **kwargs)

    module.forward = forward
    try:
        yield
    finally:
        del module.forward


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
    shard: Callable[[ParamLayout], Shard] | None = None,
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

    ``shard`` (multi-rank runs) is called with the layout and returns this process's `Shard` of the mapping
    (`mapscale.distributed.sharding` makes it): the generator then holds only its rows of the mapping and
    gathers the rest from the other ranks on every forward.

    The model's current parameter values are taken as its default initialisation (seed the global RNG
    before building it for a reproducible run); its generated parameters are removed from it.
    """
    layout = ParamLayout.from_module(model, grouping, budget, trainable=trainable, frozen=frozen, budget_rule=budget_rule)
    return _mapped(model, layout, seed, device, shard, generator_options)


def direct_model(model: nn.Module, frozen: Iterable[Selector] = ()) -> MappedModel:
    """``model`` with every parameter trained directly and nothing generated (the full-training baseline), as a
    `MappedModel` so that it trains, evaluates, checkpoints and reports through the same code as mapped runs.
    ``frozen`` selectors keep tensors fixed (a linear probe: all but the head)."""
    return _mapped(model, ParamLayout.direct(model, frozen), 0, None, None, {})


def _mapped(model: nn.Module, layout: ParamLayout, seed: int, device, shard, generator_options: dict) -> MappedModel:
    unknown = sorted(set(generator_options) - set(GeneratorConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown map_model options {unknown}; generator options are {sorted(GeneratorConfig.__dataclass_fields__)}")
    config = GeneratorConfig(seed=seed, **generator_options)
    return build_mapped(model, layout, device, lambda init, device: MappingGenerator(layout, init, config, device=device, shard=None if shard is None else shard(layout)))


def build_mapped(model: nn.Module, layout: ParamLayout, device, make_generator: Callable[[dict[str, Tensor], torch.device], nn.Module]) -> MappedModel:
    """``model`` with ``layout``'s generated tensors produced by ``make_generator(init, device)``: ``init`` holds
    the model's current values of them (its default initialisation), ``device`` defaults to where its
    parameters are. The one assembly step of `map_model` and the peer generators (`mapscale.mapping.peers`)."""
    if device is None:
        device = next(model.parameters()).device
    init = {spec.name: model.get_parameter(spec.name).detach() for spec in layout.generated_tensors()}
    return MappedModel(model, make_generator(init, device))
