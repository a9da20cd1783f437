"""SimCLR: pull two augmented views of an image together, push other images away.

Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020. Defaults follow its CIFAR-10 setting (appendix B.9): two views with
random resized crop, flip, colour jitter (0.8) and grayscale (0.2), no blur at 32x32; a 2-layer
projection head to 128-d; temperature 0.5, the best of its sweep at small batch sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from selfsup.methods.base import ImageMethod, StepOutput
from selfsup.methods.heads import ProjectionHead
from selfsup.methods.losses import nt_xent
from selfsup.methods.registry import METHODS


@dataclass
class SimCLROptions:
    temperature: float = 0.5
    projection_dim: int = 128
    hidden_dim: int | None = None  # None: the encoder's embedding size


@METHODS.register("simclr")
class SimCLR(ImageMethod):
    """Contrastive learning with the NT-Xent loss over the other views in the batch."""

    Options = SimCLROptions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        dim = self.encoder.embed_dim
        self.projector = ProjectionHead(
            dim, self.options.hidden_dim or dim, self.options.projection_dim
        )

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        images = batch["images"]
        features = self.encoder(self.views(images, 2, generator))
        z1, z2 = self.projector(features).chunk(2)
        loss = nt_xent(z1, z2, self.options.temperature)
        return StepOutput(loss=loss, embeddings=features[: len(images)].detach())

    def trivial_loss(self, batch_size: int) -> float:
        """NT-Xent of a constant encoder: every view equally likely among the other 2N - 1
        (N the global batch), so ln(2N - 1); a loss stuck there means collapse."""
        return math.log(2 * batch_size - 1)
