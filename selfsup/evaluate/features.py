"""Frozen features, extracted once and probed many times."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from selfsup.augment import to_float_images
from selfsup.models import ImageEncoder


@torch.inference_mode()
def extract_features(
    encoder: ImageEncoder,
    images: np.ndarray,
    *,
    batch_size: int = 512,
    precision: str = "bf16",
    channels_last: bool = True,
) -> np.ndarray:
    """Embeddings (N, D) float32 of uint8 images (N, H, W, C), un-augmented, encoder in eval mode.

    The encoder's train/eval mode is restored afterwards, so monitors may call this mid-training.
    """
    was_training = encoder.training
    encoder.eval()
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    out = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = np.array(images[start : start + batch_size])  # a writable copy
            batch = to_float_images(torch.from_numpy(chunk))
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast:
                out.append(encoder(batch).float())
    finally:
        encoder.train(was_training)
    if not out:
        return np.zeros((0, encoder.embed_dim), dtype=np.float32)
    return torch.cat(out).numpy()
