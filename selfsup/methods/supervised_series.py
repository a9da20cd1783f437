"""The supervised baseline for series: the same encoder trained from scratch on the labels.

A separate method from the image baseline because its batch and augmentation differ; like it,
it is trained by the same engine with the same encoder and budget as the pretext task, so
"did self-supervision help?" has its reference. Light augmentation (jitter and scaling, Um et
al. 2017) as the usual regulariser for small labelled sensor sets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods.base import StepOutput
from selfsup.methods.registry import METHODS
from selfsup.methods.series_base import SeriesMethod


@METHODS.register("supervised-series")
class SupervisedSeries(SeriesMethod):
    """Cross-entropy on a linear classifier over the encoder's pooled embedding."""

    needs_labels = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.info.num_classes:
            raise ValueError("the supervised baseline needs labelled data")
        self.classifier = nn.Linear(self.encoder.embed_dim, self.info.num_classes)

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        x, lengths = self.augment(*self.unpack(batch), generator)
        features = self.encoder(x, lengths)
        logits = self.classifier(features)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        accuracy = (logits.argmax(1) == batch["labels"]).float().mean()
        return StepOutput(loss=loss, embeddings=features.detach(), logs={"accuracy": accuracy})

    @torch.no_grad()
    def predict(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Class indices for series (B, C, L); lengths from NaN padding when not given."""
        return self.classifier(self.encoder(x, lengths)).argmax(1)
