"""Barlow Twins: make the cross-correlation of two views' embeddings the identity matrix.

Zbontar, Jing, Misra, LeCun, Deny. "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021.

No negatives, no momentum encoder, no predictor: the off-diagonal term (redundancy reduction)
is what prevents collapse, so one encoder serves both views.

Defaults and their sources:
- projector of 3 layers (Linear, BatchNorm, ReLU, x2, then Linear) as in the paper, at 2048
  wide rather than 8192: solo-learn's CIFAR setting, and a quarter of the cost on a CPU.
- lambda = 5e-3, the paper's value (tuned there for d = 8192; its code uses 0.0051). It is not
  rescaled for the narrower projector: solo-learn keeps the same value at d = 2048 and the
  paper found the loss insensitive to lambda within a wide range. Change it with
  ``lambda_offdiag``.
- augmentation: BYOL's asymmetric recipe, as the paper uses, without the Gaussian blur at
  32x32 (solo-learn's CIFAR recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.methods.base import BYOL_COLOUR, BYOL_VIEWS, ImageMethod, StepOutput
from selfsup.methods.heads import ProjectionHead
from selfsup.methods.losses import barlow_twins_loss
from selfsup.methods.registry import METHODS


@dataclass
class BarlowTwinsOptions:
    lambda_offdiag: float = 5e-3
    projection_dim: int = 2048
    hidden_dim: int = 2048
    projector_layers: int = 3


@METHODS.register("barlowtwins")
class BarlowTwins(ImageMethod):
    """One encoder and projector for both views; the loss is on their cross-correlation."""

    Options = BarlowTwinsOptions
    augment_defaults = dict(BYOL_COLOUR)
    view_augment_defaults = BYOL_VIEWS

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        o = self.options
        self.projector = ProjectionHead(
            self.encoder.embed_dim, o.hidden_dim, o.projection_dim, layers=o.projector_layers
        )

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        images = batch["images"]
        features = self.encoder(self.views(images, 2, generator))
        z1, z2 = self.projector(features).chunk(2)
        loss = barlow_twins_loss(z1, z2, self.options.lambda_offdiag)
        return StepOutput(loss=loss, embeddings=features[: len(images)].detach())
