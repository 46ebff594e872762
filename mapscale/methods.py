"""The methods a recipe's ``mapping`` section can name: one section class and one builder each, in one registry.

``mapping.method`` picks the section (a pydantic discriminated union), so a section holds only the fields its
method reads and any other field is refused as unknown. `METHODS` maps each method name to its section and
its builder; `mapscale.train.build_model` looks the builder up there and nowhere compares method names.

    mapping     the Mapping Networks method (`mapscale.mapping.generator`), with the LRD add-on (``low_rank``)
    subspace    random-subspace training (Li et al. 2018), `mapscale.mapping.peers`
    rpg         Recurrent Parameter Generators (Wang et al. 2021), `mapscale.mapping.peers`
    finetune    the paper's fine-tuning mode (eq. 25), `mapscale.mapping.finetune`
    lora, vera  peft adapters on a pretrained target, `mapscale.mapping.adapters`
    full        every parameter trained directly (the full-training baseline; a linear probe with ``frozen``)

A new method is one section class, one builder and one line in `METHODS` (and its generator, implementing
`mapscale.mapping.contract.Generator`); the union of sections, `AnyMethod`, is made from `METHODS`. Builders get a `Build`: the recipe, the target (built and seeded by
`build_model`), the device, and ``part`` (``layout -> Part``: the column ranges a rank holds when the run is
sharded; None for a whole generator).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Union

import torch
from pydantic import Field, model_validator
from torch import nn

from mapscale.mapping.layout import GROUPINGS
from mapscale.section import Section

if TYPE_CHECKING:
    from mapscale.mapping.contract import Part
    from mapscale.mapping.layout import ParamLayout
    from mapscale.mapping.mapped import MappedModel
    from mapscale.recipe import LossSection, Recipe

TERMS = ("stability", "smoothness", "alignment")



# -- sections ------------------------------------------------------------------------------------------------


class MethodSection(Section):
    """What every method section shares: its name, the discriminator of the union."""

    method: str
    """The method: ``mapping``, ``subspace``, ``rpg``, ``finetune``, ``lora``, ``vera`` or ``full``."""
    default_lr: ClassVar[float] = 5e-2
    """The peak learning rate a recipe that sets no ``optim.lr`` trains this method with."""

    def check_loss(self, loss: LossSection) -> None:
        """Refuse Mapping Loss terms this method cannot take (the default: all of them)."""
        terms = _terms(loss)
        if terms:
            raise ValueError(f"loss terms {terms} are the Mapping Loss's; mapping.method={self.method!r} trains on the task loss alone")

    def describe(self) -> str:
        """A short name of the configured strategy for reports (``lwt``, ``rpg (slvt)``, ``lora (r=2)``)."""
        return self.method

    def warm_start(self) -> Path | None:
        """A latents file the run starts from instead of the method's own init (None: its own init)."""
        return None


class _Selected(MethodSection):
    seed: int = 0
    """Keys the method's fixed randomness (mapping weights, ring, projections) and latent init; runs sharing it
    (and the target) share a mapping."""
    trainable: list[str] = Field(default_factory=list)
    """Selectors of tensors kept out of generation and trained directly (e.g. ``"*bn*"``)."""
    trainable_lr: float | None = Field(None, gt=0)
    """Peak learning rate of the ``trainable`` tensors, in their own units (an optimiser group of their own on
    the same schedule); None: ``optim.lr``, which for the generated methods is a relative rate meant for latents.
    Measured (``bench/results/techniques_cnn2.md``, CNN2 2,048 with its 186 biases trained directly and counted
    in the budget, 4 epochs, 3 seeds, validation): at full training's rate 3e-3 against the latents' 0.3, the
    mapping moved -0.53 (SLVT) and 0.00 (LWT) points, within the seed spread; direct biases gain nothing here.
    On resnet18 the norms, stem and classifier trained directly (``["*bn*", "*downsample.1.*", "conv1.*", "fc.*"]``,
    24,138 values, at ``trainable_lr`` 3e-3) are what LWT 65,536 needs (``bench/results/large_options_resnet18.md``):
    4 epochs, seed 0, validation 96.20% against plain LWT's 95.60%; at 8 epochs, 3 seeds, 98.20% test against full
    training's 98.43% with 124.7x fewer trainable values. Off by default: the selectors are the target's names."""

    @model_validator(mode="after")
    def _trainable_lr_has_tensors(self):
        if self.trainable_lr is not None and not self.trainable:
            raise ValueError("mapping.trainable_lr is the rate of the mapping.trainable tensors, and mapping.trainable selects none")
        return self


