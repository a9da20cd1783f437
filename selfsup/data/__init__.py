"""Data readers: paths in, uint8 arrays (and labels) out, with one clear error for bad input."""

from selfsup.data.images import (
    IMAGE_EXTENSIONS,
    ImageData,
    default_cache_dir,
    image_stats,
    load_digits,
    load_folder,
    load_images,
    load_npz,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageData",
    "default_cache_dir",
    "image_stats",
    "load_digits",
    "load_folder",
    "load_images",
    "load_npz",
]
