"""TSDAE: rebuild a text from the sentence embedding of a damaged copy.

Wang, Reimers, Gurevych. "TSDAE: Using Transformer-based Sequential Denoising Auto-Encoder for
Unsupervised Sentence Embedding Learning", Findings of EMNLP 2021. Each text loses tokens at
random (deletion, ratio 0.6: the best noise of the paper's study); the encoder turns the damaged
text into one sentence vector; a decoder must write the original text back, token by token,
reading the text only through that vector: its cross-attention's keys and values are the
sentence embedding alone (sec. 3, eq. 3), so everything the decoder needs must be in it.
The loss is the reconstruction's cross-entropy. The paper reports it beating masked LM as a
domain-adaptation objective for sentence encoders; batch 8 and lr 3e-5 from a pretrained start
are its setting.

Departures, and why: the decoder is light (one causal Transformer layer by default; the paper
ties a full-size copy of the encoder) so that a few CPU minutes go into the encoder; its input
and output word embeddings are the encoder's own (tied, as the paper ties them), so it adds no
vocabulary-sized matrix. Deletion is per token (WordPiece piece) of the tokenized corpus, not per
word; special tokens are never deleted and at least one token of each text is kept (as the
paper's implementation in sentence-transformers does). The sentence vector is the starting
model's (its pooling; MiniLM: mean + L2 normalisation), trained and exported alike.

One more departure, ``center_memory`` (on by default): the decoder reads each sentence vector
minus the batch's mean vector. A fresh decoder's errors are mostly the same for every text (it
does not yet know which tokens are common), so the gradient reaching the sentence vectors is
mostly one direction shared by the batch, and it pulls every text's vector the same way: from
MiniLM on IMDB without centering, the batch's std ratio fell from 0.65 at step 10 to 0.07 at
step 300 and its uniformity from -2.1 to -0.02 (collapse); with it, 0.75 -> 0.84 and -2.8 ->
-2.1 over 242 steps (benchmarks/README.md, text adaptation). Centering removes exactly that
shared part (the gradients over a batch sum to zero), so only what tells texts apart is
trained; the paper avoids the problem with a pretrained full-size decoder that CPU minutes do
not afford.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import SelfsupError
from selfsup.methods.base import StepOutput
from selfsup.methods.registry import METHODS
from selfsup.methods.sentence_base import SentenceMethod, SentenceOptions


@dataclass
class TSDAEOptions(SentenceOptions):
    deletion_ratio: float = 0.6  # share of (non-special) tokens deleted, the paper's
    decoder_layers: int = 1
    decoder_heads: int | None = None  # None: the encoder's
    center_memory: bool = True  # the decoder reads vector - batch mean (module docstring)


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


class SentenceDecoder(nn.Module):
    """A causal Transformer decoder whose cross-attention memory is one vector per text."""

    def __init__(self, dim: int, layers: int, heads: int, max_length: int) -> None:
        super().__init__()
        self.positions = nn.Embedding(max_length, dim)
        self.norm = nn.LayerNorm(dim)
        layer = nn.TransformerDecoderLayer(dim, heads, 4 * dim, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(dim))

    def forward(self, inputs: torch.Tensor, padding: torch.Tensor, sentence: torch.Tensor
                ) -> torch.Tensor:
        """States (B, T, D) from input embeddings (B, T, D), True where padded, and the
        sentence vectors (B, D): the memory is (B, 1, D)."""
        length = inputs.shape[1]
        x = self.norm(inputs + self.positions(torch.arange(length, device=inputs.device)))
        causal = torch.ones(length, length, dtype=torch.bool, device=inputs.device).triu(1)
        return self.layers(x, sentence.unsqueeze(1).to(x.dtype), tgt_mask=causal,
                           tgt_is_causal=True, tgt_key_padding_mask=padding)


@METHODS.register("tsdae")
class TSDAE(SentenceMethod):
    """Deletion noise -> sentence vector -> a decoder rebuilds the original tokens."""

    Options: ClassVar[type] = TSDAEOptions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        o, config = self.options, self.encoder.config
        if not 0 < o.deletion_ratio < 1:
            raise SelfsupError(f"deletion_ratio must be in (0, 1), not {o.deletion_ratio}")
        dim, words = self.encoder.embed_dim, self.word_embeddings().shape[1]
        if words != dim:
            raise SelfsupError(f"tsdae ties its decoder to the encoder's word embeddings; this "
                               f"model's are {words} wide and its states {dim}")
        heads = o.decoder_heads or int(getattr(config, "num_attention_heads", 0) or 4)
        if dim % heads:
            raise SelfsupError(f"decoder_heads {heads} must divide the encoder's width {dim}")
        self.decoder = SentenceDecoder(dim, o.decoder_layers, heads, int(self.info.length))
        self.output_bias = nn.Parameter(torch.zeros(self.word_embeddings().shape[0]))
        self.register_buffer("special_ids", torch.tensor(self.info.extra["special_token_ids"],
                                                         dtype=torch.long), persistent=False)

    def word_embeddings(self) -> torch.Tensor:
        return self.encoder.model.get_input_embeddings().weight

    def reconstruct(self, sentence: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of every real next token (N, vocab), their targets (N,)) when the decoder,
        fed ``ids`` shifted right, rebuilds ``ids`` from ``sentence`` (B, D) alone."""
        words = self.word_embeddings()
        inputs, targets, real = ids[:, :-1], ids[:, 1:], mask[:, 1:].bool()
        if self.options.center_memory and len(sentence) > 1:
            sentence = sentence - sentence.mean(0, keepdim=True)
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
        accuracy = (logits.argmax(-1) == targets).float().mean()
        return StepOutput(loss=loss, embeddings=sentence.detach(),
                          logs={"token_accuracy": accuracy.detach()})
