"""Recipes: typed, validated experiment descriptions written as Python.

A recipe file defines a `Recipe` subclass (or a module-level ``recipe`` instance). Sections hold plain
values; builders elsewhere turn them into objects. Subclass a recipe to vary it; a section assigned in a
subclass replaces the parent's section, and needs no type annotation::

    class MnistCNN2(Recipe):
        '''CNN2 on the shipped MNIST subset, SLVT 2048.'''
        target = TargetSection(name="cnn2")
        mapping = MappingMethod(grouping="slvt", budget=2048)

    class Bigger(MnistCNN2):
        mapping = MappingMethod(grouping="lwt", budget=4096)

The ``mapping`` section is the section of one method (`mapscale.methods`: ``MappingMethod``, ``RpgMethod``,
...), chosen by its ``method`` field. On the command line, dotted overrides (``optim.lr=3e-3
mapping.budget=4096``, ``mapping.method=rpg``) are validated by the same models: an unknown key names the valid
ones (and the closest), a wrong type says what was expected. Switching ``mapping.method`` keeps the recipe's
mapping fields that the new method reads too (grouping, budget, seed, ...) and drops the others.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from mapscale.methods import (  # re-exported: recipe files import every section from here
    METHODS,
    AnyMethod,
    FinetuneMethod,
    FullMethod,
    LoraMethod,
    MappingMethod,
    RpgMethod,
    SubspaceMethod,
    VeraMethod,
)
from mapscale.data.section import DataSection
from mapscale.section import RecipeError, Section

__all__ = [
    "DataSection", "DistributedSection", "FinetuneMethod", "FullMethod", "LossSection", "LoraMethod", "MappingMethod",
    "OptimSection", "OutputSection", "Recipe", "RecipeError", "RpgMethod", "SubspaceMethod", "TargetSection",
    "VeraMethod", "apply_overrides", "load_recipe",
]


METHOD_SECTION = "mapping"  # the recipe's field holding the method's section (a union over `METHODS`)


class TargetSection(Section):
    """The target network."""

    name: str = "small_mnist_cnn"
    """Builder in ``mapscale.targets.TARGETS`` (``small_mnist_cnn``, ``cnn2``, ...) or ``torchvision:<model>``
    (``torchvision:resnet50``)."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the builder (``{"num_classes": 2}``)."""
    weights: Path | None = None
    """Optional pretrained weights (a state_dict in ``.pt``/``.pth`` or ``.safetensors``) loaded before mapping."""


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
    time_terms: bool | Literal["sync"] = False
    """Log each term's wall time (``seconds_<term>`` in metrics.jsonl): ``true`` measures the host (on a GPU the
    launch, not the kernels), ``"sync"`` synchronises the device around each term (a stall on every GPU step)."""


