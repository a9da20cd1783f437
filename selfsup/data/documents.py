"""Documents as token sequences for the bidirectional text methods (masked LM, span corruption).

GPT reads one long token stream (selfsup/data/tokens.py); a BERT- or T5-style model instead
sees sequences framed by special tokens, with a tokenizer that is either the starting model's
(``--init PATH``: the folder's ``tokenizer.json``, whose ids the pretrained weights know) or a
WordPiece vocabulary trained here on the corpus (Wu et al. 2016; BERT's scheme).

The corpus may be several files (``--data train.jsonl.gz,unsup.jsonl.gz``), each any source of
:mod:`selfsup.data.text`. It is tokenized once, without special tokens, into a cache folder:
``tokens.bin`` (every document, ``[SEP]`` between documents), ``docs.npy`` (each document's
[start, end) in it), ``tokenizer.json`` and ``meta.json``. Sequences are cut from it in one of
two ways (``packing``):

* ``pack`` (default): consecutive windows of ``block_size - 2`` tokens of the stream, framed
  ``[CLS] ... [SEP]``, crossing document boundaries at a separator: RoBERTa's FULL-SENTENCES
  (Liu et al. 2019, sec. 4.2), which wastes no compute on padding;
* ``document``: one document per sequence, cut at ``block_size`` (the count is logged).

T5-style methods frame a sequence as ``tokens ... </s>`` instead (``[SEP]`` serves as ``</s>``).
A method chooses through class attributes read here: ``framing``, ``extra_special_tokens``,
``required_roles``, ``supports_init`` and ``scratch_config``, and where it has them
``document_defaults`` (reader options it prefers: sentence methods read one document a
sequence) and ``needs_distinct_texts`` (SimCSE: a corpus of one repeated text is refused).
With ``--init`` the encoder pools as the folder's sentence-transformers config says
(selfsup/models/sentence.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from selfsup.config import options_dataclass
from selfsup.data.base import PREPARED_READERS, READERS, DataInfo
from selfsup.data.text import TextSource, fingerprint, iter_documents
from selfsup.data.tokens import CorpusData, default_text_cache, load_text
from selfsup.errors import SelfsupError
from selfsup.models.hf_text import (
    check_tokenizer,
    load_hf_config,
    load_hf_tokenizer,
    wordpiece_tokenizer,
)
from selfsup.models.sentence import sentence_pooling

log = logging.getLogger("selfsup")

#: Bump when tokenization or the cache layout changes, so older caches are not reused.
DOCUMENTS_VERSION = 1
PACKINGS = ("pack", "document")
FRAMINGS = ("cls_sep", "eos")
_BATCH_PIECES = 2048  # pieces per encode_batch call
# Special tokens by role: BERT's names first, then RoBERTa's / T5's.
_ROLE_NAMES = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
}


@dataclass
class DocumentOptions:
    """Reader options of ``mlm`` / ``span`` (``data_options``; CLI ``--block-size`` ...)."""

    tokenizer: str = "wordpiece"  # trained on the corpus; with --init the folder's is used
    vocab_size: int | None = None  # WordPiece size when trained here [8192]
    block_size: int = 128  # tokens per sequence, special tokens included
    packing: str = "pack"  # "pack" (windows across documents) or "document" (one each, cut)
    text_field: str = "text"  # .jsonl
    text_column: str = "text"  # .parquet
    encoding_errors: str = "strict"  # or "replace"
    max_documents: int | None = None  # read only the first N documents (quick trials)

    def validate(self) -> None:
        if self.tokenizer != "wordpiece":
            raise SelfsupError(
                f"tokenizer {self.tokenizer!r}: masked-LM and span methods train a WordPiece "
                "tokenizer (tokenizer=wordpiece) or use the --init folder's tokenizer.json"
            )
        if self.block_size < 4:
            raise SelfsupError(f"block_size must be at least 4, not {self.block_size}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise SelfsupError(f"vocab_size must be positive, not {self.vocab_size}")
        if self.packing not in PACKINGS:
            raise SelfsupError(
                f"packing must be one of {', '.join(PACKINGS)}, not {self.packing!r}"
            )
        if self.max_documents is not None and self.max_documents < 1:
            raise SelfsupError(f"max_documents must be positive, not {self.max_documents}")

    def sources(self, path: str) -> list[TextSource]:
        return [
            TextSource(p, self.text_field, self.text_column, self.encoding_errors)
            for p in split_paths(path)
        ]


def split_paths(path: str) -> list[str]:
    """One path, or several separated by commas (``train.jsonl.gz,unsup.jsonl.gz``).

    A path that exists as written is one path, commas and all.
    """
    if Path(path).exists():
        return [path]
    parts = [part.strip() for part in path.split(",") if part.strip()]
    if not parts:
        raise SelfsupError("no text data given")
    for part in parts:
        if not Path(part).exists():
            raise SelfsupError(f"text data {part} does not exist")
    return parts


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Ids of the special tokens by role (pad, unk, cls, sep, mask), where the vocabulary has
    them."""
    found = {}
    for role, names in _ROLE_NAMES.items():
        for name in names:
            index = tokenizer.token_to_id(name)
            if index is not None:
                found[role] = index
                break
    return found


