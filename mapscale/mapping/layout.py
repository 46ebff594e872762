"""Which of a target's parameter tensors are generated, how they are grouped, and each group's latent size.

A `ParamLayout` is captured once from the target module, before anything wraps or shards it, and is
plain data afterwards: every later stage (generator, sharding plan, checkpoints, `mapscale inspect`)
reads shapes and offsets from it, never from the target's parameters.

Groupings (DESIGN.md section 1):
- ``"slvt"``: one group, named ``"all"``, holding every generated tensor.
- ``"lwt"``: one group per module that directly owns parameters, named by the module's path
  (``"(root)"`` for parameters owned by the target itself).
- ``"blocks"``: one group per repeated block of a transformer (or any network built as a stack), named by the
  block's path (``"h.0"``, ``"model.layers.3"``), plus ``"embeddings"`` for the tensors before the first block
  and ``"final"`` for those after the last (final norm, an untied head): `repeated_blocks`.
- a dict ``{group name: selector or list of selectors}``: each tensor joins the first group with a
  matching selector. A selector is a glob on parameter names (``"layer4.*"``), a compiled regex
  (``re.compile(r"^fc\\.")``, searched anywhere in the name), an ``nn.Module`` subclass (tensors owned by
  modules of that type) or a predicate ``(name, parameter) -> bool``.
- a callable ``(name, parameter) -> group name``.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

Selector = str | re.Pattern | type | Callable[[str, nn.Parameter], bool]
Grouping = str | Mapping[str, Selector | Sequence[Selector]] | Callable[[str, nn.Parameter], str]
BudgetRule = Callable[[Sequence[int], int], Sequence[int]]

GROUPINGS = ("slvt", "lwt", "blocks")
SLVT_GROUP = "all"
ROOT_GROUP = "(root)"


@dataclass(frozen=True)
class TensorSpec:
    """One parameter tensor of the target.

    ``name`` is its first name in ``named_parameters()`` order; ``aliases`` are the other names under
    which the same (tied) parameter appears, e.g. a language model's output head tied to its embedding.
    ``offset`` is where the tensor starts inside its group's flat vector (0 for tensors not generated).
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int = 0
    aliases: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class GroupSpec:
    """A group of generated tensors sharing one latent of size ``latent_dim`` (the paper's ``z_g``)."""

    name: str
    tensors: tuple[TensorSpec, ...]
    latent_dim: int

    @property
    def numel(self) -> int:
        """``P_g``: the number of generated elements, the length of the group's flat vector."""
        return sum(t.numel for t in self.tensors)


