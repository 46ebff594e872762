"""Hugging Face ``transformers`` models as targets, and their export in the ``save_pretrained`` layout.

``target.name="hf:<folder>"`` builds the model of a local folder (``config.json`` and weights) through the
``Auto*`` classes; ``target.name="hf:<model type>"`` (``hf:gpt2``, ``hf:llama``, ``hf:bert``) builds a randomly
initialised model from that configuration class, ``target.args`` overriding its fields. The head follows the
task: a causal LM for ``language_modeling`` (an encoder such as BERT is made a decoder, ``is_decoder=True``), a
sequence classifier for ``classification``. Nothing reaches the hub (``local_files_only``).

The target is `HFTarget`, whose ``forward(input ids) -> logits`` is what mapscale's loops call; its parameters are
the wrapped model's under the prefix ``model.``, so `export_pretrained` strips it and writes files that
``AutoModelFor*.from_pretrained(folder)`` loads without mapscale. ``transformers`` is imported here only, and
this module only when a recipe names an ``hf:`` target (the ``[hf]`` extra).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

PREFIX = "hf:"
HEADS = {"language_modeling": "AutoModelForCausalLM", "classification": "AutoModelForSequenceClassification"}


class HFTarget(nn.Module):
    """A ``transformers`` model as a target: ``forward(input_ids (B, T) int64) -> logits`` (``(B, T, vocab)``
    for a causal LM, ``(B, labels)`` for a classifier). ``model`` is the wrapped ``PreTrainedModel``."""

    def __init__(self, model: nn.Module, build_note: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.build_note = build_note  # one line the trainer prints about how it was built (None: nothing to say)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids).logits


def _transformers():
    try:
        import transformers
    except ImportError as err:  # the optional extra
        raise ImportError('hf: targets need the transformers library: pip install -e ".[hf]"') from err
    transformers.logging.set_verbosity_error()  # its notes on unused config fields are not the user's concern
    transformers.logging.disable_progress_bar()  # mapscale reports what it wrote
    return transformers


def is_folder(spec: str) -> bool:
    """Whether ``hf:<spec>`` names a local folder rather than a model type (a path-like spec or an existing folder)."""
    return "/" in spec or spec.startswith(".") or Path(spec).is_dir()


def build(spec: str, args: dict, task: str) -> HFTarget:
    """The `HFTarget` of ``hf:<spec>`` for ``task``: from a local folder (its weights loaded) or a model type (a
    random init from the global RNG: seed it first). ``args`` override config fields (``num_labels``, sizes)."""
    transformers = _transformers()
    if task not in HEADS:
        raise ValueError(f"hf: targets serve the tasks {sorted(HEADS)}; task={task!r} has no Hugging Face head here")
    auto = getattr(transformers, HEADS[task])
    args = dict(args)
    if is_folder(spec):
        folder = Path(spec).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"hf:{spec}: no folder {folder} with a config.json (Hugging Face models are read from local folders only)")
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, **args)
        _fit_heads(config, task)
        if torch.get_default_device().type == "meta":  # shapes only (mapscale inspect): no weights to read
            return HFTarget(auto.from_config(config))
        weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
        if not weights:  # a config alone: the architecture, initialised afresh from the global RNG (seeded), as hf:<type>
            return HFTarget(auto.from_config(config), f"hf:{spec} holds a config.json and no weights ({', '.join(WEIGHT_FILES[::2])}): a fresh, seeded init of that config")
        return HFTarget(_pretrained(auto, folder, config, weights[0], spec))
    types = sorted(transformers.CONFIG_MAPPING.keys())
    if spec not in types:
        import difflib

        close = difflib.get_close_matches(spec, types, n=3)
        raise ValueError(f"hf:{spec} is neither a local folder (no such directory) nor a transformers model type" + (f"; did you mean {close}?" if close else ""))
    config = transformers.AutoConfig.for_model(spec, **args)
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):  # defaults of a larger vocabulary than args chose
        value = getattr(config, field, None)
        if field not in args and isinstance(value, int) and value >= getattr(config, "vocab_size", value + 1):
            setattr(config, field, None)
    _fit_heads(config, task)
    return HFTarget(auto.from_config(config))


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _pretrained(auto, folder: Path, config, weights: Path, spec: str) -> nn.Module:
    """``auto.from_pretrained(folder)``, with an unreadable or partial weights file refused in one line naming it
    (transformers would otherwise fill missing base-model weights with a random init and say nothing)."""
    try:
        model, info = auto.from_pretrained(folder, config=config, local_files_only=True, output_loading_info=True)
    except Exception as err:  # a truncated or foreign file: torch, safetensors and transformers raise their own types
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"hf:{spec}: cannot read the weights in {weights} ({type(err).__name__}: {reason})") from None
    prefix = getattr(model, "base_model_prefix", "")
    missing = [k for k in info.get("missing_keys", []) if prefix and k.startswith(prefix + ".")]  # a new head is expected
    if missing:
        raise ValueError(f"hf:{spec}: {weights} holds only part of the model: {len(missing)} base-model tensors missing, e.g. {missing[:3]}")
    return model


def _fit_heads(config, task: str) -> None:
    """An encoder (BERT) serving a causal LM is made a decoder. A decoder's classifier reads the last token before
    the padding; mapscale's windows have none, so a config without a pad token gets -1 (never an input id)."""
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{config.model_type} is an encoder-decoder model; hf: targets take decoders and encoders")
    if task == "language_modeling" and hasattr(config, "is_decoder") and config.model_type in ("bert", "roberta", "electra", "ernie"):
        config.is_decoder = True
    if task == "classification" and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = -1


def hf_model(target: nn.Module):
    """The ``transformers`` model inside a target built by `build`, or None for any other target."""
    return target.model if isinstance(target, HFTarget) else None


def export_pretrained(target: HFTarget, state: dict[str, Tensor], out: str | Path) -> Path:
    """Load ``state`` (the `HFTarget`'s state_dict, ``model.`` names) into the wrapped model and write it with
    ``save_pretrained`` into the folder ``out`` (config.json, model.safetensors): ``from_pretrained(out)`` loads it."""
    model = target.model
    inner = {name.removeprefix("model."): tensor for name, tensor in state.items()}
    missing, unexpected = model.load_state_dict(inner, strict=False)
    missing = [m for m in missing if m not in _tied_names(model)]
    if missing or unexpected:
        raise ValueError(f"the run's weights do not fit {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return out


def _tied_names(model: nn.Module) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied) if not isinstance(tied, dict) else set(tied.keys())