def all_special_ids(tokenizer: Tokenizer) -> list[int]:
    """Every special token's id: the roles above and any added special token (sentinels)."""
    ids = set(special_ids(tokenizer).values())
    for index, token in tokenizer.get_added_tokens_decoder().items():
        if token.special:
            ids.add(int(index))
    return sorted(ids)


def usable_positions(config: Any) -> int | None:
    """The longest sequence the model's position table allows (None: no fixed limit)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return None
    # RoBERTa-style models number positions from padding_idx + 1 (514 entries, 512 usable).
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        positions -= int(config.pad_token_id or 1) + 1
    return int(positions)


def _cache_root(config: Any) -> Path:
    cache_dir = getattr(config, "cache_dir", None)
    if cache_dir:
        return Path(cache_dir) / "documents"
    return default_text_cache().parent / "documents"


def _sources_key(sources: list[TextSource], extra: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for source in sources:
        digest.update(fingerprint(source, extra).encode())
    return digest.hexdigest()[:20]


def iter_texts(sources: list[TextSource], max_documents: int | None = None) -> Iterator[
    tuple[str, bool]
]:
    """(piece, ends a document) over every source in order, at most ``max_documents``."""
    done = 0
    for source in sources:
        for piece in iter_documents(source):
            yield piece.text, piece.last
            done += piece.last
            if max_documents is not None and done >= max_documents:
                return


def _staged(folder: Path, build) -> None:
    """Build a cache folder in a temporary sibling and move it into place whole."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process built the same folder first: use theirs
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def corpus_tokenizer(
    sources: list[TextSource],
    options: DocumentOptions,
    extra_special: tuple[str, ...],
    config: Any,
) -> Tokenizer:
    """A WordPiece tokenizer trained on the corpus (cached), plus ``extra_special`` tokens."""
    vocab_size = options.vocab_size or 8192
    key = _sources_key(sources, {"tokenizer": "wordpiece", "vocab_size": vocab_size,
                                 "max_documents": options.max_documents,
                                 "version": DOCUMENTS_VERSION})
    folder = _cache_root(config) / "tokenizers" / key
    if not (folder / "meta.json").is_file():
        started = time.monotonic()

        def build(tmp: Path) -> None:
            texts = (text for text, _ in iter_texts(sources, options.max_documents) if text)
            tokenizer = wordpiece_tokenizer(texts, vocab_size)
            tokenizer.save(str(tmp / "tokenizer.json"))
            (tmp / "meta.json").write_text(json.dumps({"vocab_size": vocab_size}) + "\n")

        _staged(folder, build)
        log.info("trained a WordPiece tokenizer (%d tokens) in %.1f s",
                 vocab_size, time.monotonic() - started)
    tokenizer = load_hf_tokenizer(folder / "tokenizer.json")
    if extra_special:
        tokenizer.add_special_tokens(list(extra_special))
    return tokenizer