class _Grouped(_Selected):
    grouping: str | dict[str, str | list[str]] = "slvt"
    """``slvt`` (one latent), ``lwt`` (one latent per module owning parameters), or ``{group: selectors}`` where a
    selector is a glob on parameter names (``"layer4.*"``) or ``"re:<regex>"``."""
    budget: int | dict[str, int] = 2048
    """Total latent size, split across groups in proportion to ``group size ** budget_power``; or ``{group: latent_dim}``."""
    budget_power: float = Field(0.5, ge=0, le=1)
    """How an integer ``budget`` is split across groups: shares proportional to ``P_g ** budget_power`` (0.5,
    the default: sqrt; 0: equal shares, so a small head gets as many latents as a large layer, up to its size;
    1: in proportion to size). Measured (``bench/results/techniques_cnn2.md``, ``bench/results/frontier.md``;
    LWT 2,048, 3 seeds, validation): on CNN2 at 4 epochs 0 gains +0.73 points for the mapping, +0.20 for subspace
    and +0.93 for RPG, at 16 epochs -0.06, +0.93 and +0.53; on resnet18 (1 epoch, 62 groups, the BatchNorm ones
    tiny) it loses 9.0, 7.1 and 2.1 points. So 0.5 stays the default. SLVT has one group."""

    @model_validator(mode="after")
    def _grouping_and_budget(self):
        if isinstance(self.grouping, str) and self.grouping not in GROUPINGS:
            raise ValueError(f"mapping.grouping {self.grouping!r} is not one of {list(GROUPINGS)} nor a {{group: selectors}} dict")
        if isinstance(self.grouping, dict) and not self.grouping:
            raise ValueError("mapping.grouping is an empty dict: name at least one group and its selectors")
        dims = self.budget.values() if isinstance(self.budget, dict) else [self.budget]
        if any(dim < 1 for dim in dims):
            raise ValueError(f"mapping.budget {self.budget} must be at least 1 (a latent size per group, or their total)")
        return self

    def describe(self) -> str:
        return self.grouping if isinstance(self.grouping, str) else "custom"

    def budget_rule(self):
        """The `mapscale.mapping.layout.BudgetRule` of ``budget_power`` (None for the default sqrt split)."""
        from mapscale.mapping.layout import power_rule

        return None if self.budget_power == 0.5 else power_rule(self.budget_power)


class _Generated(_Grouped):
    frozen: list[str] = Field(default_factory=list)
    """Selectors of tensors kept out of generation at their initial (or pretrained) values."""


