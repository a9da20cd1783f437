"""Encoders, registered by name (``ENCODERS.get("resnet18")``)."""

from selfsup.models import resnet  # noqa: F401  (registers the ResNets)
from selfsup.models.base import ImageEncoder
from selfsup.models.registry import ENCODERS

__all__ = ["ENCODERS", "ImageEncoder", "build_encoder"]


def build_encoder(name: str, **options) -> ImageEncoder:
    """Build a registered encoder by name with its keyword options."""
    return ENCODERS.get(name)(**options)
