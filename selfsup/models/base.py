"""What every encoder promises: a batch of inputs in, one embedding per sample out."""

from __future__ import annotations

import torch
from torch import nn

#: Encoder arguments the engine sets from the data (a reader's ``encoder_inputs``); the user's
#: encoder options, and a starting model's architecture, are the rest.
DATA_SET_OPTIONS = ("in_channels", "mean", "std")


class ImageEncoder(nn.Module):
    """Base for image encoders.

    Inputs are float images in [0, 1], shape (B, C, H, W); the encoder normalises them with the
    per-channel statistics it was built with, so an exported encoder needs no separate
    preprocessing recipe. ``embed_dim`` is the size of the vector ``forward`` returns.
    """

    embed_dim: int

    def __init__(self, in_channels: int, mean: list[float] | None, std: list[float] | None):
        super().__init__()
        mean = mean if mean is not None else [0.5] * in_channels
        std = std if std is not None else [0.25] * in_channels
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError("mean/std need one value per input channel")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Per-sample embeddings (B, embed_dim); an alias of ``forward`` named for readers."""
        return self(images)
