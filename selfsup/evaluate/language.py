"""Language-model evaluation: the loss over the validation split, in nats and bits.

nanoGPT reports the mean loss of 200 random validation windows; this scores every validation
token exactly once instead, so the figure has no sampling noise, up to ``MAX_EVAL_TOKENS``
targets. The split is cut into consecutive windows of ``block_size`` tokens; token t of a window
is predicted from the tokens before it in the same window (so early tokens of a window see less
context, as in training). A longer split (a 50 MB corpus has 5M validation characters: many
minutes on a CPU) is scored on evenly spaced whole windows holding at most ``max_tokens``
targets, the same windows every time, and the result says so (``sampled``, ``split_tokens``).
Bits per character (char tokenizer) or per UTF-8 byte (byte-level BPE) divide the total bits by
the text the targets stand for, which makes tokenizers comparable (``unit_lengths``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.models.gpt import GPT

log = logging.getLogger("selfsup")

#: Validation targets scored by default at most (``max_tokens``): seconds on a CPU for a small
#: model, and a standard error of the mean loss far below the differences worth reporting.
MAX_EVAL_TOKENS = 1 << 18
#: Seconds between progress lines while a long evaluation runs.
PROGRESS_SECONDS = 30.0


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX).

    Without it, PyTorch emulates bf16 and a bf16 matmul is tens of times *slower* than fp32
    (measured: 0.3 vs 14 GFLOP/s on an AVX2-only EPYC), so "auto" precision picks fp32 there.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """"auto" -> "bf16" where the CPU has native bf16, else "32"; other values pass through."""
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "32"
    return precision


@torch.no_grad()
def validation_loss(
    model: GPT,
    tokens: np.ndarray,
    *,
    block_size: int | None = None,
    batch_size: int = 64,
    precision: str = "auto",
    unit_lengths: np.ndarray | None = None,
    unit: str = "character",
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """Mean next-token cross-entropy over the target tokens of ``tokens`` (1-D ids).

    Every target counts when there are at most ``max_tokens`` (None: ``MAX_EVAL_TOKENS``; 0: no
    limit); beyond that, ``max_tokens // block`` evenly spaced whole windows (at least one).
    """
    block = block_size or model.config.block_size
    ids = np.asarray(tokens)  # a memmap slice stays one: windows are read as they are scored
    targets_total = len(ids) - 1
    if targets_total < 1:
        raise ValueError("the validation split needs at least 2 tokens")
    cap = MAX_EVAL_TOKENS if max_tokens is None else int(max_tokens)
    if cap < 0:
        raise ValueError(f"max_tokens must be >= 0 (0: no limit), not {max_tokens}")
    precision = resolve_precision(precision)
    was_training = model.training
    model.eval()
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
        else contextlib.nullcontext()
    )
    full = targets_total // block  # windows of exactly `block` targets, batched together
    rest = targets_total - full * block  # the shorter last window
    sampled = bool(cap) and targets_total > cap and full > 0
    if sampled:
        count = min(full, max(1, cap // block))
        starts = np.unique(np.linspace(0, full - 1, count).round().astype(np.int64)) * block
        rest = 0
    else:
        starts = np.arange(full, dtype=np.int64) * block
    scored = len(starts) * block + rest
    if scored > 100_000:  # say what runs and how long it may take, before it starts
        log.info("scoring the validation loss on %d of the split's %d tokens%s", scored,
                 targets_total, " (evenly spaced windows)" if sampled else "")
    total = 0.0
    units = 0
    started = last_report = time.monotonic()
    with autocast:
        for first in range(0, len(starts), batch_size):
            rows = starts[first : first + batch_size]
            window = torch.from_numpy(
                np.stack([ids[s : s + block + 1] for s in rows]).astype(np.int64)
            )
            total += _summed_loss(model, window)
            units += _units(unit_lengths, window)
            now = time.monotonic()
            if now - last_report >= PROGRESS_SECONDS:
                done = min(first + batch_size, len(starts)) * block
                log.info("validation loss: %d of %d tokens scored (%.0f s)", done, scored,
                         now - started)
                last_report = now
        if rest:
            window = torch.from_numpy(np.asarray(ids[full * block :], dtype=np.int64))[None]
            total += _summed_loss(model, window)
            units += _units(unit_lengths, window)
    model.train(was_training)
    result = {
        "loss": total / scored,
        "bits_per_token": total / scored / math.log(2),
        "tokens": scored,
        "split_tokens": targets_total,
        "sampled": sampled,
        "max_tokens": cap or None,
        "block_size": block,
        "precision": precision,
    }
    if unit_lengths is not None:
        result[f"bits_per_{unit}"] = total / math.log(2) / units
        result[f"{unit}s"] = units
    return result


def _units(unit_lengths: np.ndarray | None, window: torch.Tensor) -> int:
    """Characters or bytes the window's targets stand for (0 without ``unit_lengths``)."""
    if unit_lengths is None:
        return 0
    return int(unit_lengths[window[:, 1:].numpy()].sum())


def _summed_loss(model: GPT, window: torch.Tensor) -> float:
    logits = model.logits(window[:, :-1])
    return F.cross_entropy(
        logits.float().flatten(0, 1), window[:, 1:].flatten(), reduction="sum"
    ).item()