class OptimSection(Section):
    """Optimisation of the trainable tensors (latents, loss coefficients, directly trainable tensors)."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    """The optimiser."""
    lr: float | None = Field(None, gt=0)
    """Peak learning rate; None: the method's default (``mapping.default_lr``, measured by ``bench/defaults.py``).
    For the generated methods (mapping, subspace, rpg) it is relative: a step of ``lr`` on every latent entry
    moves each generated tensor by about ``lr`` of its init std, whatever the budget, grouping and operator."""
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
    precision: Literal["fp32", "bf16", "fp64"] = "fp32"
    """``fp32``; ``bf16``: autocast of the target's forward; ``fp64``: the whole run in float64 (target, fixed state,
    trainable tensors, inputs, logged values), for reference runs whose numbers must not depend on the machine:
    float32 results move by ~1e-7 relative with the CPU's kernels and thread count, and a few steps of training
    amplify that (``tests/test_pinned.py``, which runs in fp64). About twice the time of fp32 on a CPU; plain
    PyTorch steps only (DeepSpeed's engine trains fp32, bf16 or fp16)."""
    compile: Literal["off", "on", "auto"] = "auto"
    """``torch.compile`` of the mapped forward (generation and target, with its backward; `mapscale.train.compiled`).
    ``on`` compiles, and refuses DeepSpeed, ``distributed.gather='per-unit'`` and sharded generation over several
    ranks; ``auto`` compiles on a GPU only and leaves those eager. Measured (``bench/results/compile_step.md``, 2
    CPU threads): CPU inductor compiles the mapped CNN2 forward in 15-22 s and ResNet50 LWT's in 3.5-4.5 min, and
    the compiled CPU step is no faster than the eager one (CNN2, ResNet50 at 16 x 3 x 112²), so on a CPU it never
    pays; the GPU default is not measured yet (``bench/gpu.sh``). Compiled runs agree with eager ones to float
    rounding, not bitwise (inductor fuses and reorders sums; fp64: 4e-15 relative over 10 steps): pinned runs are eager."""


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
    generation: Literal["auto", "sharded", "local"] = "auto"
    """How several ranks share the generation. ``sharded``: each rank holds and generates its rows of every unit's
    fixed state, all-gathers the generated weights for the forward pass and reduce-scatters their gradient (about
    2P floats per rank per step for P generated weights). ``local``: every rank holds the method's whole fixed state
    and generates every weight itself; the all-reduce of the trainable gradients is the step's only communication.
    ``auto``: ``local`` where the whole fixed state and one copy of the generated weights (one unit with
    ``gather='per-unit'``) fit a quarter of a rank's device memory, else ``sharded``; the choice and its reason
    are printed and written to ``result.json``. Methods that generate nothing (lora, vera, full) are plain data
    parallel either way. Checkpoints do not depend on it."""
    gather: Literal["whole", "per-unit"] = "whole"
    """``whole``: every unit's weights exist for the whole forward pass. ``per-unit``: each unit's weights are made
    just before its module runs and freed after, and made again in backward (activation checkpointing of the unit),
    so peak generated-parameter memory is one unit, at the cost of a second generation: generated and gathered
    under ``generation='sharded'`` (3P floats a step), generated alone under ``local`` (no traffic). Units must then
    be modules (not ``(rest)``) that run once per forward. Works in a single process too."""

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
    resume: Literal["never", "auto"] = "never"
    """``never``: every invocation starts a new run directory (a taken ``run_name`` gets a ``-2`` suffix).
    ``auto``: continue a run this same recipe already began, from its last checkpoint: the directory ``run_name``
    names, or, in workers torchrun restarted (``--max-restarts``), the directory this torchrun job's first attempt
    created; a new directory when there is none. A directory holding another recipe is refused, never overwritten.
    ``mapscale launch --max-restarts N`` sets it. Off by default: running a command twice should not silently
    continue (or mix with) an older run."""
    eval_every: int = Field(0, ge=0)
    """Evaluate every this many steps (0: at the end of each epoch)."""
    eval_batches: int | None = Field(50, ge=1)
    """Periodic evaluations see a fixed, seeded sample of the test split of at most this many evaluation batches
    (as nanoGPT's ``eval_iters``), the same examples every time (their count is logged as ``examples``); the last
    evaluation sees the whole split (``final_eval``). None: the whole split every time. 50 batches of 256
    classifications are 12,800 examples (an accuracy's standard error at most 0.44 points): every shipped
    recipe's test split fits whole; a 1 GB corpus is sampled."""
    eval_batch_size: int | None = Field(None, ge=1)
    """Examples per evaluation batch. None: from the memory the outputs need, at most 128 MiB of them
    (`mapscale.train.evaluate.eval_batch_size`: 256 for a classifier, 256 windows of 32 bytes, 5 windows of 128
    GPT-2 tokens), never the training batch's."""
    final_eval: Literal["full", "sample"] = "full"
    """The last evaluation (and the final train and validation ones): on the whole split (``full``) or on the same
    sample as the periodic ones (``sample``: a corpus too large to evaluate whole)."""
    eval_train: bool = True
    """At the end, evaluate the final model on the whole training split too (the train-test gap, ``final_train``);
    off for a large training split, where that pass costs more than the run's training."""
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
    mapping: AnyMethod = Field(default_factory=MappingMethod)
    """The method and its settings: one section per ``method`` (`mapscale.methods`)."""
    loss: LossSection = Field(default_factory=LossSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def _loss_terms_fit_the_method(self) -> Recipe:
        self.mapping.check_loss(self.loss)
        return self

    @model_validator(mode="after")
    def _fp64_without_deepspeed(self) -> Recipe:
        if self.optim.precision == "fp64" and self.distributed.deepspeed is not None:
            raise ValueError("optim.precision='fp64' runs plain PyTorch steps; DeepSpeed's engine trains fp32, bf16 or fp16: drop distributed.deepspeed or use fp32")
        return self

    @property
    def lr(self) -> float:
        """The peak learning rate this recipe trains with: ``optim.lr``, or the method's default."""
        return self.optim.lr if self.optim.lr is not None else self.mapping.default_lr

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
    except RecipeError:
        raise
    except Exception as err:  # the user's code failed: name its file and line, not mapscale's frames
        raise RecipeError(_user_code_error(path, err)) from None
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


def _user_code_error(path: Path, err: BaseException) -> str:
    """``path, line N: Error: message``, naming the frames of the recipe's own folder (the recipe file and the
    neighbours it imports), innermost last, and none of mapscale's or the libraries'."""
    if isinstance(err, SyntaxError):
        where = Path(err.filename) if err.filename else path
        return f"{where}, line {err.lineno}: {type(err).__name__}: {err.msg}"
    folder = path.parent.resolve()
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve().parent == folder]
    message = f"{type(err).__name__}: {err}"
    if not frames:
        return f"{path}: {message}"
    *outer, inner = frames
    via = f" (from {'; '.join(f'{f.filename}, line {f.lineno}' for f in outer)})" if outer else ""
    return f"{inner.filename}, line {inner.lineno}: {message}{via}"


def _instantiate(cls: type[Recipe], path: Path) -> Recipe:
    try:
        return cls()
    except ValidationError as err:
        raise RecipeError(f"{path}: {_format_error(err)}") from None
    except Exception as err:
        raise RecipeError(_user_code_error(path, err)) from None


def apply_overrides(recipe: Recipe, overrides: list[str] | tuple[str, ...]) -> Recipe:
    """A copy of ``recipe`` with ``section.field=value`` overrides (values parsed as JSON, else as text)."""
    if not overrides:
        return recipe
    data = recipe.model_dump(mode="json")
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r} is not key=value (e.g. optim.lr=3e-3)")
        pairs.append((key.strip(), _parse_value(raw)))
    methods = [value for key, value in pairs if key == "mapping.method"]
    if methods:  # first, so that the other mapping overrides are checked against the new method's section
        data["mapping"] = _switched_method(recipe, data["mapping"], methods[-1])
    for key, value in pairs:
        if key != "mapping.method":
            _set_path(type(recipe), data, key.split("."), value, key, 0)
    try:
        return type(recipe).model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_error(err)) from None