@dataclass(frozen=True)
class ParamLayout:
    """The generated groups plus the tensors kept out of generation (directly trainable or frozen)."""

    groups: tuple[GroupSpec, ...]
    trainable: tuple[TensorSpec, ...] = ()
    frozen: tuple[TensorSpec, ...] = ()
    _by_name: dict[str, TensorSpec] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for spec in self.generated_tensors():
            self._by_name[spec.name] = spec

    @property
    def compute_dtype(self) -> torch.dtype:
        """What the fixed state is built in and generation computes in: float64 for a float64 target
        (``optim.precision='fp64'``: nothing rounded to float32 on the way, so no result depends on the machine's
        float32 rounding), else float32."""
        generated = self.generated_tensors()
        return torch.float64 if generated and all(t.dtype == torch.float64 for t in generated) else torch.float32

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        grouping: Grouping = "slvt",
        budget: int | Mapping[str, int] = 2048,
        *,
        trainable: Iterable[Selector] = (),
        frozen: Iterable[Selector] = (),
        budget_rule: BudgetRule | None = None,
    ) -> ParamLayout:
        """Capture the layout of ``module``.

        ``budget`` is either the total latent size ``D`` split across groups by ``budget_rule``
        (default `sqrt_budget_split`) or an explicit ``{group name: latent_dim}``. Tensors matched by a
        ``trainable`` selector stay ordinary trainable parameters; those matched by ``frozen`` stay
        fixed at their current values. Every selector must match at least one tensor.
        """
        specs, owners = _capture(module)
        if not specs:
            raise ValueError(f"{type(module).__name__} has no parameters to generate")
        kept_trainable = _select(specs, owners, list(trainable), "trainable")
        kept_frozen = _select(specs, owners, list(frozen), "frozen")
        both = sorted(set(kept_trainable) & set(kept_frozen))
        if both:
            raise ValueError(f"tensors marked both trainable and frozen: {_preview(both)}")
        excluded = set(kept_trainable) | set(kept_frozen)
        generated = [s for s in specs if s.name not in excluded]
        if not generated:
            raise ValueError("every parameter is excluded from generation; nothing is left to map")

        members = _assign_groups(generated, owners, grouping, module)
        sizes = [sum(s.numel for s in tensors) for tensors in members.values()]
        dims = _resolve_budget(list(members), sizes, budget, budget_rule, grouping)

        groups = []
        for (name, tensors), dim in zip(members.items(), dims):
            offset, placed = 0, []
            for spec in tensors:
                placed.append(replace(spec, offset=offset))
                offset += spec.numel
            groups.append(GroupSpec(name=name, tensors=tuple(placed), latent_dim=dim))
        by_name = {s.name: s for s in specs}
        return cls(
            groups=tuple(groups),
            trainable=tuple(by_name[n] for n in kept_trainable),
            frozen=tuple(by_name[n] for n in kept_frozen),
        )

    @classmethod
    def direct(cls, module: nn.Module, frozen: Iterable[Selector] = ()) -> ParamLayout:
        """Nothing generated, every parameter trained directly: the paper's full-training baseline, run
        through the same `MappedModel` and trainer as the mapped rows it is compared with. Tensors matched by
        ``frozen`` stay fixed (a linear probe freezes all but the head)."""
        specs, owners = _capture(module)
        if not specs:
            raise ValueError(f"{type(module).__name__} has no parameters to train")
        kept_frozen = set(_select(specs, owners, list(frozen), "frozen"))
        if len(kept_frozen) == len(specs):
            raise ValueError("every parameter is frozen; nothing is left to train")
        return cls(groups=(), trainable=tuple(s for s in specs if s.name not in kept_frozen), frozen=tuple(s for s in specs if s.name in kept_frozen))

    def generated_tensors(self) -> list[TensorSpec]:
        return [t for g in self.groups for t in g.tensors]

    def tensor(self, name: str) -> TensorSpec:
        """The generated tensor called ``name`` (its first name, not an alias)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a generated tensor of this layout") from None

    def group(self, name: str) -> GroupSpec:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no group {name!r}; groups: {_preview([g.name for g in self.groups])}")

    @property
    def num_generated(self) -> int:
        """Elements generated by the mapping (the paper's ``P``)."""
        return sum(g.numel for g in self.groups)

    @property
    def num_target_params(self) -> int:
        """Every parameter element of the target: generated, directly trainable and frozen."""
        return self.num_generated + sum(t.numel for t in self.trainable + self.frozen)

    @property
    def latent_dims(self) -> dict[str, int]:
        return {g.name: g.latent_dim for g in self.groups}

    @property
    def total_latent_dim(self) -> int:
        return sum(g.latent_dim for g in self.groups)

    @property
    def mapping_numel(self) -> int:
        """Entries of the fixed mapping weights if stored densely: ``sum_g d_g * P_g``."""
        return sum(g.latent_dim * g.numel for g in self.groups)


def sqrt_budget_split(sizes: Sequence[int], budget: int) -> list[int]:
    """Split ``budget`` latent dimensions across groups of ``sizes`` elements, proportional to sqrt(size).

    Each group gets at least 1 and at most its size (orthonormal rows need ``latent_dim <= P_g``). The real
    shares are ``clip(lam * sqrt(size), 1, size)`` with ``lam`` chosen so they sum to ``budget``; they are
    rounded down and the remainder goes to the largest fractional parts (ties to the earlier group), so
    the result is deterministic and sums exactly to ``budget``.
    """
    return power_budget_split(sizes, budget, 0.5)


def power_rule(power: float) -> BudgetRule:
    """The budget rule giving each group a share proportional to ``size ** power`` (`power_budget_split`)."""
    if not 0 <= power <= 1:
        raise ValueError(f"budget power must lie in [0, 1] (0: equal shares, 0.5: sqrt, 1: proportional), got {power!r}")
    return lambda sizes, budget: power_budget_split(sizes, budget, power)


def power_budget_split(sizes: Sequence[int], budget: int, power: float) -> list[int]:
    """`sqrt_budget_split` with shares proportional to ``size ** power``: 0 gives every group the same share
    (a small head gets as many latents as a large layer, up to its size), 1 shares in proportion to size."""
    _check_budget_fits(sizes, budget)
    weights = [math.sqrt(s) if power == 0.5 else float(s) ** power for s in sizes]

    def shares(lam: float) -> list[float]:
        return [min(max(lam * w, 1.0), float(s)) for w, s in zip(weights, sizes)]

    lo, hi = 0.0, max(s / w for s, w in zip(sizes, weights))  # at hi every group is at its cap
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(shares(mid)) < budget:
            lo = mid
        else:
            hi = mid
    real = shares(hi)
    dims = [max(1, min(s, math.floor(x))) for x, s in zip(real, sizes)]
    # Hand out (or take back) the rounding remainder one dimension at a time, largest fraction first.
    order = sorted(range(len(sizes)), key=lambda i: (-(real[i] - math.floor(real[i])), i))
    while (missing := budget - sum(dims)) != 0:
        step = 1 if missing > 0 else -1
        for i in order if step == 1 else order[::-1]:
            if missing != 0 and 1 <= dims[i] + step <= sizes[i]:
                dims[i] += step
                missing -= step
    return dims


def _check_budget_fits(sizes: Sequence[int], budget: int, context: str = "") -> None:
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"budget must be an int, got {type(budget).__name__}")
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    if budget < len(sizes):
        raise ValueError(
            f"budget {budget} is smaller than the {len(sizes)} groups{context}; each group needs a latent of at least 1"
        )
    if budget > sum(sizes):
        raise ValueError(f"budget {budget} exceeds the {sum(sizes)} generated parameters; nothing would be compressed")


