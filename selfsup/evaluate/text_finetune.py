"""Fine-tuning a text encoder with a linear head (BERT's recipe at CPU scale: Devlin et al. 2019,
appendix A.3), keeping the epoch with the best accuracy on a validation carve; the head starts
near zero, or as a linear probe of the frozen features (LP-FT, Kumar et al. 2022)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import inference_precision
from selfsup.errors import SelfsupError
from selfsup.evaluate.finetune import (
    FinetuneConfig,
    FinetuneModule,
    finetune_trainer,
    fit_keeping_best,
    fit_summary,
    start_head,
)
from selfsup.evaluate.probes import stratified_split
from selfsup.evaluate.sweep import (
    macro_f1,
)
from selfsup.text_models import (  # re-exported: the evaluation's public names
    Tokenized,
    text_features,
)

#: Fine-tuning recipe for pre-trained text encoders (BERT's: Devlin et al. 2019, appendix A.3).
TEXT_FINETUNE = {"batch_size": 16, "lr": 5e-5, "weight_decay": 0.01, "layer_decay": None,
                 "warmup_fraction": 0.1, "label_smoothing": 0.0, "val_fraction": 0.1,
                 "channels_last": False}  # no convolutions
#: A randomly initialised transformer needs a larger step than a pre-trained one.
SCRATCH_LR = 5e-4
#: Validation carves larger than this only cost time: the carve is capped at this many texts.
MAX_VAL = 500
#: Early stopping: epochs past the warm-up without a better validation accuracy.
PATIENCE = 5


# ---------------------------------------------------------------------------------------------
# Fine-tuning


class TextClassifier(nn.Module):
    """Text encoder + linear head on the sentence embedding the encoder makes (pooled and
    normalised as its pipeline says: the features the probes read); the head starts near
    zero."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(encoder.embed_dim), num_classes)
        nn.init.normal_(self.head.weight, std=0.02)  # BERT's initialiser range
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(input_ids, attention_mask)))


@dataclass
class TextSplit:
    """Tokens and labels of one split, as the fine-tuning loop consumes them."""

    tokens: Tokenized
    labels: np.ndarray
    pad_id: int

    def subset(self, rows: np.ndarray) -> TextSplit:
        kept = Tokenized([self.tokens.ids[int(i)] for i in rows], self.tokens.max_length, 0)
        return TextSplit(kept, self.labels[rows], self.pad_id)


