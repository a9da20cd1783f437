"""TSDAE: rebuild a text from the sentence embedding of a damaged copy.

Wang, Reimers, Gurevych. "TSDAE: Using Transformer-based Sequential Denoising Auto-Encoder for
Unsupervised Sentence Embedding Learning", Findings of EMNLP 2021. Each text loses tokens at
random (deletion, ratio 0.6, the paper's best); the encoder turns the damaged text into one
vector; a decoder must write the original back, token by token, reading the text only through
that vector (its cross-attention's keys and values, sec. 3, eq. 3). The loss is the
reconstruction's cross-entropy; batch 8 and lr 3e-5 from a pretrained start, the paper's.

Departures, and why: by default the decoder is light (``decoder=light``: one fresh causal layer)
so that CPU minutes go into the encoder; ``decoder=tied`` is the paper's: the encoder made
causal, cross-attention added, every other weight shared. Either reads and writes words through
the encoder's word table. Deletion is per WordPiece token; special tokens are never deleted and
each text keeps at least one (as sentence-transformers does). Pooling: the starting model's.

Two more, which a fresh decoder on a pretrained, normalised encoder needs (chosen on held-out
IMDB train reviews, never test: benchmarks/tsdae_spread.py). ``memory_norm``: the decoder reads
LayerNorm(vector); MiniLM's vector has length 1, a twentieth of the decoder's token states, and
read raw the encoder's spread fell (effective rank 273 -> 71). ``decoder_warmup``: only the
decoder trains for the first quarter (LP-FT's idea, Kumar et al. 2022), so its first, noisy
errors never reach the encoder: rank 191, linear probe +3.8. ``anchor`` 0.2: a pull to the
start's vector of each text (L2-SP's idea, on outputs) keeps the rank (259 of 273), linear +1.9.
Tried there, not taken: ``center_memory`` (vector - batch mean), ``word_grad=False``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import SelfsupError
from selfsup.methods.base import StepOutput
from selfsup.methods.heads import SentenceDecoder, tied_decoder
from selfsup.methods.registry import METHODS
from selfsup.methods.sentence_base import SentenceMethod, SentenceOptions


@dataclass
class TSDAEOptions(SentenceOptions):
    deletion_ratio: float = 0.6  # share of (non-special) tokens deleted, the paper's
    decoder: str = "light"  # light: fresh layers; tied: the encoder's own, causal (module doc)
    decoder_layers: int = 1  # of the light decoder
    decoder_heads: int | None = None  # of the light decoder; None: the encoder's
    memory_norm: bool = True  # the decoder reads LayerNorm(vector) (module docstring)
    decoder_warmup: float = 0.25  # share of the run in which only the decoder trains (ditto)
    center_memory: bool = False  # it reads vector - batch mean (ditto; the form before these)
    word_grad: bool = True  # the decoder's reading and writing train the shared word table
    anchor: float = 0.2  # weight of 1 - cos(vector, the starting model's vector of the text)


def delete_tokens(ids: torch.Tensor, mask: torch.Tensor, special_ids: torch.Tensor, ratio: float,
                  generator: torch.Generator, pad_id: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Delete each non-special real token with probability ``ratio`` (at least one kept per
    text that has any), close the gaps: (damaged ids, their attention mask), right-padded."""
    cpu_ids, cpu_mask = ids.cpu(), mask.cpu().bool()
    deletable = cpu_mask & ~torch.isin(cpu_ids, special_ids.cpu())
    delete = (torch.rand(ids.shape, generator=generator) < ratio) & deletable
    emptied = deletable.any(1) & (deletable & ~delete).sum(1).eq(0)
    if emptied.any():  # keep one random deletable token of each text that lost all of them
        draw = torch.rand(ids.shape, generator=generator).masked_fill(~deletable, -1.0)
        rows = emptied.nonzero().flatten()
        delete[rows, draw[rows].argmax(1)] = False
    keep = cpu_mask & ~delete
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # kept ones first
    damaged = torch.where(keep, cpu_ids, pad_id).gather(1, order)
    new_mask = keep.gather(1, order)
    width = max(int(new_mask.sum(1).max()), 1)
    return damaged[:, :width].to(ids.device), new_mask[:, :width].long().to(ids.device)


