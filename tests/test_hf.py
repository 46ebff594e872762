"""Hugging Face models as targets (`mapscale.hf`): built from a model type or a local folder, mapped with the
``blocks`` grouping, trained through the CLI, exported with ``--format hf`` and loaded by ``from_pretrained`` in
a process that never imports mapscale, with mapscale's logits."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from tolerance import assert_close

pytest.importorskip("transformers")

from mapscale.mapping.layout import ParamLayout, repeated_blocks  # noqa: E402
from mapscale.recipe import load_recipe  # noqa: E402
from mapscale.targets import build_target  # noqa: E402

RECIPE = Path(__file__).parents[1] / "recipes" / "gpt2_small_lwt.py"
# Tiny configurations without dropout (runs compared across processes must draw no random masks)
CONFIGS = {
    "gpt2": {"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 256, "n_positions": 32, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "llama": {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 32},
    "bert": {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "vocab_size": 256, "max_position_embeddings": 32,
             "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
}
BLOCKS = {"gpt2": "model.transformer.h", "llama": "model.model.layers", "bert": "model.bert.encoder.layer"}


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """About 100 KB of the standard library's own source as the corpus."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_bytes(b"".join((stdlib / name).read_bytes() for name in ("textwrap.py", "string.py", "shlex.py", "fnmatch.py")))
    return path


def hf_overrides(kind: str, text: Path, root: Path, name: str, *extra: str) -> list[str]:
    return [
        f"target.name=hf:{kind}", f"target.args={json.dumps(CONFIGS[kind])}", "mapping.grouping=blocks", "mapping.budget=256",
        f"data.path={text}", "data.window=32", "optim.batch_size=8", "optim.max_steps=5", "output.progress=false", "output.log_every=1",
        f"output.root={root}", f"output.run_name={name}", *extra,
    ]


def run_cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "mapscale.cli", *argv], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


