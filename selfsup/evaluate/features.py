"""Frozen features, extracted once and probed many times."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from selfsup import allocator
from selfsup.config import inference_precision
from selfsup.data.base import TrainData
from selfsup.data.images import ImageData


@torch.inference_mode()
def extract_features(
    encoder: nn.Module,
    data: TrainData | np.ndarray,
    indices: np.ndarray | None = None,
    *,
    batch_size: int = 512,
    precision: str = "bf16",
    channels_last: bool = True,
) -> np.ndarray:
    """Embeddings (N, D) float32 of ``data``'s samples (all, or ``indices``), un-augmented,
    encoder in eval mode.

    ``data`` is any reader's :class:`TrainData` (its ``inputs`` make the encoder's input), or a
    uint8 image array (N, H, W, C). bf16 is used only where the machine has it natively. The
    encoder's train/eval mode is restored afterwards, so monitors may call this mid-training.
    """
    allocator.retain_freed_memory()  # each batch's activations reuse the last one's pages
    if isinstance(data, np.ndarray):
        data = ImageData(images=data, labels=None, class_names=None, source="array")
    rows = np.arange(len(data)) if indices is None else np.asarray(indices)
    precision = inference_precision(precision)
    was_training = encoder.training
    encoder.eval()
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = data.inputs(rows[start : start + batch_size])
            if channels_last and batch.ndim == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast:
                out.append(encoder(batch).float())
    finally:
        encoder.train(was_training)
    if not out:
        return np.zeros((0, encoder.embed_dim), dtype=np.float32)
    return torch.cat(out).numpy()
