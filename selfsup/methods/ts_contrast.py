"""TS2Vec-style contrastive learning on series (Yue et al. 2022, "TS2Vec: Towards Universal
Representation of Time Series", AAAI).

Two overlapping random crops of each series are encoded (optionally with random timestamp
masking); the features of the overlapping steps must agree, at every scale of a max-pooling
pyramid, in two ways: *temporal* (a step's feature picks its partner in the other view among
all steps of both views of that series) and *instance* (a series' feature at a step picks
its partner among all series of the batch at that step). The instance-level representation is
the max over the steps (the encoder's ``forward``; its ``pyramid`` option adds the max over the
halves, quarters, ... of the series).

Differences from the paper: timestamp masking is off unless ``mask_p`` asks for it (see
:class:`TSContrastOptions`); for variable-length batches, the overlap length is shared by the
batch (at most the shortest series), while each series draws its own crop positions inside its
own length; with a patch encoder, crops are aligned to the patch size so that the overlapping
patches line up.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from selfsup.augment.series import crop
from selfsup.errors import SelfsupError
from selfsup.methods.base import StepOutput
from selfsup.methods.momentum import ema_update
from selfsup.methods.registry import METHODS
from selfsup.methods.series_base import SeriesMethod

__all__ = ["TSContrast", "hierarchical_contrastive_loss", "instance_loss", "temporal_loss"]


def _pair_loss(z: torch.Tensor) -> torch.Tensor:
    """z (G, 2M, D): in each of G groups, item i and item M + i are partners; every item must
    pick its partner among the other 2M - 1 by dot product (softmax cross-entropy)."""
    m = z.shape[1] // 2
    sim = z @ z.transpose(1, 2)  # (G, 2M, 2M)
    eye = torch.eye(2 * m, dtype=torch.bool, device=z.device)
    logits = sim.masked_fill(eye, float("-inf"))
    target = torch.cat([torch.arange(m, 2 * m), torch.arange(0, m)]).to(z.device)
    return F.cross_entropy(logits.flatten(0, 1), target.repeat(z.shape[0]))


def instance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Per step t, series i of view 1 against all series of both views (TS2Vec eq. 2)."""
    if z1.shape[0] == 1:
        return z1.new_zeros(())
    return _pair_loss(torch.cat([z1, z2], dim=0).transpose(0, 1))  # (T, 2B, D)


