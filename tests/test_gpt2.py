"""GPT-2 as a target: its size, tied embeddings generated once, next-byte data and metrics, a few trainer steps."""

import math
from pathlib import Path

import pytest
import torch

import mapscale
from mapscale.data import DataError, build_datasets
from mapscale.metrics import Metrics
from mapscale.recipe import DataSection, load_recipe
from mapscale.targets import gpt2
from mapscale.train import train, write_run_files

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TINY = {"vocab": 256, "positions": 32, "width": 32, "layers": 2, "heads": 4}


def test_gpt2_small_has_hugging_faces_parameter_count_with_tied_embeddings():
    with torch.device("meta"):
        model = gpt2()
    assert sum(p.numel() for p in model.parameters()) == 124_439_808
    assert model.lm_head.weight is model.wte.weight


def test_tied_embedding_is_generated_once_and_shared_by_both_names():
    torch.manual_seed(0)
    mapped = mapscale.map_model(gpt2(**TINY), {"emb": ["wte.*", "wpe.*"], "blocks": ["h.*", "ln_f.*"]}, 64, operator="structured")
    tensors = mapped.generated_tensors()
    assert tensors["wte.weight"] is tensors["lm_head.weight"]
    assert sum(g.numel for g in mapped.layout.groups) == sum(p.numel() for p in gpt2(**TINY).parameters())
    logits = mapped(torch.randint(0, 256, (2, 16)))
    assert logits.shape == (2, 16, 256)


def test_causal_attention_ignores_future_tokens():
    torch.manual_seed(0)
    model = gpt2(**TINY).eval()
    tokens = torch.randint(0, 256, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 256
    assert torch.allclose(model(tokens)[0, :8], model(changed)[0, :8], atol=1e-6)
    assert not torch.allclose(model(tokens)[0, 8:], model(changed)[0, 8:])


def test_text_windows_shift_targets_by_one_token_and_hold_out_the_end(tmp_path):
    text = bytes(range(256)) * 4  # 1,024 bytes
    (tmp_path / "t.txt").write_bytes(text)
    splits = build_datasets(DataSection(name="text", path=tmp_path / "t.txt", window=10, test_size=0.25), "language_modeling")
    n = (len(text) - 1) // 10
    assert len(splits.train) + len(splits.test) == n and len(splits.test) == round(n * 0.25)
    inputs, targets = splits.train[3]
    assert inputs.tolist() == [b for b in text[30:40]] and targets.tolist() == [b for b in text[31:41]]
    first_test, _ = splits.test[0]
    assert first_test[0].item() == text[(n - len(splits.test)) * 10]  # the test split is the file's end
    with pytest.raises(DataError, match="language_modeling"):
        build_datasets(DataSection(name="text", path=tmp_path / "t.txt", window=10), "classification")


def test_language_model_metrics_uniform_logits_give_the_vocabulary_as_perplexity():
    metrics = Metrics("language_modeling")
    metrics.update(torch.zeros(3, 5, 256), torch.randint(0, 256, (3, 5)))
    result = metrics.compute()
    assert result["perplexity"] == pytest.approx(256, rel=1e-5) and result["loss"] == pytest.approx(math.log(256), rel=1e-6)
    exact = torch.full((1, 4, 256), -1e4)
    exact[0, torch.arange(4), torch.tensor([1, 2, 3, 4])] = 0
    metrics = Metrics("language_modeling")
    metrics.update(exact, torch.tensor([[1, 2, 3, 4]]))
    assert metrics.compute()["token_accuracy"] == 1.0 and metrics.compute()["perplexity"] == pytest.approx(1.0)


def test_gpt2_recipe_trains_through_the_structured_operator(tmp_path):
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 60)
    overrides = [
        f"target.args={{\"vocab\": 256, \"positions\": 32, \"width\": 32, \"layers\": 12, \"heads\": 4}}",
        f"data.path={tmp_path / 'text.txt'}", "data.window=32", "optim.max_steps=6", "optim.batch_size=8",
        f"output.root={tmp_path}", "output.run_name=run", "output.progress=false", "output.eval_every=6",
    ]
    recipe = load_recipe(RECIPES / "gpt2_small_lwt.py", overrides)
    write_run_files(tmp_path / "run", recipe, None, overrides)
    result = train(recipe, tmp_path / "run")
    assert result.trainable == 4096 and result.step == 6
    assert result.final["perplexity"] < 256  # better than uniform over bytes after 6 steps on repetitive text
