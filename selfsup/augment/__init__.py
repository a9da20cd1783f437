"""Batched tensor augmentations with per-sample random parameters (no per-image PIL loop)."""

from selfsup.augment.image import (
    BatchedImageAugment,
    ImageAugmentConfig,
    progressive_size,
    to_float_images,
)

__all__ = ["BatchedImageAugment", "ImageAugmentConfig", "progressive_size", "to_float_images"]
