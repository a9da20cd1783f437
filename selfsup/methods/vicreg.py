"""VICReg: variance, invariance and covariance terms on two views' embeddings.

Bardes, Ponce, LeCun. "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022.

Like Barlow Twins, no negatives and no momentum encoder; collapse is prevented explicitly, per
branch: the variance term keeps every embedding dimension's standard deviation above 1, the
covariance term decorrelates the dimensions.

Defaults and their sources:
- weights: invariance 25, variance 25, covariance 1; hinge target gamma = 1, eps = 1e-4
  (paper sec. 4.1).
- expander of 3 layers (Linear, BatchNorm, ReLU, x2, then Linear) as in the paper, at 2048
  wide rather than 8192: solo-learn's CIFAR setting.
- augmentation: solo-learn's CIFAR recipe for VICReg: crops from 20% of the area, colour jitter
  0.4/0.4/0.2/0.1, solarization 0.1 on both views, no Gaussian blur at 32x32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.methods.base import BYOL_COLOUR, ImageMethod, StepOutput
from selfsup.methods.heads import ProjectionHead
from selfsup.methods.losses import vicreg_terms
from selfsup.methods.registry import METHODS


@dataclass
class VICRegOptions:
    invariance_weight: float = 25.0
    variance_weight: float = 25.0
    covariance_weight: float = 1.0
    eps: float = 1e-4
    projection_dim: int = 2048
    hidden_dim: int = 2048
    projector_layers: int = 3


@METHODS.register("vicreg")
class VICReg(ImageMethod):
    """One encoder and expander for both views; the three terms are logged separately."""

    Options = VICRegOptions
    augment_defaults = {"crop_scale": (0.2, 1.0), "solarize_p": 0.1, **BYOL_COLOUR}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        o = self.options
        self.projector = ProjectionHead(
            self.encoder.embed_dim, o.hidden_dim, o.projection_dim, layers=o.projector_layers
        )

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        o = self.options
        images = batch["images"]
        features = self.encoder(self.views(images, 2, generator))
        z1, z2 = self.projector(features).chunk(2)
        invariance, variance, covariance = vicreg_terms(z1, z2, o.eps)
        loss = (
            o.invariance_weight * invariance
            + o.variance_weight * variance
            + o.covariance_weight * covariance
        )
        return StepOutput(
            loss=loss,
            embeddings=features[: len(images)].detach(),
            logs={
                "invariance": invariance.detach(),
                "variance": variance.detach(),
                "covariance": covariance.detach(),
            },
        )