class MappingMethod(_Generated):
    """The Mapping Networks method (``mapscale.map_model``): fixed orthonormal mapping weights, modulated by the
    trained latents, generate the target's parameters (DESIGN.md section 1)."""

    method: Literal["mapping"] = "mapping"
    default_lr: ClassVar[float] = 0.3
    operator: str = "sparse"
    """Fixed mapping operator (``mapscale.mapping.OPERATORS``): ``sparse`` (the default: one ``±1/sqrt(n)``
    non-zero per column, rows with disjoint supports: ``O(P)`` time, nothing stored per parameter), ``dense`` (the
    stored matrix, the paper's), ``seeded`` (the same matrix redrawn from the seed on every step, never stored:
    memory ``latent_dim²`` per group, time bound by random-number generation) or ``structured`` (a randomized
    Hadamard transform, ``O(P log d)`` time and 3 bits per parameter). Measured (``bench/results/defaults.md``):
    at equal accuracy on CNN2 (SLVT 2,048, 3 seeds: sparse 95.40%, dense 94.97%, structured 94.93% test), a step
    costs 1.22x a full-training step with sparse, 1.50x structured, 9.8x dense (resnet18 LWT: 1.26x, 3.74x)."""
    modulation: Literal["multiplicative", "additive", "none"] = "multiplicative"
    """The paper's eq. 20: ``multiplicative`` (default, measured best), ``additive`` (as printed), ``none``."""
    modulation_scale: float = Field(0.1, gt=0)
    """The modulation scale alpha."""
    activation: Literal["identity", "tanh"] = "identity"
    """Activation of eq. 21."""
    offset: Literal["mean", "init", "seeded"] = "init"
    """``init`` (the default): start at the target's init weights; ``mean``: generated tensors start with the
    target's init statistics; ``seeded``: ``init`` around a ``theta_0`` that is not stored but redrawn on every
    generation from (seed, tensor name) with the target's init family, mean and std of each tensor
    (`mapscale.mapping.seeded_init`): a fixed state of 3 numbers per tensor instead of one per parameter, for
    local generation on targets whose stored ``theta_0`` would not fit a rank; not for pretrained
    ``target.weights``, which cannot be redrawn. Equal within a std on CNN2 2,048 (validation, 3 seeds: SLVT 94.40 ± 0.43% init,
    94.60 ± 0.49% mean; LWT 93.60 ± 0.57%, 93.73 ± 0.38%); ``mean`` stores no ``theta_0`` (fixed state: nothing
    per parameter under the sparse operator), ``init`` starts at the target's own weights."""
    variant: Literal["mapping", "full-dnn", "lv-wmap", "lv-full-dnn"] = "mapping"
    """The paper's Table 7 variant (what trains)."""
    latent_init_std: float | None = Field(None, ge=0)
    """Std of the seeded latent init; default 1.0 for ``offset=mean``, 0.0 for ``offset=init``."""
    constant_init_std: float = Field(0.02, gt=0)
    """Spread given to tensors whose default init is a constant (norm weights, zero biases)."""
    latent_seed: int | None = None
    """Keys the latent init instead of ``seed`` (None: ``seed``): runs differing only in it share one mapping and
    start from different latents (``mapscale space``). Needs ``latent_init_std`` > 0 to make a difference."""
    latent_from: Path | None = None
    """A latents file (``mapscale.space.save_latents``: one tensor per group, and the mapping fingerprint it
    belongs to) the run starts from instead of the seeded init: a warm start (``mapscale search``). The run is
    refused if the file's mapping differs from the recipe's."""
    gain: bool = False
    """One trainable scalar per generated tensor, ``theta_t = (1 + g_t) * generated_t`` from ``g_t = 0`` (SAID's
    per-layer scale): as many trainable entries more as the layout has generated tensors (``budget`` stays the
    latent size; lower it by that count to keep the trainable total). Off by default: measured
    (``bench/results/techniques_cnn2.md``, CNN2 2,048 with the 8 gains counted in the budget, 3 seeds, validation)
    +0.40 (SLVT) and +0.27 (LWT) points at 4 epochs, +0.20 and -0.07 at 16 (test: -0.86 and -0.67, and a
    wider train-test gap): below the seed spread, or worse."""
    low_rank: int | None = Field(None, ge=1)
    """LRD add-on (``mapscale.mapping.lowrank``): generate weights as rank-``low_rank`` factors ``U V``."""
    low_rank_tensors: list[str] = Field(default_factory=list)
    """LRD: the weights to factor (selectors); empty: every weight whose factors are smaller than it."""

    @model_validator(mode="after")
    def _consistent(self):
        if self.low_rank_tensors and self.low_rank is None:
            raise ValueError("mapping.low_rank_tensors needs mapping.low_rank (the rank)")
        if self.variant == "lv-wmap" and self.modulation == "none":
            raise ValueError("mapping.variant='lv-wmap' modulates the mapping with its own vector; mapping.modulation='none' leaves nothing to modulate")
        return self

    def check_loss(self, loss: LossSection) -> None:
        starts_at_zero = self.offset in ("init", "seeded") and not self.latent_init_std and self.latent_from is None
        if starts_at_zero and loss.alignment is not None:
            # Measured (bench/peers.py notes): CNN2 SLVT 1,024 with alignment 1e-2 stayed at chance for 60 steps.
            raise ValueError(
                "loss.alignment (1 - cos(z, W_m)) has no direction at the zero latent an offset='init' run starts from, and its "
                "gradient there swamps the task's; use mapping.offset='mean' or mapping.latent_init_std > 0, or leave it off"
            )

    def warm_start(self) -> Path | None:
        return self.latent_from

    def generator_options(self) -> dict:
        """The `GeneratorConfig` fields of this section (the rest choose the layout or the add-on)."""
        return self.model_dump(include={"operator", "modulation", "modulation_scale", "activation", "offset", "variant", "latent_init_std", "latent_seed", "constant_init_std", "gain"})



