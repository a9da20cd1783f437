"""Tokenizers trained on the corpus, and the corpus as memory-mapped token shards.

The corpus (any source of :mod:`selfsup.data.text`) is tokenized once into ``tokens.bin``
(uint16 when the vocabulary fits, else uint32) in a cache folder keyed by the files and the
options, beside the Hugging Face ``tokenizer.json`` that produced it. Training reads random
windows of ``block_size + 1`` tokens from a read-only memory map, so a corpus larger than RAM
streams. The split is nanoGPT's: the first 90% of the tokens train, the last 10% validate, and
no window crosses the boundary.

Two tokenizers, both Hugging Face ``tokenizers`` objects so that an exported model carries a
standard ``tokenizer.json``:

* ``char``: one token per character seen in the corpus (a BPE model without merges), plus the
  document separator ``<|endoftext|>``; encoded here by a vectorised code-point lookup that the
  tests check against the Hugging Face encoder (it is ~50x faster on a 1 MB corpus);
* ``bpe``: byte-level BPE (GPT-2's scheme, Radford et al. 2019) trained to ``vocab_size``.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from selfsup.config import options_dataclass
from selfsup.data.base import DataInfo
from selfsup.data.text import TextSource, fingerprint, iter_documents, kind_of
from selfsup.errors import SelfsupError

log = logging.getLogger("selfsup")

EOS = "<|endoftext|>"
TOKENIZERS = ("char", "bpe")
#: Bump when tokenization or the shard layout changes, so older caches are not reused.
SHARD_VERSION = 1
#: An epoch has at most this many windows; larger corpora place window starts at a stride.
MAX_WINDOWS = 1 << 20
_BATCH_CHARS = 1 << 22  # characters per encode_batch call of the BPE tokenizer


@dataclass
class TextOptions:
    """Reader options for text (``data_options``; CLI ``--tokenizer``, ``--block-size`` ...)."""

    tokenizer: str = "char"  # "char" or "bpe" (byte-level)
    vocab_size: int | None = None  # bpe: required size (default 4096); char: an upper bound
    block_size: int = 128  # context window in tokens
    text_field: str = "text"  # .jsonl
    text_column: str = "text"  # .parquet
    encoding_errors: str = "strict"  # or "replace"
    val_fraction: float = 0.1  # the last share of the tokens, nanoGPT's convention
    # Hyper-parameter search: drop the last val_fraction (the reported validation split) and
    # validate on the last val_fraction of what remains, so choices never see the reported split.
    tuning: bool = False

    def validate(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise SelfsupError(
                f"tokenizer must be one of {', '.join(TOKENIZERS)}, not {self.tokenizer!r}"
            )
        if self.block_size < 1:
            raise SelfsupError(f"block_size must be positive, not {self.block_size}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise SelfsupError(f"vocab_size must be positive, not {self.vocab_size}")
        if not 0 < self.val_fraction < 1:
            raise SelfsupError(f"val_fraction must be in (0, 1), not {self.val_fraction}")

    def source(self, path: str) -> TextSource:
        return TextSource(path, self.text_field, self.text_column, self.encoding_errors)


# ---------------------------------------------------------------------------- tokenizers


def char_tokenizer(chars: list[str]) -> Tokenizer:
    """A character-level Hugging Face tokenizer: ids 0..n-1 for ``chars``, then EOS."""
    vocab = {c: i for i, c in enumerate(chars)}
    vocab[EOS] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.add_special_tokens([EOS])
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def bpe_tokenizer(texts: Iterator[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on ``texts``; every byte is in the alphabet, so nothing is unknown."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise SelfsupError(
            f"vocab_size {vocab_size} is too small for byte-level BPE: it needs at least "
            f"{len(alphabet) + 1} (256 bytes + {EOS})"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # the tokenizers library raises plain Exceptions
        raise SelfsupError(f"{path}: not a readable tokenizer ({error})") from None


def tokenizer_kind(tokenizer: Tokenizer) -> str:
    return "bpe" if isinstance(tokenizer.pre_tokenizer, pre_tokenizers.ByteLevel) else "char"


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text``; a character the vocabulary lacks is an error, never dropped."""
    ids = tokenizer.encode(text).ids
    if tokenizer_kind(tokenizer) == "char":
        vocab = tokenizer.get_vocab()
        missing = sorted({c for c in text.replace(EOS, "") if c not in vocab})
        if missing:
            raise SelfsupError(
                f"characters not in the vocabulary: {''.join(missing)!r}; "
                "a character-level model knows only the characters of its corpus"
            )
    return ids