@METHODS.register("tsdae")
class TSDAE(SentenceMethod):
    """Deletion noise -> sentence vector -> a decoder rebuilds the original tokens."""

    Options: ClassVar[type] = TSDAEOptions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        o, config = self.options, self.encoder.config
        checks = {"deletion_ratio": (0 < o.deletion_ratio < 1, "in (0, 1)"),
                  "decoder_warmup": (0 <= o.decoder_warmup < 1, "in [0, 1)"),
                  "anchor": (o.anchor >= 0, "at least 0"),
                  "decoder": (o.decoder in ("light", "tied"), "light or tied")}
        for name, (ok, valid) in checks.items():
            if not ok:
                raise SelfsupError(f"tsdae {name} must be {valid}, not {getattr(o, name)!r}")
        dim, words = self.encoder.embed_dim, self.word_embeddings().shape[1]
        if words != dim:
            raise SelfsupError(f"tsdae ties its decoder to the encoder's word embeddings; this "
                               f"model's are {words} wide and its states {dim}")
        heads = o.decoder_heads or int(getattr(config, "num_attention_heads", 0) or 4)
        if dim % heads:
            raise SelfsupError(f"decoder_heads {heads} must divide the encoder's width {dim}")
        self.decoder = (tied_decoder(self.encoder.model) if o.decoder == "tied" else
                        SentenceDecoder(dim, o.decoder_layers, heads, int(self.info.length)))
        self.memory_norm = nn.LayerNorm(dim) if o.memory_norm else None
        self.output_bias = nn.Parameter(torch.zeros(self.word_embeddings().shape[0]))
        anchored = o.anchor and self.init  # from scratch there is no start worth keeping
        self.start = copy.deepcopy(self.encoder).requires_grad_(False) if anchored else None
        self.register_buffer("special_ids", torch.tensor(self.info.extra["special_token_ids"],
                                                         dtype=torch.long), persistent=False)

    def on_train_step_start(self, progress: float) -> None:
        self.freeze_encoder(progress < self.options.decoder_warmup, "tsdae decoder")

    def word_embeddings(self) -> torch.Tensor:
        return self.encoder.model.get_input_embeddings().weight

    def reconstruct(self, sentence: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of every real next token (N, vocab), their targets (N,)) when the decoder,
        fed ``ids`` shifted right, rebuilds ``ids`` from ``sentence`` (B, D) alone."""
        words = self.word_embeddings()
        words = words if self.options.word_grad else words.detach()
        inputs, targets, real = ids[:, :-1], ids[:, 1:], mask[:, 1:].bool()
        if self.options.center_memory and len(sentence) > 1:
            sentence = sentence - sentence.mean(0, keepdim=True)
        if self.memory_norm is not None:
            sentence = self.memory_norm(sentence)
        if self.options.decoder == "tied":
            states = self.decoder(input_ids=inputs, attention_mask=mask[:, :-1],
                                  encoder_hidden_states=sentence.unsqueeze(1)).last_hidden_state
        else:
            states = self.decoder(F.embedding(inputs, words), ~mask[:, :-1].bool(), sentence)
        return states[real] @ words.T + self.output_bias, targets[real]

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        damaged, damaged_mask = delete_tokens(ids, mask, self.special_ids,
                                              self.options.deletion_ratio, generator,
                                              self.encoder.pad_id)
        sentence = self.encoder(damaged, damaged_mask)
        logits, targets = self.reconstruct(sentence, ids, mask)
        loss = F.cross_entropy(logits.float(), targets)
        if self.start is not None:  # stay near where the starting model put the text
            with torch.no_grad():
                before = self.start.eval()(damaged, damaged_mask)
            loss = loss + self.options.anchor * (
                1 - F.cosine_similarity(sentence.float(), before.float()).mean())
        accuracy = (logits.argmax(-1) == targets).float().mean()
        return StepOutput(loss=loss, embeddings=sentence.detach(),
                          logs={"token_accuracy": accuracy.detach()})
