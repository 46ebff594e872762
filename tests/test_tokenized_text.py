"""``data.name=text`` with ``data.tokenizer``: bytes unchanged, a BPE trained on the training text only, a local
tokenizer folder, the saved tokenizer loading in ``transformers`` alone, and a short GPT-2 run on BPE tokens. The
text is the standard library's own source, written into tmp_path; nothing is downloaded."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import torch

from mapscale.data import DataError, DataSplits, build_datasets, save_tokenizer, text_tokenizer
from mapscale.recipe import DataSection, RecipeError, load_recipe

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SOURCES = (
    "textwrap.py", "heapq.py", "bisect.py", "fnmatch.py", "shlex.py", "difflib.py", "calendar.py", "argparse.py",
    "string.py", "glob.py",
)
MARKER = " zyxquuxplugh"
"""A word that never occurs in the sources: the corpus ends on it, so it lies in the test part only."""
WINDOW = 32


def stdlib_text() -> str:
    return "".join((STDLIB / name).read_text(encoding="utf-8") for name in SOURCES)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 300 KB of Python source, then 10 KB of `MARKER` (inside the last 10%, the test part)."""
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(stdlib_text() + MARKER * 800 + "\n", encoding="utf-8")
    return path


def section(path: Path, tokenizer: str | None = None, **fields) -> DataSection:
    return DataSection(name="text", path=path, tokenizer=tokenizer, **{"window": WINDOW, "test_size": 0.1, **fields})


def build(path: Path, tokenizer: str | None = None, **fields) -> DataSplits:
    return build_datasets(section(path, tokenizer, **fields), "language_modeling")


@pytest.fixture(scope="module")
def bpe(corpus) -> DataSplits:
    return build(corpus, "bpe:512")


def joined(split) -> torch.Tensor:
    """The token ids a split's windows cover, in order: every window's inputs, then the last window's last target."""
    inputs, targets = split.tensors
    return torch.cat([inputs.flatten(), targets[-1, -1:]])


def test_bytes_stay_the_files_bytes_cut_as_before(corpus):
    data = corpus.read_bytes()
    splits = build(corpus)
    count = (len(data) - 1) // WINDOW
    n_test = round(count * 0.1)
    tokens = torch.tensor(list(data), dtype=torch.int64)
    # the byte path as it was before tokenizers
    examples = tokens[(torch.arange(count) * WINDOW)[:, None] + torch.arange(WINDOW + 1)]
    for split, part in ((splits.train, examples[: count - n_test]), (splits.test, examples[count - n_test :])):
        inputs, targets = split.tensors
        assert inputs.dtype == targets.dtype == torch.int64
        assert torch.equal(inputs, part[:, :-1]) and torch.equal(targets, part[:, 1:])
    assert splits.vocab_size == splits.num_classes == 256 and splits.input_shape == (WINDOW,)
    assert text_tokenizer(section(corpus)) is None


def test_bpe_windows_cover_the_bytes_split_each_part_tokenized_alone(corpus, bpe):
    tokenizer = text_tokenizer(section(corpus, "bpe:512"))
    assert bpe.vocab_size == bpe.num_classes == len(tokenizer) == 512
    offset = len(build(corpus).train) * WINDOW  # where the byte path's test part starts
    text = corpus.read_bytes()
    train_text, test_text = text[:offset].decode(), text[offset:].decode()
    for split, part in ((bpe.train, train_text), (bpe.test, test_text)):
        inputs, targets = split.tensors
        assert inputs.shape == targets.shape == (len(split), WINDOW) and inputs.dtype == torch.int64
        assert torch.equal(inputs[:, 1:], targets[:, :-1]) and torch.equal(inputs[1:, 0], targets[:-1, -1])
        assert 0 <= int(inputs.min()) and int(targets.max()) < bpe.vocab_size
        covered = tokenizer.decode(joined(split))
        # the windows are the part's own tokens from its start, ending less than a window before its end
        left = tokenizer(part[len(covered) :], add_special_tokens=False)["input_ids"]
        assert part.startswith(covered) and len(left) <= WINDOW + 1


def test_bpe_trains_on_the_training_part_only(corpus, tmp_path):
    def marker_ids(tokenizer) -> list[int]:
        return tokenizer(MARKER, add_special_tokens=False)["input_ids"]

    tokenizer = text_tokenizer(section(corpus, "bpe:512"))
    assert len(marker_ids(tokenizer)) > 3 and not any("quux" in token for token in tokenizer.get_vocab())
    leading = tmp_path / "leading.txt"  # the marker first, in the training part: it is learnt
    leading.write_text(MARKER * 800 + "\n" + stdlib_text(), encoding="utf-8")
    assert len(marker_ids(text_tokenizer(section(leading, "bpe:512")))) == 1


