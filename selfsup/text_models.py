"""Text models as selfsup reads them: a run's ``hf_text`` encoder or a Hugging Face folder, with
its tokenizer; tokenisation that cuts to the model's positions (and counts what it cut); and
sentence features as the model's own pipeline makes them (the encoder pools and normalises as
its starting folder's sentence-transformers modules say: selfsup/models/sentence.py; MiniLM is
mean pooling + L2 normalisation; mean pooling where nothing is declared).

Below ``selfsup.evaluate`` and ``selfsup.loading``, which both use it: the evaluation's probes
and fine-tuning, and ``selfsup.load(...).embed(texts)``, read features the same way.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from selfsup.config import inference_precision
from selfsup.errors import SelfsupError
from selfsup.models.hf_text import (
    HFTextEncoder,
    check_tokenizer,
    hf_text,
    load_hf_config,
    load_hf_tokenizer,
    tokenize,
)
from selfsup.models.sentence import sentence_pooling
from selfsup.run import as_run, load_encoder

log = logging.getLogger("selfsup")


# ---------------------------------------------------------------------------------------------
# Models: a run's encoder or a Hugging Face folder, with its tokenizer


@dataclass
class TextModel:
    """A text encoder (``HFTextEncoder``), its tokenizer and where they came from."""

    encoder: nn.Module
    tokenizer: Any  # tokenizers.Tokenizer
    source: str

    @property
    def max_length(self) -> int:
        return int(self.encoder.max_length)

    @property
    def sentence_length(self) -> int:
        """The tokens it reads a text at unless told otherwise (HFTextEncoder.sentence_length:
        the starting folder's ``max_seq_length``, else the positions up to 512)."""
        return int(getattr(self.encoder, "sentence_length", self.max_length))

    @property
    def pad_id(self) -> int:
        return int(self.encoder.pad_id)

    @property
    def pooling(self) -> dict[str, Any]:
        """How the encoder makes one vector of a text (``{"pooling", "normalize",
        "max_seq_length"}``)."""
        return {"pooling": getattr(self.encoder, "pooling", "mean"),
                "normalize": bool(getattr(self.encoder, "normalize", False)),
                "max_seq_length": getattr(self.encoder, "max_seq_length", None)}

    def fresh(self, seed: int = 0) -> TextModel:
        """The same architecture, pooling and tokenizer, randomly initialised (the from-scratch
        one)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            encoder = hf_text(config=self.encoder.config.to_dict(), **self.pooling)
        return TextModel(encoder, self.tokenizer, f"{self.source} architecture, random init")


def is_hf_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (
        path / "config.yaml").is_file()


def is_text_target(path: str | Path) -> bool:
    """Whether ``selfsup evaluate PATH`` is a text evaluation: a Hugging Face folder, or a run
    whose exported encoder is ``hf_text``."""
    path = Path(path)
    if is_hf_folder(path):
        return True
    spec = path / "encoder.json"
    if not spec.is_file():
        return False
    try:
        loaded = json.loads(spec.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # a damaged encoder.json: load_encoder names it
    return isinstance(loaded, dict) and loaded.get("name") == "hf_text"


def load_folder_model(path: str | Path) -> TextModel:
    """A Hugging Face encoder folder (e.g. MiniLM) with its pretrained weights and tokenizer,
    pooling as the folder's sentence-transformers modules declare (``modules.json``), so that
    probes read the vectors the model's own users get."""
    encoder = HFTextEncoder(load_hf_config(path), **(sentence_pooling(path) or {}))
    encoder.load_weights(path)
    tokenizer = load_hf_tokenizer(path)
    check_tokenizer(tokenizer, encoder.config)
    return TextModel(encoder.eval(), tokenizer, str(path))


def run_init(config: dict[str, Any]) -> str | None:
    """The Hugging Face folder a run's pre-training continued from, if any (config.yaml)."""
    for value in (config.get("init"), (config.get("method_options") or {}).get("init"),
                  (config.get("encoder_options") or {}).get("init")):
        if value:
            return str(value)
    return None


def run_tokenizer(run_path: Path, config: dict[str, Any]) -> Any:
    """The tokenizer a text run trained with: its exported ``hf/`` folder, a ``tokenizer.json``
    in the run, else its ``init`` folder's."""
    for candidate in (run_path / "hf" / "tokenizer.json", run_path / "tokenizer.json"):
        if candidate.is_file():
            return load_hf_tokenizer(candidate)
    init = run_init(config)
    if init and (Path(init) / "tokenizer.json").is_file():
        return load_hf_tokenizer(init)
    raise SelfsupError(
        f"{run_path}: no tokenizer found (hf/tokenizer.json or tokenizer.json in the run)"
    )


def load_run_model(run_path: str | Path) -> tuple[TextModel, dict[str, Any], dict[str, Any]]:
    """(model, encoder spec, config) of a run whose exported encoder is ``hf_text``."""
    run = as_run(run_path)
    encoder, spec = load_encoder(run)
    if spec.get("name") != "hf_text":
        raise SelfsupError(
            f"{run.path}: its encoder is {spec.get('name')!r}; text evaluation needs an "
            "hf_text encoder (methods mlm, span)"
        )
    config = run.read_config()
    tokenizer = run_tokenizer(run.path, config)
    check_tokenizer(tokenizer, encoder.config)
    return TextModel(encoder.eval(), tokenizer, str(run.path)), spec, config


def load_text_model(path: str | Path) -> TextModel:
    """A run directory (hf_text encoder) or a Hugging Face folder, as a :class:`TextModel`."""
    if is_hf_folder(path):
        return load_folder_model(path)
    return load_run_model(path)[0]


# ---------------------------------------------------------------------------------------------
# Tokens and features


@dataclass
class Tokenized:
    """Token ids per text (special tokens included, cut to ``max_length``), unpadded."""

    ids: list[np.ndarray]
    max_length: int
    truncated: int  # how many texts were longer than max_length and were cut

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: np.ndarray | list[int], pad_id: int) -> tuple[torch.Tensor, ...]:
        """(input_ids, attention_mask) of ``rows``, padded to the longest of them."""
        pieces = [self.ids[int(i)] for i in rows]
        width = max((len(p) for p in pieces), default=1)
        ids = torch.full((len(pieces), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(pieces), width), dtype=torch.long)
        for row, piece in enumerate(pieces):
            ids[row, : len(piece)] = torch.from_numpy(piece.astype(np.int64))
            mask[row, : len(piece)] = 1
        return ids, mask