@dataclass
class DocumentShards:
    """The tokenized corpus: ``tokens.bin``, ``docs.npy``, ``tokenizer.json``, ``meta.json``."""

    folder: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, folder: Path) -> DocumentShards:
        return cls(folder, json.loads((folder / "meta.json").read_text(encoding="utf-8")))

    @property
    def tokenizer_file(self) -> Path:
        return self.folder / "tokenizer.json"

    def tokens(self) -> np.ndarray:
        return np.memmap(self.folder / "tokens.bin", dtype=self.meta["dtype"], mode="r",
                         shape=(self.meta["num_tokens"],))

    def documents(self) -> np.ndarray:
        """(N, 2) int64: each document's [start, end) in ``tokens``."""
        return np.load(self.folder / "docs.npy", mmap_mode="r")


def build_document_shards(
    sources: list[TextSource], tokenizer: Tokenizer, options: DocumentOptions, config: Any
) -> DocumentShards:
    """Tokenize every document once (no special tokens); later calls reuse the cache."""
    text = tokenizer.to_str()
    key = _sources_key(sources, {"tokenizer_sha": hashlib.sha256(text.encode()).hexdigest(),
                                 "max_documents": options.max_documents,
                                 "version": DOCUMENTS_VERSION})
    folder = _cache_root(config) / "shards" / key
    if (folder / "meta.json").is_file():
        return DocumentShards.open(folder)
    started = time.monotonic()
    plain = Tokenizer.from_str(text)  # settings below must not leak out
    plain.no_truncation()
    plain.no_padding()
    separator = special_ids(plain)["sep"]
    dtype = "uint16" if plain.get_vocab_size() <= 1 << 16 else "uint32"

    def build(tmp: Path) -> None:
        bounds: list[tuple[int, int]] = []
        count, current = 0, 0  # tokens written; tokens of the current document so far
        empty = 0
        with open(tmp / "tokens.bin", "wb") as handle:
            batch: list[tuple[str, bool]] = []

            def flush() -> None:
                nonlocal count, current, empty
                encodings = plain.encode_batch([t for t, _ in batch], add_special_tokens=False)
                for (_, last), encoding in zip(batch, encodings, strict=True):
                    ids = encoding.ids
                    if ids and current == 0 and bounds:  # a new document after an earlier one
                        handle.write(np.array([separator], dtype=dtype).tobytes())
                        count += 1
                    handle.write(np.asarray(ids, dtype=dtype).tobytes())
                    count += len(ids)
                    current += len(ids)
                    if last:
                        if current:
                            bounds.append((count - current, count))
                        else:
                            empty += 1
                        current = 0
                batch.clear()

            for piece in iter_texts(sources, options.max_documents):
                batch.append(piece)
                if len(batch) >= _BATCH_PIECES:
                    flush()
            if batch:
                flush()
        if not bounds:
            raise SelfsupError(f"{', '.join(s.path for s in sources)}: the corpus is empty "
                               "(no tokens)")
        np.save(tmp / "docs.npy", np.asarray(bounds, dtype=np.int64))
        plain.save(str(tmp / "tokenizer.json"))
        meta = {"sources": [s.path for s in sources], "num_tokens": count, "dtype": dtype,
                "documents": len(bounds), "empty_documents": empty,
                "vocab_size": plain.get_vocab_size(), "version": DOCUMENTS_VERSION,
                "seconds": round(time.monotonic() - started, 3)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    _staged(folder, build)
    shards = DocumentShards.open(folder)
    log.info("tokenized %d documents: %d tokens in %.1f s", shards.meta["documents"],
             shards.meta["num_tokens"], shards.meta["seconds"])
    return shards


class SequenceDataset(torch.utils.data.Dataset):
    """Framed sequences cut from the shards; a batch is padded to its longest sequence.

    Item ``i`` is window ``i`` of the stream (``pack``) or document ``i`` (``document``).
    """

    def __init__(
        self,
        shards: DocumentShards,
        block_size: int,
        packing: str,
        framing: str,
        ids: dict[str, int],
    ) -> None:
        self.tokens = shards.tokens()
        self.docs = np.asarray(shards.documents())
        self.packing, self.framing = packing, framing
        self.prefix = [ids["cls"]] if framing == "cls_sep" else []
        self.suffix = [ids["sep"]]
        self.pad = ids.get("pad", 0)
        self.content = block_size - len(self.prefix) - len(self.suffix)
        if packing == "pack":
            self.count = -(-len(self.tokens) // self.content)
        else:
            self.count = len(self.docs)
        self.indices: np.ndarray | None = None  # a subset's windows

    def __len__(self) -> int:
        return self.count if self.indices is None else len(self.indices)

    def content_of(self, position: int) -> np.ndarray:
        index = int(position if self.indices is None else self.indices[position])
        if self.packing == "pack":
            start = index * self.content
            return np.asarray(self.tokens[start : start + self.content], dtype=np.int64)
        start, end = self.docs[index]
        return np.asarray(self.tokens[start : min(end, start + self.content)], dtype=np.int64)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = [self.prefix + self.content_of(p).tolist() + self.suffix for p in positions]
        width = max(len(row) for row in rows)
        ids = np.full((len(rows), width), self.pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}

    def subset(self, indices: np.ndarray) -> SequenceDataset:
        view = object.__new__(SequenceDataset)
        view.__dict__.update(self.__dict__)
        base = np.arange(self.count) if self.indices is None else self.indices
        view.indices = base[np.asarray(indices, dtype=np.int64)]
        return view


class DocumentData(CorpusData):
    """The corpus as training data of a masked-LM / span method (the ``TrainData`` protocol)."""

    def __init__(
        self,
        source: str,
        shards: DocumentShards,
        options: DocumentOptions,
        model_config: Any,
        framing: str,
        init: str | None,
    ) -> None:
        self.source, self.shards, self.options = source, shards, options
        self.model_config, self.framing, self.init = model_config, framing, init
        # How the starting model makes one vector of its tokens (MiniLM: mean + normalise).
        self.pooling = (sentence_pooling(init) if init else None) or {}
        self.labels: np.ndarray | None = None
        self.skipped: list = []
        tokenizer = Tokenizer.from_file(str(shards.tokenizer_file))
        self.special = special_ids(tokenizer)
        self.special_token_ids = all_special_ids(tokenizer)
        self.train = SequenceDataset(shards, options.block_size, options.packing, framing,
                                     self.special)
        self._log_lengths()

    def _log_lengths(self) -> None:
        docs = self.train.docs
        longer = int(((docs[:, 1] - docs[:, 0]) > self.train.content).sum())
        if not longer:
            return
        if self.options.packing == "document":
            log.info("%d of %d documents are longer than %d tokens (block_size %d with its "
                     "special tokens) and were truncated", longer, len(docs),
                     self.train.content, self.options.block_size)
        else:
            log.info("%d of %d documents are longer than a window of %d tokens and continue "
                     "across windows (packing)", longer, len(docs), self.train.content)

    def extra(self) -> dict[str, Any]:
        return {
            "tokenizer_file": str(self.shards.tokenizer_file),
            "special_ids": dict(self.special),
            "special_token_ids": list(self.special_token_ids),
            "framing": self.framing,
            "init": self.init,
            "text_options": asdict(self.options),
        }

    def data_info(self) -> DataInfo:
        return DataInfo(vocab_size=self.vocab_size, length=self.options.block_size,
                        extra=self.extra())

    def encoder_inputs(self) -> dict[str, Any]:
        return {"config": self.model_config.to_dict(), **self.pooling}

    def encoder_spec(self) -> dict[str, Any]:
        return {"tokenizer": "tokenizer.json", "tokenizer_kind": "wordpiece" if self.init is None
                else "init", "block_size": self.options.block_size,
                "vocab_size": self.vocab_size, "init": self.init}

    def batch_dataset(self, with_labels: bool) -> SequenceDataset:
        if with_labels:
            raise SelfsupError(f"{self.source}: this text has no labels")
        return self.train

    def inputs(self, indices: np.ndarray) -> torch.Tensor:
        """Token ids (N, T) of those sequences, padded (the pad id marks what to ignore)."""
        return self.train.__getitems__(list(np.asarray(indices)))["input_ids"]

    def subset(self, indices: np.ndarray, source: str) -> DocumentData:
        data = object.__new__(DocumentData)
        data.__dict__.update(self.__dict__)
        data.source = source
        data.train = self.train.subset(indices)
        return data


def check_distinct(shards: DocumentShards, source: str) -> None:
    """Refuse a corpus whose documents are all one text; warn when many are repeats (for
    in-batch contrast a repeat in the same batch is a false negative)."""
    tokens, docs = shards.tokens(), np.asarray(shards.documents())
    seen = {hashlib.blake2b(tokens[a:b].tobytes(), digest_size=16).digest() for a, b in docs}
    if len(docs) > 1 and len(seen) < 2:
        raise SelfsupError(f"{source}: all {len(docs)} texts are identical; a contrastive method "
                           "learns by telling texts apart: give a corpus of different texts")
    repeats = len(docs) - len(seen)
    if repeats > 0.1 * len(docs):
        log.warning("%s: %d of %d texts repeat another; a repeat in the same batch is a false "
                    "negative for in-batch contrast (deduplicate the corpus)", source, repeats,
                    len(docs))


def load_documents(path: str, options: dict[str, Any], config: Any, method: Any) -> DocumentData:
    """The reader of the masked-LM / span methods: tokenizer, model config and sequences.

    ``method`` is the method class that trains on them (given by the caller, never looked up):
    its ``framing``, ``extra_special_tokens``, ``required_roles``, ``supports_init`` and
    ``scratch_config`` say how the sequences are built.
    """
    # Methods without reader preferences (mlm, span) declare none.
    preferred = getattr(method, "document_defaults", {})
    doc_options = options_dataclass(DocumentOptions, {**preferred, **(options or {})},
                                    "text data options")
    doc_options.validate()
    sources = doc_options.sources(path)
    init = getattr(config, "init", None)
    framing = method.framing
    if init:
        if not method.supports_init:
            raise SelfsupError(f"method {config.method!r} trains from scratch; --init is for mlm")
        if options and "vocab_size" in options:
            raise SelfsupError("--vocab-size trains a tokenizer; with --init the folder's "
                               "tokenizer is used (leave --vocab-size out)")
        model_config = load_hf_config(init)
        tokenizer = load_hf_tokenizer(init)
        check_tokenizer(tokenizer, model_config)
    else:
        tokenizer = corpus_tokenizer(sources, doc_options, method.extra_special_tokens, config)
        model_config = None
    ids = special_ids(tokenizer)
    needed = ("cls", "sep") if framing == "cls_sep" else ("sep",)
    missing = [role for role in (*needed, *method.required_roles) if role not in ids]
    if missing:
        raise SelfsupError(
            f"tokenizer/model mismatch: the tokenizer has no "
            f"{', '.join(_ROLE_NAMES[r][0] for r in missing)} token, which method "
            f"{config.method!r} needs"
        )
    if model_config is None:
        model_config = method.scratch_config(
            tokenizer.get_vocab_size(with_added_tokens=True), doc_options.block_size, ids,
            dict(config.method_options),
        )
        check_tokenizer(tokenizer, model_config)
    positions = usable_positions(model_config)
    if positions is not None and doc_options.block_size > positions:
        log.warning("block_size %d is longer than the model's %d positions; using %d",
                    doc_options.block_size, positions, positions)
        doc_options.block_size = positions
    shards = build_document_shards(sources, tokenizer, doc_options, config)
    if getattr(method, "needs_distinct_texts", False):
        check_distinct(shards, path)
    return DocumentData(path, shards, doc_options, model_config, framing, init)


def read_text_data(
    path: str, options: dict[str, Any], config: Any, method: Any = None
) -> DocumentData | Any:
    """The ``text`` reader of the registry: framed sequences (:func:`load_documents`) for a
    method that declares a ``framing`` (masked LM, span corruption), else the token stream of
    selfsup/data/tokens.py (gpt, and any caller that names no method)."""
    if getattr(method, "framing", None) is not None:
        return load_documents(path, options, config, method)
    return load_text(path, options, config)


def _read_prepared_text(path: str, config: Any, method: Any = None) -> Any:
    """A prepared corpus: the text readers stream its documents (TextShards, via data/text.py)."""
    return read_text_data(str(path), dict(getattr(config, "data_options", None) or {}), config,
                          method)


if "text" not in READERS:
    READERS.register("text")(read_text_data)
    PREPARED_READERS.register("text")(_read_prepared_text)


__all__ = [
    "DocumentData",
    "DocumentOptions",
    "SequenceDataset",
    "all_special_ids",
    "check_distinct",
    "load_documents",
    "read_text_data",
    "special_ids",
    "split_paths",
    "usable_positions",
]
