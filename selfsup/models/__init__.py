"""Encoders, registered by name (``ENCODERS.get("resnet18")``)."""

import torch

from selfsup.models import gpt, hf_text, resnet, series, vit  # noqa: F401  (registration on import)
from selfsup.models.base import DATA_SET_OPTIONS, ImageEncoder
from selfsup.models.registry import ENCODERS

__all__ = ["DATA_SET_OPTIONS", "ENCODERS", "ImageEncoder", "build_encoder"]


def build_encoder(name: str, **options) -> torch.nn.Module:
    """Build a registered encoder by name with its keyword options."""
    return ENCODERS.get(name)(**options)