# Loads the exported folder with transformers alone, and checks that nothing imported mapscale.
LOAD = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
tokens = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(input_ids=tokens).logits, sys.argv[3])
assert not any(name == "mapscale" or name.startswith("mapscale.") for name in sys.modules), "mapscale was imported"
"""


def logits_without_mapscale(folder: Path, tokens: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    torch.save(tokens, tmp_path / "tokens.pt")
    done = subprocess.run([sys.executable, "-c", LOAD, str(folder), str(tmp_path / "tokens.pt"), str(tmp_path / "logits.pt")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "logits.pt")


def mapscale_logits(run_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    from mapscale.train import load_run

    _, model, _ = load_run(run_dir, "cpu")
    with torch.no_grad():
        return model.eval()(tokens)


# -- building ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_model_types_build_with_the_task_head_and_blocks_groups(kind):
    torch.manual_seed(0)
    target = build_target(f"hf:{kind}", CONFIGS[kind], task="language_modeling")
    tokens = torch.randint(0, 256, (2, 16))
    assert target(tokens).shape == (2, 16, 256)
    assert repeated_blocks(target) == [f"{BLOCKS[kind]}.0", f"{BLOCKS[kind]}.1"]
    groups = [g.name for g in ParamLayout.from_module(target, "blocks", 256).groups]
    assert groups == ["embeddings", f"{BLOCKS[kind]}.0", f"{BLOCKS[kind]}.1", "final"] or groups == ["embeddings", f"{BLOCKS[kind]}.0", f"{BLOCKS[kind]}.1"]
    classifier = build_target(f"hf:{kind}", {**CONFIGS[kind], "num_labels": 3}, task="classification")
    assert classifier.eval()(tokens).shape == (2, 3)


def test_the_same_seed_builds_the_same_random_model():
    torch.manual_seed(5)
    first = build_target("hf:llama", CONFIGS["llama"], task="language_modeling").state_dict()
    torch.manual_seed(5)
    second = build_target("hf:llama", CONFIGS["llama"], task="language_modeling").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_bad_hf_names_give_one_line_naming_them(tmp_path):
    with pytest.raises(ValueError, match=r"hf:gtp2 is neither a local folder .* did you mean \['gpt2'"):
        build_target("hf:gtp2", {}, task="language_modeling")
    with pytest.raises(FileNotFoundError, match="no folder .*missing with a config.json"):
        build_target(f"hf:{tmp_path / 'missing'}", {}, task="language_modeling")
    with pytest.raises(ValueError, match="no Hugging Face head"):
        build_target("hf:gpt2", CONFIGS["gpt2"], task="segmentation")
    with pytest.raises(ValueError, match="found no repeated blocks"):
        ParamLayout.from_module(build_target("cnn2"), "blocks", 256)


# -- train, export, load without mapscale ------------------------------------------------------------------------


def _train_export_load(kind: str, text: Path, tmp_path: Path) -> None:
    run_cli("train", str(RECIPE), *hf_overrides(kind, text, tmp_path, kind))
    run_dir, folder = tmp_path / kind, tmp_path / f"{kind}-hf"
    run_cli("export", str(run_dir), "--format", "hf", "--out", str(folder))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    tokens = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    expected = mapscale_logits(run_dir, tokens)
    trained = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"] if (run_dir / "checkpoint.pt").exists() else None
    assert trained is None or any(k.startswith("generator.latents") and v.abs().sum() > 0 for k, v in trained.items())
    torch.testing.assert_close(logits_without_mapscale(folder, tokens, tmp_path), expected, rtol=0, atol=1e-5)


def test_an_exported_folder_loads_with_the_runs_logits(text, tmp_path):
    """In one process (the slow tier does it through the CLI and a process without mapscale, for 3 models)."""
    from transformers import AutoModelForCausalLM

    from mapscale.export import export_run
    from mapscale.train import train, write_run_files

    overrides = hf_overrides("gpt2", text, tmp_path, "run", "optim.max_steps=2", "data.max_examples=64", "data.test_size=8")
    write_run_files(tmp_path / "run", load_recipe(RECIPE, overrides), None, overrides)
    train(load_recipe(RECIPE, overrides), tmp_path / "run")
    result = export_run(tmp_path / "run", tmp_path / "out", format="hf")
    assert result.format == "hf (save_pretrained)" and result.step == 2 and result.file_bytes > 4 * 35_000  # 35,712 float32 values, the tied head once
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()(input_ids=tokens).logits
    torch.testing.assert_close(loaded, mapscale_logits(tmp_path / "run", tokens), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_export_writes_the_runs_tokenizer_beside_the_weights(text, tmp_path):
    from transformers import AutoTokenizer

    from mapscale.data import text_tokenizer

    args = {**CONFIGS["gpt2"], "vocab_size": 300}
    run_cli("train", str(RECIPE), *hf_overrides("gpt2", text, tmp_path, "bpe", "data.tokenizer=bpe:300", f"target.args={json.dumps(args)}", "optim.max_steps=1"))
    run_cli("export", str(tmp_path / "bpe"), "--format", "hf", "--out", str(tmp_path / "out"))
    sample = "def wrap(text, width=70):\n    return TextWrapper(width=width).wrap(text)"
    ours = text_tokenizer(load_recipe(tmp_path / "bpe").data)
    assert AutoTokenizer.from_pretrained(tmp_path / "out")(sample)["input_ids"] == ours(sample)["input_ids"]
    assert len(ours) == 300


def test_a_vocabulary_smaller_than_the_tokenizers_is_refused(text, tmp_path):
    from mapscale.data import DataError
    from mapscale.distributed.world import World
    from mapscale.train import prepare

    recipe = load_recipe(RECIPE, hf_overrides("gpt2", text, tmp_path, "small", "data.tokenizer=bpe:300"))
    with pytest.raises(DataError, match="holds 256 ids and the data's tokens take 300"):
        prepare(recipe, World(), "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_tiny_models_train_through_the_cli_export_and_load_without_mapscale(kind, text, tmp_path):
    _train_export_load(kind, text, tmp_path)


def test_export_hf_refuses_a_target_that_is_not_a_hugging_face_model(tmp_path):
    from mapscale.export import export_run
    from mapscale.train import train, write_run_files

    overrides = ["optim.max_steps=1", "data.max_examples=128", "output.progress=false"]
    write_run_files(tmp_path / "cnn", load_recipe("recipes/mnist_cnn2.py", overrides), None, overrides)
    train(load_recipe("recipes/mnist_cnn2.py", overrides), tmp_path / "cnn")
    with pytest.raises(ValueError, match="not one"):
        export_run(tmp_path / "cnn", tmp_path / "out", format="hf")


# -- a pretrained folder --------------------------------------------------------------------------------------------


def test_finetune_of_a_pretrained_folder_starts_at_its_logits(text, tmp_path):
    from mapscale.train import build_model

    torch.manual_seed(3)
    pretrained = build_target("hf:gpt2", CONFIGS["gpt2"], task="language_modeling").model.eval()
    folder = tmp_path / "pretrained"
    pretrained.save_pretrained(folder)
    recipe = load_recipe(RECIPE, [*hf_overrides("gpt2", text, tmp_path, "ft"), f"target.name=hf:{folder}", "target.args={}", "mapping.method=finetune",
                                  "mapping.grouping=blocks"])
    model = build_model(recipe).eval()
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), pretrained(input_ids=tokens).logits, rtol=0, atol=0)
    assert model.num_trainable() < 300


# -- two ranks -------------------------------------------------------------------------------------------------------


@pytest.mark.distributed
def test_torchrun_two_ranks_train_a_hugging_face_target_like_one_process(text, tmp_path):
    """LLaMA (no dropout), sharded generation over 2 gloo ranks against 1 process on the same global batch."""
    import os

    from mapscale.train import train

    common = ["optim.schedule=constant", "optim.lr=0.01", "mapping.grouping=blocks"]
    single = hf_overrides("llama", text, tmp_path, "one", *common)
    (tmp_path / "one").mkdir()
    train(load_recipe(RECIPE, single), tmp_path / "one")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "mapscale.cli", "train", str(RECIPE),
                           *hf_overrides("llama", text, tmp_path, "two", *common)], capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", **env})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def losses(run: str) -> list[float]:
        return [r["task"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]

    assert len(losses("one")) == 5 and len(set(losses("one"))) == 5
    assert_close(losses("two"), losses("one"), rtol=1e-5, what="losses")


def test_eval_train_false_skips_the_final_pass_over_the_training_split(tmp_path):
    """A large pretraining corpus (bench/hf_finetune.py) need not be evaluated whole at the end."""
    from mapscale.train import train

    for flag, expected in (("true", True), ("false", False)):
        recipe = load_recipe("recipes/mnist_cnn2.py", ["optim.max_steps=2", "data.max_examples=128", "output.progress=false", f"output.eval_train={flag}"])
        (tmp_path / flag).mkdir()
        result = train(recipe, tmp_path / flag)
        splits = [json.loads(line)["split"] for line in (tmp_path / flag / "metrics.jsonl").read_text().splitlines()]
        assert ("train-eval" in splits) == expected and bool(result.final_train) == expected and result.final


# -- local folders without (whole) weights ------------------------------------------------------------------------


def _folder_overrides(folder: Path, text: Path, root: Path, name: str) -> list[str]:
    overrides = hf_overrides("gpt2", text, root, name, "optim.max_steps=3", "data.max_examples=64", "data.test_size=8")
    return [f"target.name=hf:{folder}", *[o for o in overrides if not o.startswith(("target.name=", "target.args="))]]


def _train_cli(overrides: list[str]):
    from typer.testing import CliRunner

    from mapscale.cli import app

    return CliRunner().invoke(app, ["train", str(RECIPE), *overrides])


def test_a_config_only_folder_trains_from_the_seeded_init_of_its_config_and_says_so(text, tmp_path):
    """hf:<folder> with a config.json and no weights: the fresh init hf:<model type> gives for the same config."""
    from transformers import AutoConfig

    folder = tmp_path / "config-only"
    AutoConfig.for_model("gpt2", **CONFIGS["gpt2"]).save_pretrained(folder)
    done = _train_cli(_folder_overrides(folder, text, tmp_path, "folder"))
    assert done.exit_code == 0, done.output
    assert "holds a config.json and no weights" in " ".join(done.output.split()) and "Traceback" not in done.output
    by_type = _train_cli(hf_overrides("gpt2", text, tmp_path, "type", "optim.max_steps=3", "data.max_examples=64", "data.test_size=8"))
    assert by_type.exit_code == 0, by_type.output

    def losses(run: str) -> list[float]:
        return [r["task"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]

    assert len(losses("folder")) == 3 and losses("folder") == losses("type")


@pytest.mark.parametrize("damage", ["unreadable", "partial"])
def test_a_folder_with_unreadable_or_partial_weights_is_one_line_naming_the_file(damage, text, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "pretrained"
    torch.manual_seed(0)
    build_target("hf:gpt2", CONFIGS["gpt2"], task="language_modeling").model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    if damage == "unreadable":
        weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    else:
        state = load_file(weights)
        save_file({k: v for k, v in state.items() if ".h.1." not in k}, weights, metadata={"format": "pt"})  # one block short
    done = _train_cli(_folder_overrides(folder, text, tmp_path / "runs", "run"))
    assert done.exit_code == 2, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.output, done.output
    message = " ".join(done.output.split())
    assert str(weights) in message.replace(" ", "") or str(weights) in message, message
    assert ("cannot read the weights" if damage == "unreadable" else "holds only part of the model") in message
    assert not (tmp_path / "runs").exists()