def tokenize_texts(
    model: TextModel, texts: list[str], max_length: int | None = None, *, what: str = "texts",
    chunk: int = 2048,
) -> Tokenized:
    """Tokenise ``texts`` for ``model``, cut to min(max_length, the model's positions), or
    without ``max_length`` to the model's own :attr:`TextModel.sentence_length`; the number of
    cut texts is logged (they are embedded from their first tokens)."""
    limit = (model.sentence_length if max_length is None
             else min(int(max_length), model.max_length))
    if limit < 2:
        raise SelfsupError(f"max_length must be at least 2, not {max_length}")
    ids: list[np.ndarray] = []
    truncated = 0
    for start in range(0, len(texts), chunk):
        batch_ids, mask, cut = tokenize(model.tokenizer, texts[start:start + chunk], limit)
        truncated += cut
        lengths = mask.sum(1).tolist()
        array = batch_ids.numpy().astype(np.int32)
        ids.extend(array[row, :n].copy() for row, n in enumerate(lengths))
    if truncated:
        log.info("%d of %d %s were longer than %d tokens and were truncated", truncated,
                 len(texts), what, limit)
    return Tokenized(ids, limit, truncated)


@torch.inference_mode()
def text_features(
    encoder: nn.Module, tokens: Tokenized, pad_id: int, *, batch_size: int = 64,
    precision: str = "32",
) -> np.ndarray:
    """Sentence embeddings (N, D) float32 as the encoder makes them (pooled, normalised where
    its pipeline says), in eval mode, batches of similar length (sorted by token count, so
    short texts are not padded to long ones; padding never changes a vector)."""
    precision = inference_precision(precision)
    order = np.argsort([len(x) for x in tokens.ids], kind="stable")
    out = np.zeros((len(tokens), int(encoder.embed_dim)), dtype=np.float32)
    was_training = encoder.training
    encoder.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, mask = tokens.batch(rows, pad_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out[rows] = encoder(ids, mask).float().numpy()
    finally:
        encoder.train(was_training)
    return out


def embed_texts(
    model: TextModel, texts: list[str], *, max_length: int | None = None, batch_size: int = 64,
    what: str = "texts",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Features of raw texts and how they were made (truncated count, texts per second)."""
    started = time.monotonic()
    tokens = tokenize_texts(model, texts, max_length, what=what)
    features = text_features(model.encoder, tokens, model.pad_id, batch_size=batch_size)
    seconds = time.monotonic() - started
    return features, {"texts": len(texts), "truncated": tokens.truncated,
                      "max_length": tokens.max_length, "seconds": seconds,
                      "texts_per_s": len(texts) / max(seconds, 1e-9)}


__all__ = ["TextModel", "Tokenized", "embed_texts", "is_hf_folder", "is_text_target",
           "load_folder_model", "load_run_model", "load_text_model", "run_init",
           "run_tokenizer", "text_features", "tokenize_texts"]