class SubspaceMethod(_Generated):
    """Random-subspace training (Li et al. 2018): ``theta = theta0 + P z``, ``P`` the transpose of a mapping
    operator keyed like the mapping's (orthonormal columns), ``z`` from 0 (``mapscale.mapping.peers``)."""

    method: Literal["subspace"] = "subspace"
    default_lr: ClassVar[float] = 0.3
    operator: str = "sparse"
    """The projection's operator (``dense``, ``seeded``, ``structured``, ``sparse``), as the mapping's ``operator``."""
    latent_init_std: float = Field(0.0, ge=0)
    """Std of the seeded init of ``z``; 0: start exactly at the target's init ``theta0``."""
    scale: Literal["relative", "none"] = "relative"
    """``relative``: ``theta = theta0 + s_g P z`` with one fixed ``s_g`` per group, so that a unit step of ``z`` moves
    the group's weights by about one init std whatever the budget (one learning rate for every budget);
    ``none``: Li et al.'s ``theta0 + P z`` (the best rate then falls as the budget grows)."""

    def describe(self) -> str:
        return f"subspace ({super().describe()})"



class RpgMethod(_Generated):
    """Recurrent Parameter Generators (Wang et al. 2021): each group's weights are fixed signed entries of a
    trainable ring of ``budget`` entries (``mapscale.mapping.peers``); the ring starts ``N(0, 1)``."""

    method: Literal["rpg"] = "rpg"
    default_lr: ClassVar[float] = 0.1
    constant_init_std: float = Field(0.02, gt=0)
    """Spread given to tensors whose default init is a constant (norm weights, zero biases)."""

    def describe(self) -> str:
        return f"rpg ({super().describe()})"


class FinetuneMethod(_Grouped):
    """The paper's fine-tuning mode (eq. 25, ``mapscale.mapping.finetune``): the pretrained ``target.weights``
    stay frozen and generated elements modulate the tuned ones; the run starts exactly at the pretrained model.
    Untuned tensors are frozen unless ``trainable`` selects them."""

    method: Literal["finetune"] = "finetune"
    tuned: list[str] = Field(default_factory=list)
    """Selectors of the tuned tensors (``["layer4.*", "fc.*"]``); empty: every tensor."""
    block_size: int = Field(1, ge=1)
    """Weights modulated by one generated element (the paper's L; it reports 1, 250, 25,000). An int budget is
    capped at the element count sum_t ceil(numel_t / L)."""
    form: Literal["additive", "multiplicative"] = "additive"
    """``additive`` (the paper's ``w + alpha sigma o``, sigma the tensor's pretrained std) or ``multiplicative``
    (a gate ``w (1 + alpha o)``)."""
    scale: float = Field(0.1, gt=0)
    """alpha, the move of a weight (in pretrained stds, or relative for the gate) per unit of element; a latent
    with unit-variance entries moves elements by about one. Not yet measured."""
    operator: str = "sparse"
    """The element mapping's operator (``dense``, ``seeded``, ``structured``, ``sparse``), as the mapping's
    ``operator``. ``sparse`` by default: its fixed state is a seed, so it builds at any size (on the 12 x 768
    GPT-2 shape at 16,384: 2,670 MiB peak against full fine-tuning's 3,162, where ``dense`` asks for 38.7 GB;
    ``bench/results/finetune_memory.md``), and where both build it tunes as well or better (CNN2 digits 0-4 ->
    5-9, 2,048, lr 1, 3 seeds: 93.33% test against dense's 89.67%, ``bench/results/finetune_operator.md``)."""
    modulation: Literal["multiplicative", "additive", "none"] = "multiplicative"
    """The element mapping's eq. 20 form."""
    modulation_scale: float = Field(0.1, gt=0)
    """The element mapping's modulation scale alpha."""
    activation: Literal["identity", "tanh"] = "identity"
    """Activation of the element mapping's eq. 21."""
    variant: Literal["mapping", "lv-wmap", "lv-full-dnn"] = "mapping"
    """The paper's Table 7 variant (``full-dnn`` freezes the latents at 0, where the mapping gets no gradient)."""

    def check_loss(self, loss: LossSection) -> None:
        if loss.alignment is not None:
            raise ValueError("loss.alignment is undefined at the zero latent every fine-tuning run starts from; leave it off with mapping.method='finetune'")

    def describe(self) -> str:
        return f"finetune (L={self.block_size})"