def _switched_method(recipe: Recipe, mapping: dict, method: Any) -> dict:
    """The mapping section's data for ``method``: the fields the recipe set that the new method reads too."""
    if method == mapping["method"]:
        return mapping
    if method not in METHODS:
        close = difflib.get_close_matches(str(method), list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"unknown mapping.method {method!r}.{hint} Methods: {', '.join(METHODS)}")
    fields = METHODS[method].section.model_fields
    return {"method": method, **{k: mapping[k] for k in recipe.mapping.model_fields_set if k in fields and k != "method"}}


def _member(annotation: Any, data: Any) -> type[BaseModel] | None:
    """The section class a field holds: its annotation, or for a union of method sections the one ``data``'s
    ``method`` names."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for member in get_args(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel) and "method" in member.model_fields:
            if isinstance(data, dict) and member.model_fields["method"].default == data.get("method", "mapping"):
                return member
    return None


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
        if "method" in model.model_fields:
            where += f" (method {model.model_fields['method'].default!r})"
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
    submodel = _member(model.model_fields[head].annotation, child) if model is not None else None
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
        # a union's tag (the method's name) follows the section in the location: not a key the user wrote
        loc = [p for i, p in enumerate(e["loc"]) if not (i and e["loc"][i - 1] == METHOD_SECTION and p in METHODS)]
        where = ".".join(str(p) for p in loc) or "recipe"
        if e["type"] == "extra_forbidden":
            model = _section_named(err.title)
            full = list(e["loc"][:-1])
            while full:  # walk down to the section holding the unknown key
                part = full.pop(0)
                annotation = model.model_fields[part].annotation if model and part in model.model_fields else None
                model = _member(annotation, {"method": full.pop(0)} if full and get_args(annotation) else None)
            valid = sorted(model.model_fields) if model else []
            close = difflib.get_close_matches(str(e["loc"][-1]), valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            section = model.__name__ if model else err.title
            if model is not None and "method" in model.model_fields:
                section = f"{section} (mapping.method={model.model_fields['method'].default!r})"
            lines.append(f"unknown key {where!r} in {section}.{hint}" + (f" Valid keys: {', '.join(valid)}" if valid else ""))
        else:
            lines.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)