def _resolve_budget(
    names: list[str],
    sizes: list[int],
    budget: int | Mapping[str, int],
    rule: BudgetRule | None,
    grouping: Grouping,
) -> list[int]:
    if isinstance(budget, Mapping):
        missing = [n for n in names if n not in budget]
        unknown = [n for n in budget if n not in names]
        if missing or unknown:
            raise ValueError(
                f"per-group budget must name every group exactly: missing {_preview(missing)}, "
                f"unknown {_preview(unknown)}; groups are {_preview(names)}"
            )
        dims = [budget[n] for n in names]
    else:
        label = grouping if isinstance(grouping, str) else "this grouping"
        _check_budget_fits(sizes, budget, f" under {label}")
        dims = list((rule or sqrt_budget_split)(sizes, budget))
        if len(dims) != len(names) or sum(dims) != budget:
            raise ValueError(f"budget rule returned {dims} for {len(names)} groups, which does not sum to {budget}")
    for name, dim, size in zip(names, dims, sizes):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"latent_dim of group {name!r} must be a positive int, got {dim!r}")
        if dim > size:
            raise ValueError(
                f"latent_dim {dim} of group {name!r} exceeds its {size} parameters; "
                "a mapping cannot have more orthonormal rows than columns"
            )
    return dims


def shape_module(shapes: Mapping[str, Sequence[int]], dtype: torch.dtype = torch.float32) -> nn.Module:
    """A parameter-only module with a meta-device parameter of each given shape (and ``dtype``) at each dotted
    name, so that a layout of derived tensors (fine-tuning elements, low-rank factors) groups them by the target's
    own module paths. Only shapes exist: values are given to the generator separately."""
    root = nn.Module()
    for name, shape in shapes.items():
        *path, attr = name.split(".")
        owner = root
        for part in path:
            if part not in owner._modules:
                owner.add_module(part, nn.Module())
            owner = owner._modules[part]
        owner.register_parameter(attr, nn.Parameter(torch.empty(tuple(shape), dtype=dtype, device="meta"), requires_grad=False))
    return root