class LoraMethod(_Selected):
    """peft LoRA adapters on the modules owning the ``tuned`` tensors of the pretrained ``target.weights``
    (``mapscale.mapping.adapters``); the rest is frozen unless ``trainable`` selects it."""

    method: Literal["lora"] = "lora"
    tuned: list[str] = Field(default_factory=list)
    """Selectors of the tensors whose modules get adapters (``["layer4.*", "fc.*"]``); empty: every tensor's."""
    rank: int | None = Field(None, ge=1)
    """The adapter rank; None: the rank whose trainable count is nearest ``budget``."""
    budget: int = Field(2048, ge=1)
    """The trainable count the rank is matched to when ``rank`` is None."""

    def describe(self) -> str:
        return self.method + (f" (r={self.rank})" if self.rank is not None else f" (rank for {self.budget:,})")


class VeraMethod(LoraMethod):
    """peft VeRA adapters (shared frozen random projections, trained scaling vectors), as `LoraMethod`."""

    method: Literal["vera"] = "vera"


class FullMethod(MethodSection):
    """Nothing generated: every parameter trains directly (the paper's full-training baseline). A linear probe is
    every tensor but the head's ``frozen``."""

    method: Literal["full"] = "full"
    default_lr: ClassVar[float] = 3e-3
    frozen: list[str] = Field(default_factory=list)
    """Selectors of tensors kept fixed at their initial (or pretrained) values."""

    def check_loss(self, loss: LossSection) -> None:
        terms = _terms(loss)
        if terms:
            raise ValueError(f"loss terms {terms} act on latents; mapping.method='full' has none (the task loss alone trains it)")

    def describe(self) -> str:
        return "full training" if not self.frozen else f"partial training ({len(self.frozen)} frozen selectors)"


def _terms(loss: LossSection) -> list[str]:
    return [t for t in TERMS if getattr(loss, t) is not None]


# -- builders ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    """What a builder gets: the recipe, its target (seeded, on the device or meta; pretrained weights loaded
    unless the method loads them itself), the device, and the part a sharded run's rank holds."""

    recipe: Recipe
    target: nn.Module
    device: torch.device
    part: Callable[[ParamLayout], Part] | None = None

    @property
    def meta(self) -> bool:
        return self.device.type == "meta"

    @property
    def layout_device(self):
        """Where the generator builds: meta for shapes only, else where the target's parameters are."""
        return "meta" if self.meta else None


def build_mapping(section: MappingMethod, build: Build) -> MappedModel:
    from mapscale.mapping.lowrank import low_rank_model
    from mapscale.mapping.mapped import map_model

    if section.offset == "seeded" and not build.meta:
        from mapscale.targets import ships_weights

        if build.recipe.target.weights is not None or ships_weights(build.recipe.target.name):
            raise ValueError(
                f"mapping.offset='seeded' redraws theta_0 from the seed, and {build.recipe.target.weights or build.recipe.target.name} holds pretrained "
                "weights, which cannot be redrawn; use mapping.offset='init' (or mapping.method='finetune')"
            )
    common = dict(
        seed=section.seed, trainable=_each(section.trainable), frozen=_each(section.frozen), budget_rule=section.budget_rule(),
        device=build.layout_device, part=build.part, **section.generator_options(),
    )
    if section.low_rank is not None:
        return low_rank_model(build.target, section.low_rank, _each(section.low_rank_tensors), selectors(section.grouping), section.budget, **common)
    return map_model(build.target, selectors(section.grouping), section.budget, **common)


def build_peer(section: SubspaceMethod | RpgMethod, build: Build) -> MappedModel:
    """A peer (`mapscale.mapping.peers`, named by the section's ``method``) on the layout its shared fields choose;
    the section's own fields (subspace: operator, latent_init_std; rpg: constant_init_std) are its options."""
    from mapscale.mapping.peers import peer_model

    options = section.model_dump(exclude=set(_Generated.model_fields))
    return peer_model(
        build.target, section.method, selectors(section.grouping), section.budget, seed=section.seed, budget_rule=section.budget_rule(),
        trainable=_each(section.trainable), frozen=_each(section.frozen), device=build.layout_device, part=build.part, **options,
    )