def test_bpe_is_deterministic(corpus, bpe):
    again = build(corpus, "bpe:512")
    for first, second in ((bpe.train, again.train), (bpe.test, again.test)):
        assert all(torch.equal(a, b) for a, b in zip(first.tensors, second.tensors, strict=True))
    assert text_tokenizer(section(corpus, "bpe:512")).get_vocab() == text_tokenizer(section(corpus, "bpe:512")).get_vocab()


def test_max_examples_and_validation_cut_the_tokenized_training_windows(corpus, bpe):
    capped = build(corpus, "bpe:512", max_examples=50, validation_size=10)
    assert (len(capped.train), len(capped.validation), len(capped.test)) == (40, 10, len(bpe.test))
    held = torch.cat([capped.train.tensors[0], capped.validation.tensors[0]])
    assert sorted(map(tuple, held.tolist())) == sorted(map(tuple, bpe.train.tensors[0][:50].tolist()))
    assert capped.vocab_size == 512


def test_saved_tokenizer_loads_in_transformers_alone_and_as_a_tokenizer_folder(corpus, bpe, tmp_path):
    from transformers import AutoTokenizer

    folder = save_tokenizer(section(corpus, "bpe:512"), tmp_path / "tokenizer")
    assert folder == tmp_path / "tokenizer" and (folder / "tokenizer.json").is_file()
    loaded, ours = AutoTokenizer.from_pretrained(folder), text_tokenizer(section(corpus, "bpe:512"))
    sample = (STDLIB / "textwrap.py").read_text()[:2000] + MARKER + " naïve café ∑ 😀\n"
    ids = ours(sample, add_special_tokens=False)["input_ids"]
    assert loaded(sample, add_special_tokens=False)["input_ids"] == ids and loaded.decode(ids) == sample
    assert len(loaded) == 512 and loaded.eos_token == "<|endoftext|>"

    from_folder = build(corpus, str(folder))
    assert from_folder.vocab_size == 512
    for first, second in ((bpe.train, from_folder.train), (bpe.test, from_folder.test)):
        assert all(torch.equal(a, b) for a, b in zip(first.tensors, second.tensors, strict=True))
    assert save_tokenizer(section(corpus), tmp_path / "bytes") is None and not (tmp_path / "bytes").exists()


def test_the_cut_moves_to_a_character_boundary(tmp_path):
    path = tmp_path / "accents.txt"
    path.write_text("héllo wörld, ça va? " * 408, encoding="utf-8")  # é, ö and ç are 2 bytes each
    offset = len(build(path, test_size=0.25).train) * WINDOW
    assert path.read_bytes()[offset] & 0xC0 == 0x80  # the bytes' test part starts inside a character
    splits = build(path, "bpe:300", test_size=0.25)
    tokenizer = text_tokenizer(section(path, "bpe:300", test_size=0.25))
    train, test = tokenizer.decode(joined(splits.train)), tokenizer.decode(joined(splits.test))
    assert "\ufffd" not in train + test and test.startswith(path.read_bytes()[offset + 1 :].decode()[:20])


def test_bad_tokenizers_are_refused_clearly(corpus, tmp_path):
    missing = tmp_path / "no-such-tokenizer"
    with pytest.raises(DataError, match=f"data.tokenizer {missing} is not a folder"):
        build(corpus, str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no tokenizer that transformers can load"):
        build(corpus, str(tmp_path / "empty"))
    refused = {"bpe:abc": "integer vocabulary size of at least 257", "bpe:10": "at least 257", "wordpiece:512": "unknown scheme 'wordpiece'"}
    for spec, message in refused.items():
        with pytest.raises(ValueError, match=message):
            section(corpus, spec)
        with pytest.raises(RecipeError, match=message):
            load_recipe("recipes/gpt2_small_lwt.py", [f"data.tokenizer={spec}"])
    with pytest.raises(ValueError, match="does not read data.tokenizer"):
        DataSection(name="csv", tokenizer="bpe:512")


def test_gpt2_recipe_trains_on_bpe_tokens(corpus, tmp_path):
    from mapscale.train import train, write_run_files

    overrides = [
        f"data.path={corpus}", "data.tokenizer=bpe:512", f"data.window={WINDOW}", "data.test_size=16",
        "data.max_examples=32",
        f'target.args={{"vocab": 512, "positions": {WINDOW}, "width": 16, "layers": 12, "heads": 2}}',
        "optim.max_steps=3", "output.progress=false",
    ]
    recipe = load_recipe("recipes/gpt2_small_lwt.py", overrides)
    write_run_files(tmp_path, recipe, None, overrides)
    result = train(recipe, tmp_path)
    assert result.step == 3 and result.final["perplexity"] > 1
    assert json.loads((tmp_path / "recipe.json").read_text())["data"]["tokenizer"] == "bpe:512"