def _capture(module: nn.Module) -> tuple[list[TensorSpec], dict[str, nn.Module]]:
    """Every distinct parameter once (tied names as aliases), and the module owning each name."""
    owners: dict[str, nn.Module] = {}
    names_of: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        for p_name, param in mod._parameters.items():
            if param is None:
                continue
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if full in owners:
                continue
            owners[full] = mod
            names_of.setdefault(id(param), []).append(full)
            params[id(param)] = param
    # Order by named_parameters(), the order users and state_dicts know.
    order = {name: i for i, (name, _) in enumerate(module.named_parameters(remove_duplicate=False))}
    specs = []
    for key, names in names_of.items():
        names.sort(key=lambda n: order.get(n, len(order)))
        param = params[key]
        specs.append(
            TensorSpec(
                name=names[0],
                shape=tuple(param.shape),
                dtype=param.dtype,
                aliases=tuple(names[1:]),
            )
        )
    specs.sort(key=lambda s: order.get(s.name, len(order)))
    return specs, owners


def _matches(selector: Selector, spec: TensorSpec, owners: Mapping[str, nn.Module], param_of) -> bool:
    if isinstance(selector, str):
        return any(fnmatch.fnmatchcase(n, selector) for n in spec.names)
    if isinstance(selector, re.Pattern):
        return any(selector.search(n) for n in spec.names)
    if isinstance(selector, type):
        if not issubclass(selector, nn.Module):
            raise TypeError(f"a type selector must be an nn.Module subclass, got {selector.__name__}")
        return any(isinstance(owners[n], selector) for n in spec.names)
    if callable(selector):
        return bool(selector(spec.name, param_of(spec)))
    raise TypeError(
        f"selector {selector!r} is not a glob string, compiled regex, nn.Module subclass or predicate"
    )


def _describe(selector: Selector) -> str:
    if isinstance(selector, re.Pattern):
        return f"regex {selector.pattern!r}"
    if isinstance(selector, str):
        return f"glob {selector!r}"
    if isinstance(selector, type):
        return f"module type {selector.__name__}"
    return f"predicate {getattr(selector, '__name__', repr(selector))}"


