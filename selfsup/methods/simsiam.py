"""SimSiam: two views of an image, one predicts the other's projection; no negatives, no EMA.

Chen, He. "Exploring Simple Siamese Representation Learning", CVPR 2021.

What keeps it from collapsing is the stop-gradient on the target branch (sec. 4.1: without it
the loss drops straight to its minimum, -1, and the outputs collapse to a constant). The
predictor is the only asymmetry; the two branches share one encoder and projector.

Defaults and their sources (the paper's CIFAR-10 setting, sec. 5 and appendix D):
- projector: 2 layers, 2048 wide, BatchNorm after the hidden and the output layer (here the
  output BatchNorm has no affine parameters, as MoCo v3's, from the shared ``ProjectionHead``).
- predictor: a bottleneck 2048 -> 512 -> 2048 (sec. 4.4: the bottleneck is what works).
- loss: negative cosine ``D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2`` (eq. 1-3).
- augmentation: SimCLR's (crop scale 0.2 to 1, colour jitter 0.8, grayscale 0.2), no blur at
  32x32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.methods.base import ImageMethod, StepOutput
from selfsup.methods.heads import PredictionHead, ProjectionHead
from selfsup.methods.losses import byol_loss
from selfsup.methods.registry import METHODS


@dataclass
class SimSiamOptions:
    projection_dim: int = 2048
    hidden_dim: int = 2048
    predictor_hidden_dim: int = 512


def negative_cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, sg(z)) = -cos(p, z), the target detached (the stop-gradient), mean over
    the batch; BYOL's normalised MSE is 2 + 2 D, so the shared loss serves."""
    return byol_loss(prediction, target.detach()) / 2 - 1


@METHODS.register("simsiam")
class SimSiam(ImageMethod):
    """Shared encoder and projector; the predictor regresses the other view's projection."""

    Options = SimSiamOptions
    augment_defaults = {"crop_scale": (0.2, 1.0)}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        o = self.options
        self.projector = ProjectionHead(self.encoder.embed_dim, o.hidden_dim, o.projection_dim,
                                        layers=2, last_batch_norm=True)
        self.predictor = PredictionHead(o.projection_dim, o.predictor_hidden_dim)

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        images = batch["images"]
        features = self.encoder(self.views(images, 2, generator))
        z = self.projector(features)
        p1, p2 = self.predictor(z).chunk(2)
        z1, z2 = z.chunk(2)
        loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        return StepOutput(loss=loss, embeddings=features[: len(images)].detach())

    def trivial_loss(self, batch_size: int) -> float:
        """-1: every prediction points where its target does, as when the outputs collapse to
        a constant (the paper's fig. 2, without the stop-gradient)."""
        return -1.0
