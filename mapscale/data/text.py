"""Text for next-token prediction (``data.name=text``): a text file as bytes or as the ids of a tokenizer (a local
Hugging Face tokenizer, or a byte-level BPE trained on the training text), cut into windows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from mapscale.data.splits import DataError, DataSplits

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mapscale.data.section import DataSection


def build_text(section: DataSection, task: str, cache_dir=None) -> DataSplits:
    """``data.name=text``: `text_windows` of ``data.path`` in ``data.tokenizer``'s tokens (`text_tokenizer`)."""
    if section.path is None or section.window is None:
        raise DataError("data.name=text needs data.path (a UTF-8 text file) and data.window (tokens per example)")
    tokenizer = text_tokenizer(section)
    return text_windows(section.path, section.window, section.test_size, section.max_examples, tokenizer)


END_OF_TEXT = "<|endoftext|>"
"""The one special token of a ``bpe:`` tokenizer (GPT-2's): its bos, eos and unk token; the text never holds it."""
BPE_MIN_VOCAB = 256 + 1
"""The smallest ``bpe:`` vocabulary: the 256 byte symbols and `END_OF_TEXT`."""


def bpe_vocab_size(tokenizer: str | None) -> int | None:
    """The vocabulary size a ``data.tokenizer`` of the form ``bpe:<vocab size>`` asks for; None for bytes (None) or
    a folder. Raises `DataError` for a size that is not an integer of at least `BPE_MIN_VOCAB`, and for a scheme
    other than ``bpe`` (a name of two or more letters, digits or ``_`` before a ``:``; anything else is a folder,
    ``C:/tokenizer`` included)."""
    scheme, colon, size = (tokenizer or "").partition(":")
    if not colon or len(scheme) < 2 or not scheme.isidentifier():
        return None
    if scheme != "bpe":
        raise DataError(
            f"data.tokenizer={tokenizer!r}: unknown scheme {scheme!r}; give bpe:<vocab size> or a folder holding a "
            "Hugging Face tokenizer"
        )
    if not size.isdigit() or int(size) < BPE_MIN_VOCAB:
        raise DataError(
            f"data.tokenizer={tokenizer!r}: bpe needs an integer vocabulary size of at least {BPE_MIN_VOCAB} (the 256 "
            f"bytes and {END_OF_TEXT}), such as bpe:8192"
        )
    return int(size)


