"""The supervised baseline: the same encoder trained from scratch on the labels.

Not a pretext task; it is here so that the verdict "did self-supervision help?" always has its
reference, trained by the same engine, with the same encoder, data and CPU-time budget. Light
augmentation (crop and flip) as in the standard CIFAR recipe of He et al. 2016.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods.base import ImageMethod, StepOutput
from selfsup.methods.registry import METHODS


@METHODS.register("supervised")
class Supervised(ImageMethod):
    """Cross-entropy on a linear classifier over the encoder's embedding."""

    needs_labels = True
    augment_defaults = {"crop_scale": (0.35, 1.0), "jitter_p": 0.0, "grayscale_p": 0.0}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.info.num_classes:
            raise ValueError("the supervised baseline needs labelled data")
        self.classifier = nn.Linear(self.encoder.embed_dim, self.info.num_classes)

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        features = self.encoder(self.views(batch["images"], 1, generator))
        logits = self.classifier(features)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        accuracy = (logits.argmax(1) == batch["labels"]).float().mean()
        return StepOutput(loss=loss, embeddings=features.detach(), logs={"accuracy": accuracy})

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class indices for float images in [0, 1] (B, C, H, W)."""
        return self.classifier(self.encoder(images)).argmax(1)
