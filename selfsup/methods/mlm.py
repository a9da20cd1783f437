"""Masked language modelling: BERT's pretext task, from scratch or continued from a local model.

Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", sec. 3.1: select 15% of the tokens; of those, replace 80% by ``[MASK]``, 10% by
a random token and leave 10% unchanged, and predict the original token at every selected
position. The unchanged and random ones keep the model from learning that only ``[MASK]``
positions matter, since fine-tuning never shows it ``[MASK]``. Special tokens (``[CLS]``,
``[SEP]``, ``[PAD]``) are never selected. Whole-word masking (the later BERT release) selects
every WordPiece of a word together (a word is a piece plus the ``##`` pieces after it), so the
model cannot fill in a word from its own other half.

The encoder is a ``transformers`` model behind selfsup's ``hf_text`` encoder: a small BERT from
scratch, or, with ``--init PATH``, any local Hugging Face encoder folder whose weights, and
masked-LM head when it has one, are loaded (continued, "domain-adaptive" pre-training,
Gururangan et al. 2020). The loss is computed on the selected positions only, so the
vocabulary-sized output layer costs 15% of what a full-sequence head would. After training the
run holds, beside the selfsup encoder, ``tokenizer.json`` and ``hf/``: the whole masked-LM model
and its tokenizer as ``transformers.AutoModelForMaskedLM.from_pretrained`` reads them (from a
sentence-transformers start, also a sentence-transformers folder that pools as the start did).

A sentence-embedding model (a sentence-transformers folder, or weights without a masked-LM
head, such as MiniLM) is trained on with a warning rather than refused: mlm must fit a random
head to it, which on MiniLM/IMDB cost 2.6 points fine-tuned at 100 labels per class and crowded
its embeddings together (benchmarks/results/imdb_finetune_diagnosis.md); the warning names
``simcse`` and ``tsdae``, the objectives made for such models (selfsup/methods/simcse.py,
tsdae.py). A warning, not a refusal, because mlm on such a model is a legitimate experiment.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from selfsup import atomic
from selfsup.config import options_dataclass
from selfsup.errors import SelfsupError
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.registry import METHODS
from selfsup.models.hf_text import (
    load_hf_tokenizer,
    mean_pool,
    quiet_transformers,
    save_hf_folder,
    small_bert_config,
)

if TYPE_CHECKING:
    from selfsup.run import RunDir

log = logging.getLogger("selfsup")

IGNORE = -100  # label of a position that is not predicted (PyTorch's cross-entropy default)


@dataclass
class MLMOptions:
    mask_prob: float = 0.15  # share of (non-special) tokens selected for prediction
    replace_mask: float = 0.8  # of the selected: replaced by [MASK]
    replace_random: float = 0.1  # of the selected: replaced by a random token (rest unchanged)
    whole_word: bool = False  # select all WordPiece pieces of a word together
    # The model trained from scratch (ignored with --init): a BERT of layers x dim.
    dim: int = 256
    layers: int = 4
    heads: int = 4
    dropout: float = 0.1
    # Share of the run (0-1) in which only the masked-LM head learns: the encoder, and the input
    # embeddings tied to the head's output layer, stay frozen. With --init from a folder without
    # a head, a new random head otherwise sends noise into the pretrained encoder at first;
    # fitting the head first is the idea of LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort
    # Pretrained Features"). Not with several processes (DDP keeps a fixed set of trained weights).
    head_warmup: float = 0.0

    def validate(self) -> None:
        if not 0 <= self.head_warmup < 1:
            raise SelfsupError(f"head_warmup must be in [0, 1), not {self.head_warmup}")
        if not 0 < self.mask_prob < 1:
            raise SelfsupError(f"mask_prob must be in (0, 1), not {self.mask_prob}")
        for name in ("replace_mask", "replace_random", "dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise SelfsupError(f"{name} must be in [0, 1], not {getattr(self, name)}")
        if self.replace_mask + self.replace_random > 1:
            raise SelfsupError(
                f"replace_mask + replace_random must be at most 1, not "
                f"{self.replace_mask + self.replace_random}"
            )
        for name in ("dim", "layers", "heads"):
            if getattr(self, name) < 1:
                raise SelfsupError(f"{name} must be positive, not {getattr(self, name)}")
        if self.dim % self.heads:
            raise SelfsupError(f"dim {self.dim} must split into {self.heads} heads")


def continuation_table(tokenizer: Any, size: int) -> torch.Tensor:
    """Bool (size,): which token ids are WordPiece continuations (``##`` pieces)."""
    from tokenizers import models

    if not isinstance(tokenizer.model, models.WordPiece):
        raise SelfsupError(
            "whole_word masking needs a WordPiece tokenizer (pieces marked '##'); this "
            f"tokenizer is {type(tokenizer.model).__name__}"
        )
    prefix = tokenizer.model.continuing_subword_prefix or "##"
    table = torch.zeros(size, dtype=torch.bool)
    for token, index in tokenizer.get_vocab(with_added_tokens=False).items():
        if token.startswith(prefix) and len(token) > len(prefix) and index < size:
            table[index] = True
    return table


def mask_tokens(
    input_ids: torch.Tensor,
    special_ids: torch.Tensor,
    mask_id: int,
    random_ids: torch.Tensor,
    generator: torch.Generator,
    mask_prob: float = 0.15,
    replace_mask: float = 0.8,
    replace_random: float = 0.1,
    continuation: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of ``input_ids`` (B, T): (corrupted inputs, labels).

    ``labels`` hold the original id where a token was selected and ``IGNORE`` elsewhere.
    ``special_ids`` are never selected (padding included); random replacements are drawn from
    ``random_ids``. With ``continuation`` (a bool per vocabulary id, True for ``##`` pieces)
    whole words are selected: each word draws once, at its first piece. Random numbers come
    from ``generator`` (on the CPU), so a seeded run masks the same way on any device.
    """
    device = input_ids.device
    ids = input_ids.cpu()
    selectable = ~torch.isin(ids, special_ids.cpu())
    draw = torch.rand(ids.shape, generator=generator)
    if continuation is not None:
        # A word starts at every piece that is not a continuation (special tokens start one
        # too); each position takes the draw of the start of its word.
        starts = ~continuation.cpu()[ids] | ~selectable
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        word_start = torch.cummax(torch.where(starts, positions, 0), dim=1).values
        draw = draw.gather(1, word_start)
    selected = (draw < mask_prob) & selectable
    choice = torch.rand(ids.shape, generator=generator)
    to_mask = selected & (choice < replace_mask)
    to_random = selected & (choice >= replace_mask) & (choice < replace_mask + replace_random)
    random = random_ids.cpu()[torch.randint(len(random_ids), ids.shape, generator=generator)]
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random, inputs)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    return inputs.to(device), labels.to(device)


def is_sentence_encoder(init: str | None) -> bool:
    """Whether ``init`` is a sentence-transformers folder (it has a ``modules.json``)."""
    return bool(init) and (Path(str(init)) / "modules.json").is_file()


def masked_lm_model(encoder: Any, init: str | None) -> Any:
    """A ``transformers`` masked-LM model whose base model *is* ``encoder.model`` (shared).

    With ``init`` its weights (and head, where the folder has one) come from that folder; the
    encoder's weights are replaced by the folder's.
    """
    from transformers import AutoModelForMaskedLM


    quiet_transformers()
    config = encoder.config
    if type(config) not in AutoModelForMaskedLM._model_mapping:
        raise SelfsupError(
            f"method 'mlm' needs a model type with a masked-LM head; {config.model_type!r} "
            "has none in transformers"
        )
    if init:
        try:
            model, info = AutoModelForMaskedLM.from_pretrained(
                init, config=config, output_loading_info=True
            )
        except (OSError, ValueError, RuntimeError) as error:
            raise SelfsupError(f"{init}: could not load the model weights ({error})") from None
        prefix = model.base_model_prefix
        head_missing = [k for k in info["missing_keys"] if not k.startswith(f"{prefix}.")]
        base_missing = [k for k in info["missing_keys"] if k.startswith(f"{prefix}.")]
        if base_missing:
            raise SelfsupError(
                f"{init}: the weights lack {len(base_missing)} encoder tensors (e.g. "
                f"{base_missing[0]}); is it the model its config.json describes?"
            )
        if head_missing:
            log.info("%s has no masked-LM head; a new one is initialised (%d tensors)",
                     init, len(head_missing))
        else:
            log.info("%s: encoder and masked-LM head loaded", init)
        if head_missing or is_sentence_encoder(init):
            why = ("a sentence-transformers model" if is_sentence_encoder(init)
                   else "its weights have no masked-LM head")
            log.warning(
                "%s looks like a sentence-embedding model (%s): mlm trains a new random "
                "masked-LM head and tends to crowd its sentence embeddings together; simcse or "
                "tsdae are the objectives made for sentence encoders (selfsup pretrain simcse "
                "--init ...). mlm suits models pre-trained with it (a BERT with its head)",
                init, why)
        encoder.model.load_state_dict(getattr(model, prefix).state_dict())
    else:
        model = AutoModelForMaskedLM.from_config(config)
        prefix = model.base_model_prefix
    setattr(model, prefix, encoder.model)
    model.tie_weights()
    return model.train()  # from_pretrained returns eval mode: dropout off; training wants it


@METHODS.register("mlm")
class MLMMethod(Method):
    """Masked-token cross-entropy on the selected positions of ``[CLS] ... [SEP]`` sequences."""

    Options: ClassVar[type] = MLMOptions
    # modality and config defaults: selfsup/catalog.py (what --help shows without torch)
    default_encoder: ClassVar[str] = "hf_text"
    baseline_method: ClassVar[str | None] = None  # text evaluation trains from scratch
    # What the document reader (selfsup/data/documents.py) asks of this method.
    framing: ClassVar[str] = "cls_sep"
    extra_special_tokens: ClassVar[tuple[str, ...]] = ()
    required_roles: ClassVar[tuple[str, ...]] = ("mask",)
    supports_init: ClassVar[bool] = True

    @classmethod
    def scratch_config(
        cls, vocab_size: int, block_size: int, ids: dict[str, int], options: dict[str, Any]
    ) -> Any:
        """The BERT trained when there is no --init: sized by the method options."""

        opts = options_dataclass(MLMOptions, options, "options of method MLMMethod")
        opts.validate()
        return small_bert_config(
            vocab_size, dim=opts.dim, layers=opts.layers, heads=opts.heads,
            max_length=block_size, pad_token_id=ids.get("pad", 0), dropout=opts.dropout,
        )

    def __init__(self, encoder, info, options=None, augment_options=None, channels_last=False):
        super().__init__(encoder, info, options, augment_options, channels_last)
        self.options.validate()
        if not hasattr(encoder, "tokens") or not hasattr(encoder, "model"):
            raise SelfsupError("method 'mlm' needs a Hugging Face text encoder (hf_text)")
        extra = info.extra
        if "special_ids" not in extra:
            raise SelfsupError("method 'mlm' trains on text read by its document reader")

        tokenizer = load_hf_tokenizer(extra["tokenizer_file"])
        vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        if vocab > encoder.config.vocab_size:
            raise SelfsupError(
                f"tokenizer/model mismatch: the tokenizer has {vocab} tokens but the model's "
                f"vocabulary holds {encoder.config.vocab_size}"
            )
        self.mask_id = int(extra["special_ids"]["mask"])
        special = torch.tensor(extra["special_token_ids"], dtype=torch.long)
        normal = torch.ones(vocab, dtype=torch.bool)
        normal[special[special < vocab]] = False
        self.register_buffer("special_ids", special, persistent=False)
        self.register_buffer("random_ids", normal.nonzero().flatten(), persistent=False)
        self.continuation = (
            continuation_table(tokenizer, vocab) if self.options.whole_word else None
        )
        self.init = extra.get("init")
        self.mlm = masked_lm_model(encoder, self.init)

    def on_train_step_start(self, progress: float) -> None:
        self.freeze_encoder(progress < self.options.head_warmup, "masked-LM head")

    @property
    def head(self) -> torch.nn.Module | None:
        """The masked-LM head as one module (BERT's ``cls``, RoBERTa's ``lm_head``), if any."""
        for name in ("cls", "lm_head"):
            if isinstance(getattr(self.mlm, name, None), torch.nn.Module):
                return getattr(self.mlm, name)
        return None

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:

        ids, attention = batch["input_ids"], batch["attention_mask"]
        o = self.options
        inputs, labels = mask_tokens(
            ids, self.special_ids, self.mask_id, self.random_ids, generator,
            o.mask_prob, o.replace_mask, o.replace_random, self.continuation,
        )
        selected = labels != IGNORE
        if self.head is not None:
            hidden = self.encoder.tokens(inputs, attention)
            logits = self.head(hidden[selected])
        else:  # a head that is not one module: the model's own forward
            out = self.mlm(input_ids=inputs, attention_mask=attention, output_hidden_states=True)
            hidden, logits = out.hidden_states[-1], out.logits[selected]
        if selected.any():
            loss = F.cross_entropy(logits.float(), labels[selected])
            accuracy = (logits.argmax(-1) == labels[selected]).float().mean()
        else:  # nothing selected in this batch (tiny batches): no signal, but a graph
            loss = logits.sum() * 0.0  # through the head, which trains even in head_warmup
            accuracy = torch.zeros(())
        return StepOutput(
            loss=loss,
            embeddings=mean_pool(hidden.detach(), attention),
            logs={"masked_accuracy": accuracy.detach()},
        )

    def on_fit_end(self, run: RunDir) -> None:
        """``tokenizer.json`` and ``hf/`` (the masked-LM model + tokenizer) in the run; from a
        sentence-transformers start ``hf/`` is also one, pooling as the start did."""
        sentence = self.encoder.sentence_config() if is_sentence_encoder(self.init) else None
        write_hf_export(run, self.info.extra["tokenizer_file"], self.mlm, sentence)


def write_hf_export(run: RunDir, tokenizer_file: str, model: Any,
                    sentence: dict[str, Any] | None = None) -> None:
    """``tokenizer.json`` and ``hf/`` in the run; with ``sentence`` (how the encoder pools)
    ``hf/`` is also a sentence-transformers folder."""
    with atomic.atomic_path(run.path / "tokenizer.json") as tmp:
        shutil.copyfile(tokenizer_file, tmp)
    tokenizer = load_hf_tokenizer(tokenizer_file)
    was_training = model.training
    save_hf_folder(model.eval(), tokenizer, run.path / "hf", sentence)
    model.train(was_training)
    log.info("Hugging Face model written to %s", run.path / "hf")