def text_windows(
    path: str | Path,
    window: int,
    test_size: float,
    max_examples: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> DataSplits:
    """A text file cut into consecutive examples of ``window`` input tokens; each example's target is its input
    shifted by one token. Tokens are the file's bytes (vocabulary 256, no tokenizer to download), or the ids of
    ``tokenizer`` (`text_tokenizer`). The split is by position: the last ``test_size`` of the file (a fraction, or
    a count of ``window``-byte examples when ``>= 1``) is the test split, so no test text is seen in training; the
    same text whatever the tokenizer (`_test_offset`), each part tokenized on its own. ``max_examples`` caps the
    training examples."""
    path = Path(path)
    data, offset = _test_offset(path, window, test_size)
    if tokenizer is None:
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        # The last training example's target ends on the test part's first byte, as it always has for bytes.
        train, test = _windows(tokens[: offset + 1], window), _windows(tokens[offset:], window)
        vocab = 256
    else:
        train, test = (_windows(_encode(tokenizer, text), window) for text in _decode_parts(path, data, offset))
        vocab = len(tokenizer)
        for name, part in (("training", train), ("test", test)):
            if not len(part):
                raise DataError(f"the {name} part of {path} holds fewer than {window + 1} tokens: no example of {window} tokens")
    if max_examples is not None:
        train = train[:max_examples]
    make = lambda part: TensorDataset(part[:, :-1].contiguous(), part[:, 1:].contiguous())  # noqa: E731
    return DataSplits(make(train), make(test), num_classes=vocab, input_shape=(window,), vocab_size=vocab)


def text_tokenizer(section: DataSection) -> PreTrainedTokenizerBase | None:
    """The tokenizer of ``data.tokenizer`` (a `transformers` tokenizer), or None for bytes: loaded from a local
    folder (never from the network), or for ``bpe:<vocab size>`` a byte-level BPE (`tokenizers`) trained on the
    training part of ``data.path`` only, with `END_OF_TEXT` as its one special token. Training is deterministic:
    the same text, ``window``, ``test_size`` and vocabulary size give the same tokenizer, so it is rebuilt from the
    recipe wherever it is needed rather than stored. ``max_examples`` and ``validation_size`` do not change it."""
    if section.tokenizer is None:
        return None
    vocab = bpe_vocab_size(section.tokenizer)
    if vocab is None:
        return _load_tokenizer(Path(section.tokenizer).expanduser())
    if section.path is None or section.window is None:
        raise DataError(
            f"data.tokenizer={section.tokenizer} trains on the training part of data.path: set data.path (a UTF-8 text "
            "file) and data.window"
        )
    path = Path(section.path)
    train_text, _ = _decode_parts(path, *_test_offset(path, section.window, section.test_size))
    return _train_bpe(train_text, vocab)


def save_tokenizer(section: DataSection, folder: str | Path) -> Path | None:
    """Write the tokenizer of ``section`` (`text_tokenizer`) into ``folder`` in the Hugging Face layout
    (``save_pretrained``), so ``transformers.AutoTokenizer.from_pretrained(folder)`` gives the same ids without
    mapscale; returns ``folder``. Bytes have no tokenizer: nothing is written and the result is None."""
    tokenizer = text_tokenizer(section)
    if tokenizer is None:
        return None
    tokenizer.save_pretrained(folder)
    return Path(folder)


def _test_offset(path: Path, window: int, test_size: float) -> tuple[bytes, int]:
    """The bytes of the text file ``path`` and the offset where its test part starts: the first byte of its last
    ``test_size`` examples of ``window`` bytes (a fraction, or a count when ``>= 1``)."""
    if not path.is_file():
        raise DataError(f"data.path {path} is not a text file")
    data = path.read_bytes()
    count = (len(data) - 1) // window
    n_test = int(test_size) if test_size >= 1 else int(round(count * test_size))
    if count < 2 or not 1 <= n_test < count:
        raise DataError(f"{path} holds {len(data):,} bytes: {count} examples of {window} tokens, too few to hold out {test_size} for testing")
    return data, (count - n_test) * window


def _decode_parts(path: Path, data: bytes, offset: int) -> tuple[str, str]:
    """The training and test text of ``data`` split at byte ``offset``, moved on to the next UTF-8 character so
    the cut splits no character."""
    while offset < len(data) and data[offset] & 0xC0 == 0x80:  # a continuation byte: inside a character
        offset += 1
    try:
        return data[:offset].decode("utf-8"), data[offset:].decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); a tokenizer reads text, bytes (no data.tokenizer) any file") from None


def _windows(tokens: Tensor, window: int) -> Tensor:
    """``(n, window + 1)`` consecutive examples of ``tokens`` (each starting where the previous one's inputs end)."""
    count = (len(tokens) - 1) // window
    return tokens[(torch.arange(count) * window)[:, None] + torch.arange(window + 1)]


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> Tensor:
    """The ids of ``text`` as one int64 tensor: the text alone, without the special tokens some tokenizers add
    around a sequence, and without the warning about sequences longer than a model's positions."""
    return torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.int64)


def _load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    if not folder.is_dir():
        raise DataError(
            f"data.tokenizer {folder} is not a folder: give a local folder holding a Hugging Face tokenizer "
            "(tokenizer.json ...) or bpe:<vocab size>"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise DataError(f"data.tokenizer {folder} holds no tokenizer that transformers can load: {err}") from None


def _train_bpe(text: str, vocab: int) -> PreTrainedTokenizerBase:
    """A byte-level BPE of at most ``vocab`` tokens (fewer when ``text`` offers fewer merges) trained on ``text``,
    as GPT-2's: every byte is a symbol, so any text encodes without an unknown token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    special = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)

