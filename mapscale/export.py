"""Export-time add-ons of the paper's Table 8, applied to the materialised target (not to the mapping):
magnitude pruning of the weights and dynamic int8 quantisation, and the files that load without mapscale.

    state = mapped.materialize()                                # {name: tensor} of the plain target
    state, sparsity = prune_magnitude(state, 0.9, include=prunable_weights(target))
    target.load_state_dict(state, strict=True)
    quantized = quantize_dynamic_int8(target)                   # Linear / LSTM weights in int8
    save_torchscript(quantized, "model.pt")                     # torch.jit.load("model.pt") runs it

A pruned state is written like any state_dict (`save_state_dict`: the zeros are stored, the file is as
large as the dense one). A quantised model is a module of torch's quantized kernels, not a state_dict the
original class loads, so it is written as TorchScript: `torch.jit.load(path)` alone rebuilds and runs it.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

# Module types whose weight tensors pruning acts on (biases, norm scales and embeddings are left dense).
_PRUNED_MODULES: dict[type[nn.Module], str] = {
    nn.Linear: "linear",
    nn.Conv1d: "conv",
    nn.Conv2d: "conv",
    nn.Conv3d: "conv",
    nn.ConvTranspose1d: "conv",
    nn.ConvTranspose2d: "conv",
    nn.ConvTranspose3d: "conv",
    nn.RNN: "recurrent",
    nn.LSTM: "recurrent",
    nn.GRU: "recurrent",
}

# What torch's dynamic quantisation covers; convolutions have no dynamic quantized kernel and stay float32.
_DYNAMIC_QUANTIZED = {nn.Linear, nn.LSTM}


# -- pruning ---------------------------------------------------------------------------------------------------


@dataclass
class SparsityReport:
    """Zeros per pruned tensor, per kind (``linear``, ``conv``, ``recurrent``) and over the whole state.

    Each value is ``(zeros, numel)``; ``sparsity(...)`` turns one into a fraction. ``all`` counts every
    floating-point tensor of the state, biases and buffers included, so it is below the pruned fraction.
    """

    amount: float
    tensors: dict[str, tuple[int, int]] = field(default_factory=dict)
    kinds: dict[str, tuple[int, int]] = field(default_factory=dict)
    pruned: tuple[int, int] = (0, 0)
    all: tuple[int, int] = (0, 0)

    @staticmethod
    def sparsity(counts: tuple[int, int]) -> float:
        zeros, numel = counts
        return zeros / numel if numel else 0.0


def prunable_weights(module: nn.Module) -> dict[str, str]:
    """``{state_dict name: kind}`` of the tensors `prune_magnitude` should prune in ``module``: the weights of
    Linear and Conv layers and the weight matrices (``weight_ih_l0``, ``weight_hh_l0``, ...) of RNN/LSTM/GRU.
    Biases, normalisation parameters and embeddings are not included. Tied names are each listed."""
    names: dict[str, str] = {}
    for module_name, child in module.named_modules(remove_duplicate=False):
        kind = _PRUNED_MODULES.get(type(child))
        if kind is None:
            continue
        prefix = f"{module_name}." if module_name else ""
        for param_name, _ in child.named_parameters(recurse=False):
            if param_name.startswith("weight"):
                names[prefix + param_name] = kind
    return names


def _looks_like_weight(name: str, tensor: Tensor) -> bool:
    """The default when no module is at hand: a floating-point tensor of 2 or more dimensions whose last
    name component starts with ``weight`` (Linear, Conv, RNN matrices; also Embedding tables)."""
    return name.rpartition(".")[2].startswith("weight") and tensor.is_floating_point() and tensor.dim() >= 2


def _kind_from_shape(tensor: Tensor) -> str:
    return "linear" if tensor.dim() == 2 else "conv"


@torch.no_grad()
def prune_magnitude(
    state: Mapping[str, Tensor],
    amount: float,
    *,
    include: Callable[[str, Tensor], bool] | Collection[str] | None = None,
) -> tuple[dict[str, Tensor], SparsityReport]:
    """Per-tensor unstructured magnitude pruning: in each included tensor, zero the ``ceil(amount * numel)``
    entries of smallest absolute value (``torch.nn.utils.prune.l1_unstructured`` on one tensor, which rounds
    to nearest instead: here each tensor has at least ``amount`` zeros).

    Per tensor rather than global, the way the paper's "90% pruning" reads: every layer keeps the same
    fraction, so no small layer is emptied by a global threshold set by the large ones.

    ``include`` picks the tensors: a collection of names (`prunable_weights(module)`, whose kinds then label
    the report), a predicate ``(name, tensor) -> bool``, or None for a name heuristic (``...weight*`` tensors
    of 2+ dimensions: biases and norm parameters are 1-D and never pruned). Returns a new state (tensors not
    pruned are the same objects) and a `SparsityReport`. ``amount`` is in [0, 1).
    """
    _check_amount(amount)
    if include is None:
        selected = _looks_like_weight
    elif callable(include):
        selected = include
    else:
        unknown = sorted(set(include) - set(state))
        if unknown:
            raise ValueError(f"pruning names {unknown[:5]} are not in the state ({len(unknown)} unknown)")
        names = set(include)

        def selected(name: str, tensor: Tensor) -> bool:
            return name in names

    report = SparsityReport(amount)
    pruned: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if selected(name, tensor):
            tensor = _prune_tensor(tensor, amount)
            counts = (int((tensor == 0).sum()), tensor.numel())
            report.tensors[name] = counts
            kind = include[name] if isinstance(include, Mapping) else _kind_from_shape(tensor)
            report.kinds[kind] = _add(report.kinds.get(kind, (0, 0)), counts)
            report.pruned = _add(report.pruned, counts)
        if tensor.is_floating_point():
            report.all = _add(report.all, (int((tensor == 0).sum()), tensor.numel()))
        pruned[name] = tensor
    return pruned, report


def _check_amount(amount: float) -> None:
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"pruning amount {amount} is outside [0, 1): it is the fraction of each weight set to zero")


def _prune_tensor(tensor: Tensor, amount: float) -> Tensor:
    # At least the fraction asked for: 90% of 768 values is 691.2, so 692 zeros (the rounding to 6 places keeps
    # 0.9 * 12800 = 11520.000000000002 from becoming 11521).
    count = math.ceil(round(amount * tensor.numel(), 6))
    out = tensor.clone()
    if count:
        # topk picks exactly `count` entries even among ties, so each tensor gets at least that many zeros.
        smallest = torch.topk(tensor.abs().reshape(-1), count, largest=False).indices
        out.view(-1)[smallest] = 0
    return out


def _add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return a[0] + b[0], a[1] + b[1]


# -- quantisation ----------------------------------------------------------------------------------------------


@dataclass
class QuantizeReport:
    """Which modules `quantize_dynamic_int8` turned into int8 kernels, which it could not (convolutions: torch has
    no dynamic quantized convolution), and the serialised state_dict size before and after, in bytes."""

    quantized: list[str]
    float_kept: list[str]
    bytes_before: int
    bytes_after: int


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with ``torch.ao.quantization.quantize_dynamic`` applied to its
    ``nn.Linear`` and ``nn.LSTM`` modules: int8 weights, activations quantised on the fly per batch, float
    inputs and outputs. CPU only (the quantized kernels are fbgemm/qnnpack).

    Conv layers are NOT covered: dynamic quantisation has no convolution kernel, so they stay float32 (static
    quantisation with calibration data would be needed). `quantization_report` lists both sets.

    ``torch.ao.quantization`` is deprecated in favour of torchao but still ships in torch 2.14; its deprecation
    warnings are silenced here. The result is saved with `save_torchscript` (torch.export cannot trace the
    packed int8 parameters in 2.14).
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return quantize_dynamic(model.eval(), set(_DYNAMIC_QUANTIZED), dtype=torch.qint8, inplace=False)


def quantization_report(float_model: nn.Module, quantized: nn.Module) -> QuantizeReport:
    """Compare ``float_model`` with its `quantize_dynamic_int8` result."""
    from torch.ao.nn.quantized import dynamic

    dynamic_types = tuple(v for v in vars(dynamic).values() if isinstance(v, type) and issubclass(v, nn.Module))
    done = [name for name, m in quantized.named_modules() if isinstance(m, dynamic_types)]
    kept = [name for name, m in quantized.named_modules() if type(m) in _PRUNED_MODULES and type(m) not in _DYNAMIC_QUANTIZED]
    return QuantizeReport(done, kept, _state_bytes(float_model), _state_bytes(quantized))


def _state_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


# -- files -----------------------------------------------------------------------------------------------------


def save_state_dict(state: Mapping[str, Tensor], out: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``state`` as ``.safetensors`` (with ``metadata``) or, for any other suffix, with ``torch.save``.
    Tied names become separate contiguous tensors (safetensors refuses shared storage)."""
    out = Path(out)
    weights = {name: tensor.contiguous().clone() for name, tensor in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(weights, str(out), metadata=metadata)
    else:
        torch.save(weights, out)


def save_torchscript(model: nn.Module, out: str | Path, example_input: Callable[[], Tensor] | None = None) -> str:
    """Save ``model`` so that ``torch.jit.load(out)`` alone runs it: ``torch.jit.script`` first, and if the
    model does not script, ``torch.jit.trace`` on ``example_input()`` (called only then; e.g. a zero batch of
    the recipe's input shape). Returns ``"script"`` or ``"trace"``.

    TorchScript is deprecated in torch 2.14 (FutureWarnings, silenced here) but is the one format that holds
    dynamic-quantized modules: ``torch.export`` fails on their packed int8 parameters.
    """
    out = Path(out)
    if out.suffix == ".safetensors":
        raise ValueError(f"{out} is a .safetensors file, which holds tensors only; a quantised model is saved as TorchScript (.pt)")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        try:
            program, how = torch.jit.script(model), "script"
        except Exception as script_error:  # scripting rejects much Python; tracing records one run instead
            if example_input is None:
                raise ValueError(f"{type(model).__name__} does not script and no example input was given to trace it: {script_error}") from script_error
            with torch.no_grad():
                program, how = torch.jit.trace(model, example_input()), "trace"
        torch.jit.save(program, str(out))
    return how


# -- a run to a file -------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What `export_run` wrote: the file, its format, the step it came from and the reports of the add-ons."""

    out: Path
    format: str  # "safetensors", "state_dict" (torch.save) or "torchscript (script|trace)"
    step: int
    tensors: int
    values: int
    sparsity: SparsityReport | None = None
    quantization: QuantizeReport | None = None

    @property
    def file_bytes(self) -> int:
        if self.out.is_dir():  # a save_pretrained folder
            return sum(f.stat().st_size for f in self.out.rglob("*") if f.is_file())
        return self.out.stat().st_size


def export_run(run: str | Path, out: str | Path, *, prune: float | None = None, quantize: str | None = None, format: str = "state_dict") -> ExportResult:
    """Materialise a run's target weights and write them to ``out`` for use without mapscale.

    Without ``quantize`` the file is a state_dict (``.safetensors``, else ``torch.save``) that the target class
    loads with ``load_state_dict(strict=True)``; ``prune`` first zeroes that fraction of each Linear/Conv/RNN
    weight (`prune_magnitude`). With ``quantize="int8"`` the (pruned) weights are loaded into a freshly built
    plain target, its Linear/LSTM layers quantised (`quantize_dynamic_int8`) and the module written as
    TorchScript (`save_torchscript`; tracing, if needed, uses a zero batch of the recipe's input shape).
    With ``format="hf"`` (an ``hf:`` target) ``out`` is a folder in the ``save_pretrained`` layout (config.json,
    model.safetensors, and the run's tokenizer when it has one) that ``AutoModelFor*.from_pretrained(out)`` loads.
    Raises ValueError for an amount outside [0, 1), an unknown ``quantize`` or ``format``, a quantised
    ``.safetensors`` or Hugging Face folder, or ``format="hf"`` for a target that is not a Hugging Face model.
    """
    from mapscale.data import save_tokenizer
    from mapscale.targets import build_target
    from mapscale.train import load_run

    out = Path(out)
    if format not in ("state_dict", "hf"):
        raise ValueError(f"unknown export format {format!r}; choose 'state_dict' (a file of tensors) or 'hf' (a save_pretrained folder)")
    if format == "hf" and quantize is not None:
        raise ValueError("--quantize writes a TorchScript program; a Hugging Face folder (--format hf) holds float weights")
    if quantize is not None and quantize != "int8":
        raise ValueError(f"unknown quantisation {quantize!r}; the one available is 'int8' (dynamic, Linear and LSTM layers)")
    if quantize is not None and out.suffix == ".safetensors":
        raise ValueError(f"--quantize writes a TorchScript program, not tensors: give --out a .pt file instead of {out}")
    if prune is not None:
        _check_amount(prune)  # before the (possibly slow) rebuild of the run's model
    recipe, model, checkpoint = load_run(Path(run), "cpu")
    state = model.materialize()
    # A plain target (no mapping) to name the prunable weights and, when quantising, to carry the weights.
    target = build_target(recipe.target.name, recipe.target.args, task=recipe.task)
    sparsity = None
    if prune is not None:
        state, sparsity = prune_magnitude(state, prune, include=prunable_weights(target))
    result = dict(step=checkpoint["step"], tensors=len(state), values=sum(t.numel() for t in state.values()), sparsity=sparsity)
    if format == "hf":
        from mapscale import hf

        if hf.hf_model(target) is None:
            raise ValueError(f"--format hf writes Hugging Face models; target {recipe.target.name!r} is not one (name it hf:<folder or model type>)")
        hf.export_pretrained(target, state, out)
        save_tokenizer(recipe.data, out)  # the run's tokenizer beside the weights; byte text has none
        return ExportResult(out, "hf (save_pretrained)", **result)
    if quantize is None:
        metadata = {"recipe": recipe.name, "target": recipe.target.name, "step": str(checkpoint["step"])}
        if prune is not None:
            metadata["pruned"] = str(prune)
        save_state_dict(state, out, metadata)
        return ExportResult(out, "safetensors" if out.suffix == ".safetensors" else "state_dict", **result)
    target.load_state_dict(state, strict=True)
    target.eval()
    quantized = quantize_dynamic_int8(target)

    def zero_batch() -> Tensor:
        from mapscale.data import build_datasets

        return torch.zeros(1, *build_datasets(recipe.data, recipe.task).input_shape)

    how = save_torchscript(quantized, out, zero_batch)
    return ExportResult(out, f"torchscript ({how})", quantization=quantization_report(target, quantized), **result)

