"""Masked-patch reconstruction on series (PatchTST's self-supervised pre-training, Nie et al.
2023, "A Time Series is Worth 64 Words", sec. 3.3; the SimMIM form of Xie et al. 2022).

A random share of each series' patches is replaced by a learned mask token at the encoder's
input; a linear head predicts the (encoder-normalised) values of every masked step, and the
loss is their mean squared error. With the patch transformer a block is one patch; with the
dilated CNN it is a span of ``span`` steps (masking single steps would be solved by
interpolation). The per-series reconstruction error is also an anomaly score
(:meth:`TSMask.reconstruction_error`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from selfsup.augment.series import block_mask, valid_mask
from selfsup.errors import SelfsupError
from selfsup.methods.base import StepOutput
from selfsup.methods.registry import METHODS
from selfsup.methods.series_base import SeriesMethod
from selfsup.models.series import lengths_from_nan

__all__ = ["TSMask"]


@dataclass
class TSMaskOptions:
    mask_ratio: float = 0.4  # PatchTST masks 40% of the patches
    span: int = 4  # steps per masked block for per-step encoders (a patch encoder uses its patch)

    def __post_init__(self) -> None:
        if not 0 < self.mask_ratio < 1:
            raise SelfsupError(f"mask_ratio must lie in (0, 1), not {self.mask_ratio}")
        if self.span < 1:
            raise SelfsupError(f"span must be at least 1, not {self.span}")


@METHODS.register("ts-mask")
class TSMask(SeriesMethod):
    """Masked-block reconstruction with a linear head per token."""

    Options = TSMaskOptions
    default_encoder = "patch_transformer"
    augment_defaults = {"jitter_p": 0.0, "scale_p": 0.0}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unit = getattr(self.encoder, "token_size", 1)
        self.block = self.unit if self.unit > 1 else self.options.span
        self.head = nn.Linear(self.encoder.feature_dim, self.encoder.in_channels * self.unit)

    def reconstruct(
        self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prediction (B, C, L), normalised target (B, C, L), pooled embeddings)."""
        target, _ = self.encoder.prepare(x, lengths)
        feats, valid = self.encoder.features(x, lengths, mask=mask)
        batch, tokens, _ = feats.shape
        channels, length = target.shape[1], target.shape[2]
        pred = self.head(feats).float().view(batch, tokens, channels, self.unit)
        pred = pred.permute(0, 2, 1, 3).reshape(batch, channels, tokens * self.unit)
        return pred[:, :, :length], target, self.encoder.pool(feats, valid)

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        x, lengths = self.augment(*self.unpack(batch), generator)
        mask = block_mask(lengths, x.shape[-1], self.options.mask_ratio, self.block, generator)
        pred, target, embeddings = self.reconstruct(x, lengths, mask)
        weight = mask[:, None, :].float().expand_as(target)
        loss = (((pred - target) ** 2) * weight).sum() / weight.sum().clamp(min=1)
        return StepOutput(loss=loss, embeddings=embeddings.detach(),
                          logs={"masked_share": mask.sum() / lengths.sum()})

    @torch.no_grad()
    def reconstruction_error(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-series mean squared error of reconstructing every block once: the blocks are
        split into ``ceil(1 / mask_ratio)`` interleaved folds, each masked in turn, so the
        score is deterministic and covers the whole series (an anomaly score)."""
        if lengths is None:

            lengths = lengths_from_nan(x)
        folds = max(2, math.ceil(1 / self.options.mask_ratio))
        length = x.shape[-1]
        block_index = torch.arange(length, device=x.device) // self.block
        valid = valid_mask(lengths, length)
        error = torch.zeros(x.shape[0], device=x.device)
        for fold in range(folds):
            mask = (block_index % folds == fold)[None, :] & valid
            if not mask.any():
                continue
            pred, target, _ = self.reconstruct(x, lengths, mask)
            error += (((pred - target) ** 2).mean(dim=1) * mask).sum(dim=1)
        return error / lengths.to(error)
