"""BYOL: an online network predicts an EMA target network's projection of another view.

Grill, Strub, Altché, Tallec, Richemond, Buchatskaya, Doersch, Avila Pires, Guo, Gheshlaghi
Azar, Piot, Kavukcuoglu, Munos, Valko. "Bootstrap Your Own Latent: A New Approach to
Self-Supervised Learning", NeurIPS 2020.

No negatives at all: the predictor on the online branch and the slowly moving target are what
keep the representation from collapsing to a constant.

Defaults and their sources (paper sec. 3.2 and appendix):
- projector 4096 -> 256 (Linear, BatchNorm, ReLU, Linear) and predictor of the same shape.
- target momentum 0.996 rising to 1 along a cosine over training.
- normalised MSE ``2 - 2 cos(q, z')``, symmetrised over the two views.
- augmentation: table 6's asymmetric recipe (colour jitter 0.4/0.4/0.2/0.1, view 2 solarized
  with probability 0.2) without its Gaussian blur, as solo-learn's CIFAR recipe does at 32x32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.methods.base import BYOL_COLOUR, BYOL_VIEWS, ImageMethod, StepOutput
from selfsup.methods.heads import PredictionHead, ProjectionHead
from selfsup.methods.losses import byol_loss
from selfsup.methods.momentum import MomentumTeacher
from selfsup.methods.registry import METHODS


@dataclass
class BYOLOptions:
    momentum: float = 0.996
    projection_dim: int = 256
    hidden_dim: int = 4096
    predictor_hidden_dim: int = 4096


@METHODS.register("byol")
class BYOL(ImageMethod):
    """Online encoder -> projector -> predictor regresses the target's projection."""

    Options = BYOLOptions
    augment_defaults = dict(BYOL_COLOUR)
    view_augment_defaults = BYOL_VIEWS

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        o = self.options
        self.projector = ProjectionHead(self.encoder.embed_dim, o.hidden_dim, o.projection_dim)
        self.predictor = PredictionHead(o.projection_dim, o.predictor_hidden_dim)
        self.teacher = MomentumTeacher(self.encoder, self.projector, base_momentum=o.momentum)

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        images = batch["images"]
        n = len(images)
        views = self.views(images, 2, generator)
        features = self.encoder(views)
        p1, p2 = self.predictor(self.projector(features)).chunk(2)
        z1, z2 = self.teacher(views).chunk(2)
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return StepOutput(
            loss=loss,
            embeddings=features[:n].detach(),
            logs={"momentum": self.teacher.momentum},
        )

    def on_train_step_end(self, progress: float) -> None:
        self.teacher.update(progress, self.encoder, self.projector)
