"""Frozen features, extracted once and probed many times."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from selfsup import allocator, compiling
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
    compile: str = "auto",
) -> np.ndarray:
    """Embeddings (N, D) float32 of ``data``'s samples (all, or ``indices``), un-augmented,
    encoder in eval mode.

    ``data`` is any reader's :class:`TrainData` (its ``inputs`` make the encoder's input), or a
    uint8 image array (N, H, W, C). bf16 is used only where the machine has it natively. The
    encoder's train/eval mode is restored afterwards, so monitors may call this mid-training.
    ``compile``: auto|on|off (compiling.resolve_extraction: ``auto`` compiles image encoders
    for large sets); a compiled encoder sees every batch at full size (the last one padded), so
    it compiles once.
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
    forward: Callable[[torch.Tensor], torch.Tensor] = encoder
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = data.inputs(rows[start : start + batch_size])
            if start == 0 and compiling.resolve_extraction(
                compile, samples=len(rows), images=batch.ndim == 4
            ) == "on":
                forward = compiling.CompiledStep(
                    encoder, f"{type(encoder).__name__} feature extraction",
                    strict=compile == "on", budgeted=False,
                )
            size = len(batch)
            if forward is not encoder and start > 0 and size < batch_size:
                # The last batch padded to the compiled shape (its extra rows dropped below).
                pad = batch[-1:].expand(batch_size - size, *batch.shape[1:])
                batch = torch.cat([batch, pad])
            if channels_last and batch.ndim == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast:
                out.append(forward(batch)[:size].float())
    finally:
        encoder.train(was_training)
    if not out:
        return np.zeros((0, encoder.embed_dim), dtype=np.float32)
    return torch.cat(out).numpy()
