"""The method seam: a pretext task owns its views, heads and loss; the engine owns the rest.

A method never sees devices, precision, logging or checkpoints. It receives a batch of raw
uint8 images (labels only if it declares ``needs_labels``), makes its views, and returns a loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from selfsup.augment import BatchedImageAugment, ImageAugmentConfig
from selfsup.config import options_dataclass
from selfsup.models import ImageEncoder


@dataclass
class DataInfo:
    """What a method may know about the data it trains on."""

    channels: int
    image_size: int
    num_classes: int | None = None


@dataclass
class StepOutput:
    """A training step's loss, the encoder embeddings of one view (for monitors), and logs."""

    loss: torch.Tensor
    embeddings: torch.Tensor | None = None
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)


@dataclass
class NoOptions:
    """For methods without options of their own."""


class Method(nn.Module):
    """Base class of every method. Subclasses set ``Options`` and implement ``training_step``."""

    Options: ClassVar[type] = NoOptions
    needs_labels: ClassVar[bool] = False
    # Overrides of ImageAugmentConfig's defaults that suit this method (the user's win over them).
    augment_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        encoder: ImageEncoder,
        info: DataInfo,
        options: dict[str, Any] | None = None,
        augment_options: dict[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.info = info
        self.options = options_dataclass(
            self.Options, options or {}, f"options of method {type(self).__name__}"
        )
        augment_values = {**self.augment_defaults, **(augment_options or {})}
        self.augment = BatchedImageAugment(
            options_dataclass(ImageAugmentConfig, augment_values, "augment_options")
        )
        self.channels_last = channels_last

    def views(self, images: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` independently augmented views of the batch, stacked view-major (count*B)."""
        stacked = torch.cat([self.augment(images, generator) for _ in range(count)])
        if self.channels_last:
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        return stacked

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        raise NotImplementedError

    def on_train_step_end(self, progress: float) -> None:
        """Per-step hook (EMA teachers, schedules); ``progress`` goes 0 -> 1 over the budget."""
