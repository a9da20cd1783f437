"""Unsupervised SimCSE: a text and itself under another dropout mask are a positive pair.

Gao, Yao, Chen. "SimCSE: Simple Contrastive Learning of Sentence Embeddings", EMNLP 2021,
sec. 3: every text of the batch is encoded twice with dropout on (one forward pass over the
batch stacked twice, so the two dropout masks differ), and each first view must pick its own
second view out of the batch's second views by cosine similarity / temperature (in-batch
InfoNCE, eq. 1; ``methods/losses.py`` ``info_nce``). Dropout is the only augmentation: the
paper's table 1 finds it beats crops, word deletion and synonyms. Temperature 0.05 is the
paper's setting, dropout 0.1 its best (table 3; BERT's own). Batch 64 and lr 3e-5 from a
pretrained start are its BERT-base setting (appendix A); from scratch a small BERT takes more.

Unlike masked LM it keeps a sentence encoder's geometry: the loss spreads unrelated texts apart
(alignment and uniformity, sec. 2-3) instead of fitting a new head. The paper trains with a CLS
pooler + MLP and drops the MLP at test time; here the sentence vector is the one the starting
model produces (its pooling; MiniLM: mean + L2 normalisation), trained and exported alike.

``views=spans`` (an option, off by default) makes the pair harder, for corpora of long
documents: each view is a random window of ``span`` tokens of the document as read (up to
``--block-size``), both under dropout, so the encoder must find what two parts of one document
share rather than a near-copy of itself (DeCLUTR's span pairs, Giorgi et al., ACL 2021, sec. 2;
there from a pretrained start too). A document of at most ``span`` tokens gives the same window
twice, i.e. plain SimCSE.

Bad input: a corpus whose texts are all the same is refused (the pair would be the whole batch,
so the loss could not fall below ln N); many repeats are warned about (a repeat in the same
batch is a false negative). See ``selfsup/data/documents.py`` ``check_distinct``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from selfsup.errors import SelfsupError
from selfsup.methods.base import StepOutput
from selfsup.methods.losses import info_nce
from selfsup.methods.registry import METHODS
from selfsup.methods.sentence_base import SentenceMethod, SentenceOptions


@dataclass
class SimCSEOptions(SentenceOptions):
    temperature: float = 0.05  # the paper's (table D.1)
    views: str = "dropout"  # or "spans": two random windows of each document (docstring)
    span: int = 64  # tokens per window with views=spans (special tokens not counted)

    def validate(self) -> None:
        super().validate()
        if self.views not in ("dropout", "spans"):
            raise SelfsupError(f"views must be 'dropout' or 'spans', not {self.views!r}")
        if self.span < 1:
            raise SelfsupError(f"span must be at least 1 token, not {self.span}")


# Eager under --compile: the windows' width depends on the batch (a recompile each time).
@torch.compiler.disable
def span_pairs(ids: torch.Tensor, mask: torch.Tensor, width: int, generator: torch.Generator,
               pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random windows of at most ``width`` inner tokens of each framed row (``first ...
    last``, e.g. ``[CLS] ... [SEP]``), framed the same way: (ids, attention mask) of 2B rows,
    every row's first window, then every row's second; right-padded."""
    rows = ids.cpu().repeat(2, 1)
    inner = mask.cpu().sum(1).repeat(2) - 2  # tokens between the two frame tokens
    take = inner.clamp(min=0, max=width)
    start = (torch.rand(inner.shape, generator=generator) * (inner - take + 1)).long()
    offsets = torch.arange(width)
    body = rows.gather(1, (1 + start[:, None] + offsets).clamp(max=rows.shape[1] - 1))
    out = torch.full((len(rows), width + 2), pad_id, dtype=rows.dtype)
    out[:, 0] = rows[:, 0]
    out[:, 1:-1] = torch.where(offsets < take[:, None], body, pad_id)
    out.scatter_(1, (take + 1)[:, None], rows.gather(1, (inner + 1)[:, None]))  # closing token
    new_mask = (torch.arange(width + 2) < (take + 2)[:, None]).to(mask.dtype)
    used = int(take.max()) + 2
    return out[:, :used].to(ids.device), new_mask[:, :used].to(mask.device)


def dropout_active(model: torch.nn.Module) -> bool:
    """Whether any dropout of the model would change its output in training mode."""
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


@METHODS.register("simcse")
class SimCSE(SentenceMethod):
    """In-batch InfoNCE between two views of each text: dropout twins, or random spans."""

    Options: ClassVar[type] = SimCSEOptions
    needs_distinct_texts: ClassVar[bool] = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.options.views == "dropout" and not dropout_active(self.encoder.model):
            raise SelfsupError(
                "simcse makes its two views with dropout, and this model has none; set it, "
                "e.g. --method-option dropout=0.1 (the paper's)")

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.options.views == "spans":
            ids, mask = span_pairs(ids, mask, self.options.span, generator, self.encoder.pad_id)
        else:
            ids, mask = torch.cat([ids, ids]), torch.cat([mask, mask])
        # One pass over both views stacked: each copy draws its own dropout masks.
        z1, z2 = self.encoder(ids, mask).chunk(2)
        loss = info_nce(z1, z2, self.options.temperature)
        with torch.no_grad():
            agreement = torch.nn.functional.cosine_similarity(z1, z2, dim=1).mean()
        return StepOutput(loss=loss, embeddings=z1.detach(),
                          logs={"view_cosine": agreement.detach()})

    def trivial_loss(self, batch_size: int) -> float:
        """InfoNCE of a constant encoder: each view's partner is one of N equally likely keys
        (N the global batch), so ln N; a loss stuck there means collapse."""
        return math.log(batch_size)