@torch.no_grad()
def classifier_predictions(
    model: nn.Module, split: TextSplit, precision: str = "32", batch_size: int = 64
) -> np.ndarray:
    """Predicted classes of ``split`` (eval mode; the mode is restored)."""
    order = np.argsort([len(x) for x in split.tokens.ids], kind="stable")
    predicted = np.zeros(len(split.labels), dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, mask = split.tokens.batch(rows, split.pad_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                predicted[rows] = model(ids, mask).argmax(1).numpy()
    finally:
        model.train(was_training)
    return predicted


class TextFinetuneModule(FinetuneModule):
    """The image fine-tuning module's schedule, budget and best-epoch keeping, for token batches
    (no augmentation: text has no cheap label-preserving one).

    ``keep_start`` as in :class:`FinetuneModule`. ``patience``: stop after this many epochs past
    the warm-up without a better validation accuracy (early stopping; None: never).
    """

    def __init__(self, *args: Any, patience: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.compile == "on":  # the step below calls the model itself
            raise SelfsupError("text fine-tuning runs eagerly (its batches change width at "
                               "every step); compile must be auto or off")
        self.patience = patience
        self.stopped_early_at: int | None = None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        loss = F.cross_entropy(
            logits.float(), batch["labels"], label_smoothing=self.config.label_smoothing
        )
        self.log("finetune/loss", loss, prog_bar=True)
        return loss

    def keep_if_best(self, epoch: int) -> None:
        predicted = classifier_predictions(self.model, self.val_data, self.config.precision)
        accuracy = float((predicted == self.val_data.labels).mean())
        self.history.append(accuracy)
        self.checked_at_step = self.trainer.global_step
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = accuracy, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
        elif (self.patience is not None and epoch - self.best_epoch >= self.patience
              and self.progress() >= self.config.warmup_fraction):
            self.stopped_early_at = epoch
            self.trainer.should_stop = True


def text_finetune_config(**changes: Any) -> FinetuneConfig:
    """The text recipe (TEXT_FINETUNE) with ``changes``; precision 32 unless bf16 is native."""
    values = {**TEXT_FINETUNE, "precision": inference_precision("auto"), **changes}
    return FinetuneConfig(**values)


def probe_head(model: TextClassifier, fit: TextSplit, config: FinetuneConfig) -> dict[str, Any]:
    """Set ``model.head`` to a linear probe (probes.linear_head, C by 5-fold cross-validation)
    of the frozen encoder's mean-pooled features of ``fit``; returns how it was chosen."""
    features = text_features(model.encoder, fit.tokens, fit.pad_id, precision=config.precision)
    return start_head(model.head, features, fit.labels, config.seed)


def finetune_text(
    encoder: nn.Module, train: TextSplit, test: TextSplit, num_classes: int,
    config: FinetuneConfig, *, patience: int | None = PATIENCE,
) -> dict[str, Any]:
    """Fine-tune ``encoder`` (changed in place) + a new linear head on its sentence embeddings
    on ``train``; score test.

    A stratified validation carve (``val_fraction``, at most MAX_VAL texts) of ``train`` picks
    the epoch whose weights are kept; the budget is ``minutes`` and/or ``epochs``, and training
    stops early after ``patience`` epochs past the warm-up without a better carve score. With
    ``config.head_init == "probe"`` the head starts as a linear probe of the frozen encoder's
    features of the fine-tuning part (:func:`probe_head`, LP-FT), the validation carve unseen,
    and that start is itself a candidate (epoch -1): fine-tuning keeps it unless an epoch
    beats it on the carve.
    """

    if len(train.labels) < 4:
        raise SelfsupError(f"fine-tuning needs at least 4 labelled texts, got {len(train.labels)}")
    fraction = min(config.val_fraction, MAX_VAL / len(train.labels))
    fit_idx, val_idx = stratified_split(train.labels, fraction, config.seed)
    fit, val = train.subset(fit_idx), train.subset(val_idx)
    batch_size = min(config.batch_size, len(fit_idx))

    def collate(rows: list[int]) -> dict[str, torch.Tensor]:
        ids, mask = fit.tokens.batch(rows, fit.pad_id)
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.from_numpy(fit.labels[np.asarray(rows)])}

    loader = torch.utils.data.DataLoader(
        range(len(fit_idx)), batch_size=batch_size, shuffle=True, drop_last=True,
        collate_fn=collate, generator=torch.Generator().manual_seed(config.seed),
    )
    pl.seed_everything(config.seed, verbose=False)
    model = TextClassifier(encoder.train(), num_classes)
    head = probe_head(model, fit, config) if config.head_init == "probe" else None
    module = TextFinetuneModule(model, config, val, len(loader), keep_start=head is not None,
                                patience=patience)
    trainer = finetune_trainer(config, gradient_clip_val=1.0)
    seconds = fit_keeping_best(trainer, module, model, loader)
    predicted = classifier_predictions(model, test, config.precision)
    return {
        "accuracy": float((predicted == test.labels).mean()),
        "macro_f1": macro_f1(test.labels, predicted),
        **fit_summary(trainer, module, loader, seconds),
        "texts_per_s": trainer.global_step * batch_size / max(seconds, 1e-9),
        "num_train": len(fit_idx),
        "num_val": len(val_idx),
        "num_test": len(test.labels),
        "head": {"init": config.head_init, **(head or {})},
        "start_kept": module.best_epoch == -1,
        "stopped_early_at_epoch": module.stopped_early_at,
        "patience": patience,
        "config": {k: v for k, v in dataclasses.asdict(config).items()
                   if k not in ("progress", "augment_options")},
    }
