"""MoCo v3: a predictor on the query branch, a momentum key encoder, in-batch negatives.

Chen, Xie, He. "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021.

MoCo v3 drops v2's queue: with large batches the other keys of the batch are negatives enough,
and keys from the current encoder are fresher than queued ones. Each view's query (projector
then predictor) must find the other view's key (EMA encoder + projector) among the batch's
keys; the loss is symmetrised and scaled by 2 * temperature, as in the official code (the
gradient's size then hardly depends on the temperature).

Defaults and their sources (paper sec. 4 and the official code's ResNet / ViT settings):
- temperature 1.0 with a ResNet, 0.2 with a ViT (the official code's default and its ViT
  recipes; the paper's 0.2 is the ViT value); ``temperature`` overrides both.
- projector hidden 4096 -> 256 with BatchNorm after every layer (the last one without affine
  parameters), 2 layers with a ResNet, 3 with a ViT; predictor 256 -> 4096 -> 256.
- momentum 0.99 rising to 1 along a cosine over training.
- with a ViT, the patch projection stays at its random initialisation (sec. 4.2, "random
  patch projection"), the paper's remedy for the instability it found in ViT training.
- augmentation: BYOL's asymmetric recipe with crops from 20% of the area (the ResNet setting;
  0.08 for ViTs in the paper), without Gaussian blur at 32x32 as in solo-learn's CIFAR recipe:
  view 2 is solarized with probability 0.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from selfsup.errors import SelfsupError
from selfsup.methods.base import BYOL_COLOUR, BYOL_VIEWS, ImageMethod, StepOutput
from selfsup.methods.heads import PredictionHead, ProjectionHead
from selfsup.methods.losses import info_nce
from selfsup.methods.momentum import MomentumTeacher
from selfsup.methods.registry import METHODS
from selfsup.models.vit import is_vit


@dataclass
class MoCoV3Options:
    temperature: float | None = None  # None: 1.0 for a ResNet, 0.2 for a ViT
    momentum: float = 0.99
    projection_dim: int = 256
    hidden_dim: int = 4096
    projector_layers: int | None = None  # None: 2 for a ResNet, 3 for a ViT
    predictor_hidden_dim: int = 4096
    random_patch_projection: bool | None = None  # None: True for a ViT


@METHODS.register("mocov3")
class MoCoV3(ImageMethod):
    """Symmetric InfoNCE between predicted queries and momentum keys of the other view."""

    Options = MoCoV3Options
    augment_defaults = {"crop_scale": (0.2, 1.0), **BYOL_COLOUR}
    view_augment_defaults = BYOL_VIEWS

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        o = self.options
        vit = is_vit(self.encoder)
        if o.temperature is None:
            o.temperature = 0.2 if vit else 1.0
        if o.projector_layers is None:
            o.projector_layers = 3 if vit else 2
        if o.random_patch_projection is None:
            o.random_patch_projection = vit
        if o.random_patch_projection:
            if not hasattr(self.encoder, "patch_embed"):
                raise SelfsupError("mocov3: random_patch_projection needs a ViT encoder")
            self.encoder.patch_embed.requires_grad_(False)
        self.projector = ProjectionHead(
            self.encoder.embed_dim,
            o.hidden_dim,
            o.projection_dim,
            layers=o.projector_layers,
            last_batch_norm=True,
        )
        self.predictor = PredictionHead(o.projection_dim, o.predictor_hidden_dim)
        self.teacher = MomentumTeacher(self.encoder, self.projector, base_momentum=o.momentum)

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        images = batch["images"]
        n = len(images)
        views = self.views(images, 2, generator)
        features = self.encoder(views)
        q1, q2 = self.predictor(self.projector(features)).chunk(2)
        k1, k2 = self.teacher(views).chunk(2)
        t = self.options.temperature
        loss = 2 * t * (info_nce(q1, k2, t) + info_nce(q2, k1, t))
        return StepOutput(
            loss=loss,
            embeddings=features[:n].detach(),
            logs={"momentum": self.teacher.momentum},
        )

    def trivial_loss(self, batch_size: int) -> float:
        """The loss of a constant encoder: each InfoNCE term is ln N (N keys, all alike), and
        the symmetrised loss is scaled by 2 * temperature."""
        return 4 * self.options.temperature * math.log(batch_size)

    def on_train_step_end(self, progress: float) -> None:
        self.teacher.update(progress, self.encoder, self.projector)