def _select(specs: list[TensorSpec], owners, selectors: list[Selector], role: str) -> list[str]:
    chosen: list[str] = []
    param_of = _param_lookup(owners)
    for selector in selectors:
        hits = [s.name for s in specs if _matches(selector, s, owners, param_of)]
        if not hits:
            raise ValueError(f"{role} {_describe(selector)} matches no parameter; names look like {_preview([s.name for s in specs])}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _param_lookup(owners: Mapping[str, nn.Module]):
    def param_of(spec: TensorSpec) -> nn.Parameter:
        return owners[spec.name]._parameters[spec.name.rsplit(".", 1)[-1]]

    return param_of


def repeated_blocks(module: nn.Module) -> list[str]:
    """The paths of ``module``'s repeated blocks: the children of the ``nn.ModuleList`` / ``nn.Sequential`` of 2 or
    more modules of one class and one parameter count that holds the most parameters (a transformer's layers:
    ``h`` in GPT-2, ``model.layers`` in LLaMA, ``bert.encoder.layer`` in BERT). Raises ValueError when there is none."""
    best: tuple[int, list[str]] = (0, [])
    for path, child in module.named_modules():
        if not isinstance(child, (nn.ModuleList, nn.Sequential)) or len(child) < 2:
            continue
        items = list(child.named_children())
        counts = {sum(p.numel() for p in block.parameters()) for _, block in items}
        if len({type(block) for _, block in items}) != 1 or len(counts) != 1 or not counts.pop():
            continue
        total = sum(p.numel() for _, block in items for p in block.parameters())
        if total > best[0]:
            best = (total, [f"{path}.{name}" if path else name for name, _ in items])
    if not best[1]:
        raise ValueError(
            f"grouping 'blocks' found no repeated blocks in {type(module).__name__} (a ModuleList or Sequential of 2 or more "
            "modules of one class and size); use 'lwt' or a dict of group name -> selectors"
        )
    return best[1]


def block_grouping(module: nn.Module) -> Callable[[str, object], str]:
    """The ``"blocks"`` grouping of ``module`` as a callable ``(parameter name, parameter) -> group``: the block's
    path (`repeated_blocks`) for a tensor inside one, ``"embeddings"`` for one before the first block in
    ``named_parameters`` order, ``"final"`` for one after. Usable on other modules whose tensors carry these names
    (the fine-tuning mode's elements)."""
    return _block_grouping(module)[1]


def _block_grouping(module: nn.Module) -> tuple[list[str], Callable[[str, object], str]]:
    """`repeated_blocks` and `block_grouping` of ``module``, from one walk of its modules."""
    blocks = repeated_blocks(module)
    order = {name: i for i, (name, _) in enumerate(module.named_parameters(remove_duplicate=False))}
    first = min(i for name, i in order.items() if any(name.startswith(b + ".") for b in blocks))

    def group(name: str, _parameter=None) -> str:
        block = next((b for b in blocks if name.startswith(b + ".")), None)
        return block or ("embeddings" if order.get(name, first) < first else "final")

    return blocks, group


def _blocks(specs: list[TensorSpec], module: nn.Module) -> dict[str, list[TensorSpec]]:
    """``"blocks"``: a group per repeated block, ``"embeddings"`` before the first, ``"final"`` after the last."""
    blocks, group = _block_grouping(module)
    members: dict[str, list[TensorSpec]] = {}
    for spec in specs:
        members.setdefault(group(spec.name), []).append(spec)
    return {g: members[g] for g in ["embeddings", *blocks, "final"] if g in members}


def _assign_groups(specs: list[TensorSpec], owners, grouping: Grouping, module: nn.Module) -> dict[str, list[TensorSpec]]:
    param_of = _param_lookup(owners)
    members: dict[str, list[TensorSpec]] = {}
    if isinstance(grouping, str):
        if grouping == "slvt":
            return {SLVT_GROUP: list(specs)}
        if grouping == "blocks":
            return _blocks(specs, module)
        if grouping == "lwt":
            for spec in specs:
                owner_path = spec.name.rpartition(".")[0] or ROOT_GROUP
                members.setdefault(owner_path, []).append(spec)
            return members
        raise ValueError(
            f"unknown grouping {grouping!r}; use one of {list(GROUPINGS)}, a dict of group name -> selectors, "
            "or a callable (name, parameter) -> group name"
        )
    if isinstance(grouping, Mapping):
        if not grouping:
            raise ValueError("a custom grouping needs at least one group")
        rules = {g: (list(sel) if isinstance(sel, (list, tuple)) else [sel]) for g, sel in grouping.items()}
        for group, selectors in rules.items():
            for selector in selectors:
                if not any(_matches(selector, s, owners, param_of) for s in specs):
                    raise ValueError(
                        f"group {group!r}: {_describe(selector)} matches no generated parameter; "
                        f"names look like {_preview([s.name for s in specs])}"
                    )
        unmatched = []
        for spec in specs:
            group = next((g for g, sels in rules.items() if any(_matches(x, spec, owners, param_of) for x in sels)), None)
            if group is None:
                unmatched.append(spec.name)
            else:
                members.setdefault(group, []).append(spec)
        if unmatched:
            raise ValueError(
                f"{len(unmatched)} parameters match no group: {_preview(unmatched)}; "
                "add a catch-all group such as {'rest': '*'} or exclude them"
            )
        empty = [g for g in rules if g not in members]
        if empty:
            raise ValueError(f"groups {empty} are empty: earlier groups claimed every tensor their selectors match")
        return {g: members[g] for g in rules}  # in the order the recipe wrote them
    if callable(grouping):
        for spec in specs:
            group = grouping(spec.name, param_of(spec))
            if not isinstance(group, str) or not group:
                raise ValueError(f"grouping callable returned {group!r} for {spec.name!r}; it must return a group name")
            members.setdefault(group, []).append(spec)
        return members
    raise TypeError(f"grouping must be a name, a dict or a callable, got {type(grouping).__name__}")


def _preview(names: Sequence[str], limit: int = 5) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})" if names else "[]"