def temporal_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Per series, step t of view 1 against all steps of both views (TS2Vec eq. 1)."""
    if z1.shape[1] == 1:
        return z1.new_zeros(())
    return _pair_loss(torch.cat([z1, z2], dim=1))  # (B, 2T, D)


def hierarchical_contrastive_loss(
    z1: torch.Tensor, z2: torch.Tensor, alpha: float = 0.5, temporal_unit: int = 0
) -> torch.Tensor:
    """TS2Vec's hierarchical loss (Yue et al. 2022, algorithm 1) on aligned features
    (B, T, D) of the two views' overlap: both terms at every level of a max-pool-by-2 pyramid
    (temporal terms only from level ``temporal_unit`` up), the instance term alone once the
    pyramid reaches one step; averaged over the levels. Computed in float32."""
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1, z2 = z1.float(), z2.float()
        loss, levels, level = z1.new_zeros(()), 0, 0
        while z1.shape[1] > 1:
            if alpha != 0:
                loss = loss + alpha * instance_loss(z1, z2)
            if level >= temporal_unit and alpha != 1:
                loss = loss + (1 - alpha) * temporal_loss(z1, z2)
            levels += 1
            level += 1
            z1 = F.max_pool1d(z1.transpose(1, 2), kernel_size=2).transpose(1, 2)
            z2 = F.max_pool1d(z2.transpose(1, 2), kernel_size=2).transpose(1, 2)
        if z1.shape[1] == 1:
            if alpha != 0:
                loss = loss + alpha * instance_loss(z1, z2)
            levels += 1
        return loss / levels


@dataclass
class TSContrastOptions:
    alpha: float = 0.5  # weight of the instance term; 1 - alpha for the temporal term
    # TS2Vec's binomial timestamp mask: each step masked with this p (the paper uses 0.5). Off
    # by default: on a validation split carved from MNIST-1D's train set (linear probe, 300
    # steps x 64) masking at 0.5 made the features worse than the random-init encoder's (75% vs
    # 86%), while crops alone reached 89%.
    mask_p: float = 0.0
    temporal_unit: int = 0  # pyramid level from which temporal terms count
    min_overlap: int = 2  # shortest overlap of the two crops, in steps
    # Export the average of the encoder's weights over all steps (TS2Vec evaluates its
    # torch.optim.swa_utils.AveragedModel, an equal-weight running average of every iterate).
    average: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise SelfsupError(f"alpha must lie in [0, 1], not {self.alpha}")
        if not 0 <= self.mask_p < 1:
            raise SelfsupError(f"mask_p must lie in [0, 1), not {self.mask_p}")
        if self.min_overlap < 1 or self.temporal_unit < 0:
            raise SelfsupError("min_overlap must be positive and temporal_unit not negative")


def overlapping_crops(
    lengths: torch.Tensor, unit: int, min_overlap: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """TS2Vec's crop pair per series: overlap [left, right) of a shared length, view 1 =
    [eleft, right), view 2 = [left, eright), eleft <= left, eright >= right, all inside the
    series and (for a patch encoder) starts on multiples of ``unit``."""
    shortest = int(lengths.min())
    usable = (shortest // unit) * unit
    if usable < unit:
        raise SelfsupError(f"series of {shortest} steps cannot hold one {unit}-step crop")
    low = min(usable, max(unit, -(-min_overlap // unit) * unit))
    choices = (usable - low) // unit + 1
    overlap = low + unit * int(torch.randint(choices, (1,), generator=generator))
    u = torch.rand((4, len(lengths)), generator=generator)
    slots = (lengths - overlap) // unit + 1  # possible left positions, in units
    left = unit * torch.floor(u[0] * slots).long()
    right = left + overlap
    eleft = unit * torch.floor(u[1] * (left // unit + 1)).long()
    eright = right + torch.floor(u[2] * (lengths - right + 1)).long()
    return {"left": left, "right": right, "eleft": eleft, "eright": eright,
            "overlap": torch.tensor(overlap)}


@METHODS.register("ts-contrast")
class TSContrast(SeriesMethod):
    """TS2Vec: hierarchical temporal + instance contrast of two overlapping crops."""

    Options = TSContrastOptions
    default_encoder = "dilated_cnn"
    # TS2Vec's views differ by cropping and masking alone.
    augment_defaults = {"jitter_p": 0.0, "scale_p": 0.0}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.averaged: torch.nn.Module | None = None
        if self.options.average:
            # Frozen (requires_grad False: the optimiser never holds it), saved in checkpoints.
            self.averaged = copy.deepcopy(self.encoder).requires_grad_(False)
            self.register_buffer("averaged_count", torch.zeros((), dtype=torch.long))

    def on_train_step_end(self, progress: float) -> None:
        """Fold the new weights into the running average: avg += (w - avg) / (n + 1)."""
        if self.averaged is not None:
            n = int(self.averaged_count)
            ema_update(self.averaged, self.encoder, momentum=n / (n + 1))
            self.averaged_count += 1

    def on_fit_end(self, run: Any) -> None:
        """Export the averaged weights as the encoder (TS2Vec's evaluation model)."""
        if self.averaged is not None and int(self.averaged_count) > 0:
            self.encoder.load_state_dict(self.averaged.state_dict())

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        o = self.options
        x, lengths = self.augment(*self.unpack(batch), generator)
        unit = getattr(self.encoder, "token_size", 1)
        shortest = max(o.min_overlap, getattr(self.encoder, "min_length", 1))
        c = overlapping_crops(lengths.cpu(), unit, shortest, generator)
        c = {k: v.to(x.device) for k, v in c.items()}
        view1, len1 = crop(x, c["eleft"], c["right"] - c["eleft"])
        view2, len2 = crop(x, c["left"], c["eright"] - c["left"])
        width = max(view1.shape[-1], view2.shape[-1])
        both = torch.cat([F.pad(view1, (0, width - view1.shape[-1])),
                          F.pad(view2, (0, width - view2.shape[-1]))])
        both_len = torch.cat([len1, len2])
        steps = torch.arange(width, device=x.device)[None, :]
        mask = (torch.rand(both_len.shape[0], width, generator=generator).to(x.device)
                < o.mask_p) & (steps < both_len[:, None])
        feats, valid = self.encoder.features(both, both_len, mask=mask if o.mask_p > 0 else None)
        batch_size = x.shape[0]
        tokens = int(c["overlap"]) // unit
        offset = (c["left"] - c["eleft"]) // unit
        index = offset[:, None] + torch.arange(tokens, device=x.device)[None, :]
        z1 = torch.gather(feats[:batch_size], 1,
                          index[:, :, None].expand(-1, -1, feats.shape[-1]))
        z2 = feats[batch_size:, :tokens]
        loss = hierarchical_contrastive_loss(z1, z2, o.alpha, o.temporal_unit)
        embeddings = self.encoder.pool(feats[:batch_size], valid[:batch_size]).detach()
        return StepOutput(loss=loss, embeddings=embeddings,
                          logs={"overlap": float(c["overlap"])})