def unit_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """Characters (char) or UTF-8 bytes (bpe) each token stands for; EOS counts as one.

    Bits per character / byte = nats / ln 2 / units, comparable across tokenizers.
    """
    lengths = np.ones(tokenizer.get_vocab_size(), dtype=np.int64)
    if tokenizer_kind(tokenizer) == "bpe":  # a byte-level token's string has one char per byte
        for token, index in tokenizer.get_vocab().items():
            if token != EOS:
                lengths[index] = len(token)
    return lengths


class CharEncoder:
    """Vectorised character -> id lookup, equal to the char tokenizer's ``encode``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        vocab = {t: i for t, i in tokenizer.get_vocab().items() if t != EOS}
        points = np.array([ord(c) for c in vocab], dtype=np.int64)
        self.table = np.full(int(points.max()) + 1 if len(points) else 1, -1, dtype=np.int64)
        self.table[points] = np.array(list(vocab.values()), dtype=np.int64)

    def __call__(self, text: str) -> np.ndarray:
        points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
        ids = self.table[np.minimum(points, len(self.table) - 1)]
        bad = (ids < 0) | (points >= len(self.table))
        if bad.any():
            raise SelfsupError(f"character {text[int(np.argmax(bad))]!r} is not in the vocabulary")
        return ids


# ---------------------------------------------------------------------------- shards


@dataclass
class Shards:
    """The tokenized corpus in a cache folder: ``tokens.bin``, ``tokenizer.json``, ``meta.json``."""

    folder: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_file(self) -> Path:
        return self.folder / "tokens.bin"

    @property
    def tokenizer_file(self) -> Path:
        return self.folder / "tokenizer.json"

    @classmethod
    def open(cls, folder: str | Path) -> Shards:
        folder = Path(folder)
        meta_file = folder / "meta.json"
        if not meta_file.is_file():
            raise SelfsupError(f"{folder} holds no token shards (no meta.json)")
        return cls(folder, json.loads(meta_file.read_text(encoding="utf-8")))

    def tokens(self) -> np.ndarray:
        """All tokens as a read-only memory map."""
        return np.memmap(self.tokens_file, dtype=self.meta["dtype"], mode="r",
                         shape=(self.meta["num_tokens"],))

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.tokenizer_file)


def default_text_cache() -> Path:
    """$SELFSUP_CACHE/text if set, else ~/.cache/selfsup/text."""
    env = os.environ.get("SELFSUP_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "selfsup"
    return root / "text"


def build_shards(path: str, options: TextOptions, cache_dir: str | Path | None = None) -> Shards:
    """Tokenize the corpus at ``path`` once; later calls with the same files and options reuse
    it."""
    options.validate()
    source = options.source(path)
    key_options = {"tokenizer": options.tokenizer, "vocab_size": options.vocab_size,
                   "version": SHARD_VERSION}
    key = fingerprint(source, key_options)
    root = Path(cache_dir) / "text" if cache_dir else default_text_cache()
    folder = root / key
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        return Shards.open(folder)
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        meta = _tokenize(source, options, tmp)
        meta["seconds"] = round(time.monotonic() - started, 3)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same corpus first: use theirs
            if not meta_file.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("tokenized %s: %d tokens in %.1f s", path, meta["num_tokens"], meta["seconds"])
    return Shards.open(folder)


def _documents(source: TextSource) -> Iterator[tuple[str, bool]]:
    """(text, ends a document) pieces; an empty corpus is an error."""
    empty = True
    for piece in iter_documents(source):
        empty = empty and not piece.text
        yield piece.text, piece.last
    if empty:
        raise SelfsupError(f"{source.path}: the corpus is empty (no text)")


def _tokenize(source: TextSource, options: TextOptions, folder: Path) -> dict[str, Any]:
    multi = kind_of(source.path) != "txt"  # documents of a folder/jsonl/parquet end with EOS
    if options.tokenizer == "char":
        chars: set[str] = set()
        for text, _ in _documents(source):
            chars.update(text)
        needed = len(chars) + 1
        if options.vocab_size is not None and options.vocab_size < needed:
            raise SelfsupError(
                f"vocab_size {options.vocab_size} is too small for a character-level tokenizer "
                f"of {source.path}: it has {len(chars)} distinct characters (+1 for {EOS})"
            )
        tokenizer = char_tokenizer(sorted(chars))
        char_encoder = CharEncoder(tokenizer)

        def encoded() -> Iterator[np.ndarray]:
            for text, last in _documents(source):
                yield char_encoder(text)
                if last and multi:
                    yield np.array([tokenizer.token_to_id(EOS)])
    else:
        vocab_size = options.vocab_size or 4096
        if vocab_size < 257:  # refuse before reading the corpus
            bpe_tokenizer(iter(()), vocab_size)
        tokenizer = bpe_tokenizer((text for text, _ in _documents(source)), vocab_size)

        def encoded() -> Iterator[np.ndarray]:
            eos = tokenizer.token_to_id(EOS)
            batch: list[tuple[str, bool]] = []
            size = 0
            for text, last in itertools.chain(_documents(source), [("", True)]):  # flushes
                batch.append((text, last))
                size += len(text)
                if size >= _BATCH_CHARS or text == "" and last:
                    for (piece, ends), ids in zip(
                        batch, tokenizer.encode_batch([t for t, _ in batch]), strict=True
                    ):
                        yield np.asarray(ids.ids, dtype=np.int64)
                        if ends and multi and piece:
                            yield np.array([eos])
                    batch, size = [], 0

    vocab = tokenizer.get_vocab_size()
    dtype = "uint16" if vocab <= 1 << 16 else "uint32"
    count = 0
    with open(folder / "tokens.bin", "wb") as handle:
        for ids in encoded():
            handle.write(ids.astype(dtype).tobytes())
            count += len(ids)
    if multi and count and tokenizer.token_to_id(EOS) is not None:
        count -= 1  # the separator after the last document separates nothing
        with open(folder / "tokens.bin", "rb+") as handle:
            handle.truncate(count * np.dtype(dtype).itemsize)
    if count == 0:
        raise SelfsupError(f"{source.path}: the corpus is empty (no tokens)")
    tokenizer.save(str(folder / "tokenizer.json"))
    return {
        "source": str(source.path),
        "num_tokens": count,
        "dtype": dtype,
        "vocab_size": vocab,
        "tokenizer": options.tokenizer,
        "version": SHARD_VERSION,
    }


# ---------------------------------------------------------------------------- training data


def split_point(num_tokens: int, options: TextOptions) -> tuple[int, int]:
    """(end of the training split, end of the validation split) in tokens.

    nanoGPT's convention: train = the first ``1 - val_fraction`` of the tokens, validation = the
    rest. Under ``tuning`` the reported validation split is cut off first and the same rule is
    applied to what remains.
    """
    end = num_tokens
    if options.tuning:
        end = int(num_tokens * (1 - options.val_fraction))
    return int(end * (1 - options.val_fraction)), end


class WindowDataset(torch.utils.data.Dataset):
    """Windows of ``block_size + 1`` tokens inside ``[begin, end)`` of the token memmap.

    Index ``i`` is the window starting at ``begin + i * stride``: the shuffling sampler of the
    engine draws the order (seeded, resumable), so the same seed gives the same windows.
    """

    def __init__(self, tokens: np.ndarray, begin: int, end: int, block_size: int) -> None:
        self.tokens, self.begin, self.block_size = tokens, begin, block_size
        starts = end - begin - block_size  # window starts s with s + block_size + 1 <= end
        if starts < 1:
            raise ValueError("the range is shorter than one window")
        self.stride = math.ceil(starts / MAX_WINDOWS)
        self.count = math.ceil(starts / self.stride)

    def __len__(self) -> int:
        return self.count

    def start(self, index: int) -> int:
        return self.begin + index * self.stride

    def windows(self, positions: list[int] | np.ndarray, length: int) -> torch.Tensor:
        out = np.empty((len(positions), length), dtype=np.int64)
        for row, position in enumerate(positions):
            start = self.start(int(position))
            out[row] = self.tokens[start : start + length]
        return torch.from_numpy(out)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        return {"tokens": self.windows(positions, self.block_size + 1)}

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.windows([position], self.block_size + 1)[0]}


class CorpusData:
    """What both text readers' training data share: an unlabelled corpus, tokenized into
    ``shards`` (whose metadata hold the vocabulary size), trained on through ``train``."""

    modality = "text"
    shards: Any
    train: torch.utils.data.Dataset

    @property
    def vocab_size(self) -> int:
        return int(self.shards.meta["vocab_size"])

    @property
    def num_classes(self) -> int | None:
        return None

    def __len__(self) -> int:
        return len(self.train)


class TokenData(CorpusData):
    """A tokenized corpus as the engine's training data (the ``TrainData`` protocol)."""

    def __init__(self, source: str, shards: Shards, options: TextOptions) -> None:
        self.source = source
        self.shards = shards
        self.options = options
        self.labels: np.ndarray | None = None
        self.skipped: list = []
        self.tokens = shards.tokens()
        self.train_end, self.val_end = split_point(len(self.tokens), options)
        block = options.block_size
        if self.train_end < block + 1:
            raise SelfsupError(
                f"{source}: the training split has {self.train_end} tokens (the first "
                f"{1 - options.val_fraction:.0%} of {len(self.tokens)}), fewer than one context "
                f"window of block_size + 1 = {block + 1}; lower --block-size or add text"
            )
        if self.val_end - self.train_end < 2:
            raise SelfsupError(
                f"{source}: the validation split has {self.val_end - self.train_end} tokens; "
                "it needs at least 2 (add text or raise val_fraction)"
            )
        self.train = WindowDataset(self.tokens, 0, self.train_end, block)

    def validation_tokens(self) -> np.ndarray:
        """The whole validation split (a memmap slice)."""
        return self.tokens[self.train_end : self.val_end]

    def extra(self) -> dict[str, Any]:
        """What the language-model method needs beyond sizes: where the shards and tokenizer are."""
        return {
            "shards": str(self.shards.folder),
            "tokenizer_file": str(self.shards.tokenizer_file),
            "tokenizer": self.options.tokenizer,
            "train_tokens": self.train_end,
            "val_range": [self.train_end, self.val_end],
            "text_options": asdict(self.options),
        }

    def data_info(self) -> DataInfo:
        return DataInfo(vocab_size=self.vocab_size, length=self.options.block_size,
                        extra=self.extra())

    def encoder_inputs(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "block_size": self.options.block_size}

    def encoder_spec(self) -> dict[str, Any]:
        return {"tokenizer": "tokenizer.json", "tokenizer_kind": self.options.tokenizer,
                "block_size": self.options.block_size, "vocab_size": self.vocab_size}

    def batch_dataset(self, with_labels: bool) -> WindowDataset:
        if with_labels:
            raise SelfsupError(f"{self.source}: text has no labels")
        return self.train

    def inputs(self, indices: np.ndarray) -> torch.Tensor:
        """The first ``block_size`` tokens of those training windows, int64 (N, block_size)."""
        return self.train.windows(np.asarray(indices), self.options.block_size)

    def subset(self, indices: np.ndarray, source: str) -> TokenData:
        """The same corpus training on the windows ``indices`` only."""
        data = TokenData(source, self.shards, self.options)
        data.train = WindowSubset(self.train, np.asarray(indices, dtype=np.int64))
        return data


class WindowSubset(WindowDataset):
    """Some windows of a :class:`WindowDataset`, re-indexed from 0."""

    def __init__(self, parent: WindowDataset, indices: np.ndarray) -> None:
        self.tokens, self.begin, self.block_size = parent.tokens, parent.begin, parent.block_size
        self.parent, self.indices = parent, indices
        self.stride, self.count = parent.stride, len(indices)

    def start(self, index: int) -> int:
        return self.parent.start(int(self.indices[index]))


def load_text(path: str, options: dict[str, Any], config: Any) -> TokenData:
    """The token-stream reader (gpt): tokenize (or reuse the cached shards) and wrap as training
    data. The ``text`` reader of the registry (data/documents.py :func:`read_text_data`) calls it
    for methods without a ``framing``; framed ones read selfsup/data/documents.py's sequences.
    """
    text_options = options_dataclass(TextOptions, options or {}, "text data options")
    text_options.validate()
    shards = build_shards(path, text_options, getattr(config, "cache_dir", None))
    return TokenData(path, shards, text_options)