def build_finetune(section: FinetuneMethod, build: Build) -> MappedModel:
    """The pretrained ``target.weights`` loaded (a tuned head may differ in shape and keep its seeded init), then
    modulated by generated elements."""
    from mapscale.mapping.finetune import finetune_model, keep_pretrained_dtypes, load_pretrained
    from mapscale.targets import load_state_dict, ships_weights

    recipe, tuned = build.recipe, _each(section.tuned)
    if not build.meta and not (recipe.target.weights is None and ships_weights(recipe.target.name)):  # hf:<folder>: built pretrained
        if recipe.target.weights is None:
            raise ValueError(
                f"mapping.method='finetune' modulates pretrained weights, and target.weights is not set for {recipe.target.name}: "
                "download them (for torchvision:resnet50, torchvision's IMAGENET1K_V1 file "
                "https://download.pytorch.org/models/resnet50-0676ba61.pth) and give target.weights=/path/resnet50.pth"
            )
        state = load_state_dict(recipe.target.weights)
        load_pretrained(build.target, state, tuned)
        if recipe.optim.precision == "bf16":  # autocast reads them in bf16: a bf16 checkpoint stays bf16 (not fp32)
            keep_pretrained_dtypes(build.target, state)
    return finetune_model(
        build.target, tuned, section.block_size, section.form, section.scale, selectors(section.grouping), section.budget,
        seed=section.seed, trainable=_each(section.trainable), budget_rule=section.budget_rule(), device=build.layout_device, part=build.part,
        modulation=section.modulation, modulation_scale=section.modulation_scale, activation=section.activation,
        variant=section.variant, operator=section.operator,
    )


def build_adapters(section: LoraMethod, build: Build) -> MappedModel:
    """peft adapters on the pretrained target. Built for real even for the meta device (peft draws its initial
    adapters): fine for the targets it tunes."""
    from mapscale.mapping.adapters import adapter_model, matching_rank
    from mapscale.mapping.finetune import load_pretrained
    from mapscale.targets import build_target, load_state_dict, ships_weights

    recipe, target, tuned = build.recipe, build.target, _each(section.tuned)
    if recipe.target.weights is None and not build.meta and not ships_weights(recipe.target.name):
        raise ValueError(f"mapping.method={section.method!r} adapts pretrained weights, and target.weights is not set for {recipe.target.name}")
    if recipe.target.weights is not None and not build.meta:
        load_pretrained(target, load_state_dict(recipe.target.weights))
    if build.meta:  # counts only: peft initialises its adapters, which meta tensors cannot
        torch.manual_seed(recipe.seed)
        target = build_target(recipe.target.name, recipe.target.args, None, recipe.task)
    rank = section.rank if section.rank is not None else matching_rank(target, section.method, section.budget, tuned)[0]
    return adapter_model(target, section.method, rank, tuned, trainable=_each(section.trainable), seed=section.seed)


def build_full(section: FullMethod, build: Build) -> MappedModel:
    from mapscale.mapping.mapped import direct_model

    return direct_model(build.target, _each(section.frozen))


@dataclass(frozen=True)
class Method:
    """A registry entry. ``generates``: the builder makes a generator of the flat vector, which a sharded run
    splits over ranks (``build.part``); otherwise nothing is generated and ranks only average gradients.
    ``pretrained``: the builder loads ``target.weights`` itself (shapes may differ)."""

    section: type[MethodSection]
    build: Callable[[MethodSection, Build], MappedModel]
    generates: bool = True
    pretrained: bool = False


METHODS: dict[str, Method] = {
    "mapping": Method(MappingMethod, build_mapping),
    "subspace": Method(SubspaceMethod, build_peer),
    "rpg": Method(RpgMethod, build_peer),
    "finetune": Method(FinetuneMethod, build_finetune, pretrained=True),
    "lora": Method(LoraMethod, build_adapters, generates=False, pretrained=True),
    "vera": Method(VeraMethod, build_adapters, generates=False, pretrained=True),
    "full": Method(FullMethod, build_full, generates=False),
}

AnyMethod = Annotated[Union[tuple(method.section for method in METHODS.values())], Field(discriminator="method")]  # noqa: UP007
"""The ``mapping`` section of a recipe: the section of the method its ``method`` names (one per `METHODS` entry)."""


# -- selectors as recipes write them -------------------------------------------------------------------------


def selector(text: str):
    """A recipe's selector string: ``"re:<regex>"`` a compiled regex, anything else a glob."""
    return re.compile(text[3:]) if text.startswith("re:") else text


def _each(texts: list[str]) -> list:
    return [selector(s) for s in texts]


def selectors(grouping):
    """A recipe's grouping with its selector strings compiled."""
    if isinstance(grouping, str):
        return grouping
    return {g: [selector(s) for s in ([sel] if isinstance(sel, str) else sel)] for g, sel in grouping.items()}
