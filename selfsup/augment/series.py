"""Batched time-series augmentations on tensors, one independent random draw per sample.

Every op takes a float batch ``x`` (B, C, L) whose sample i is valid on its first
``lengths[i]`` steps (zeros after), and returns a batch of the same layout. Per-sample
randomness lives in parameter tensors (noise, factors, crop starts, cut points), never in a
Python loop over the samples, and the padding after each length stays zero, so a padded series
is augmented exactly as it would be alone.

The ops are the common set of the time-series SSL literature (Um et al. 2017, "Data augmentation
of wearable sensor data"; Eldele et al. 2021, TS-TCC: jitter, scaling, permutation of segments;
Yue et al. 2022, TS2Vec: random cropping and timestamp masking).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.errors import SelfsupError

__all__ = [
    "SeriesAugment",
    "SeriesAugmentConfig",
    "crop",
    "jitter",
    "random_crop",
    "scaling",
    "segment_permutation",
    "time_mask",
    "valid_mask",
]


def valid_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L) bool: True on each sample's valid steps."""
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device):
    return torch.rand(shape, generator=generator).to(device)


def jitter(
    x: torch.Tensor, lengths: torch.Tensor, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """Add Gaussian noise of std ``sigma`` on the valid steps (sensor noise)."""
    noise = torch.randn(x.shape, generator=generator).to(x) * sigma
    return x + noise * valid_mask(lengths, x.shape[-1])[:, None, :]


def scaling(
    x: torch.Tensor, lengths: torch.Tensor, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """Multiply each sample's channel by a factor drawn from N(1, sigma^2) (gain drift)."""
    factor = 1.0 + torch.randn((x.shape[0], x.shape[1], 1), generator=generator).to(x) * sigma
    return x * factor


def crop(
    x: torch.Tensor, start: torch.Tensor, size: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample windows x[i, :, start[i] : start[i] + size[i]], left-aligned and zero-padded
    to the largest size; returns (windows, sizes). One gather for the whole batch."""
    out_len = int(size.max())
    steps = torch.arange(out_len, device=x.device)[None, :]
    index = (start[:, None] + steps).clamp(max=x.shape[-1] - 1)
    gathered = torch.gather(x, 2, index[:, None, :].expand(-1, x.shape[1], -1))
    keep = (steps < size[:, None])[:, None, :]
    return gathered * keep, size.clone()


def random_crop(
    x: torch.Tensor,
    lengths: torch.Tensor,
    scale: tuple[float, float],
    generator: torch.Generator,
    min_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A window of each valid part, its size a uniform fraction in ``scale`` of the length
    (at least ``min_size`` steps, at most the length), at a uniform position; (x, lengths)."""
    low, high = scale
    fraction = low + (high - low) * _uniform((x.shape[0],), generator, x.device)
    size = torch.round(lengths * fraction).long().clamp(min=1)
    size = torch.maximum(size, torch.minimum(lengths, torch.full_like(lengths, min_size)))
    size = torch.minimum(size, lengths)
    start = torch.floor(_uniform((x.shape[0],), generator, x.device) * (lengths - size + 1))
    return crop(x, start.long(), size)


def time_mask(
    x: torch.Tensor,
    lengths: torch.Tensor,
    ratio: float,
    span: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero aligned blocks of ``span`` steps, ``round(ratio * blocks)`` of each sample's valid
    blocks chosen at random; returns (masked x, (B, L) bool mask of the zeroed steps)."""
    mask = block_mask(lengths, x.shape[-1], ratio, span, generator)
    return x * ~mask[:, None, :], mask


def block_mask(
    lengths: torch.Tensor, length: int, ratio: float, span: int, generator: torch.Generator
) -> torch.Tensor:
    """(B, L) bool: exactly ``round(ratio * n_i)`` of sample i's ``n_i = ceil(len_i / span)``
    blocks (aligned to multiples of ``span``) are True, at least one where ``ratio > 0``, and at
    most ``n_i - 1`` where ``ratio < 1``; padding steps are never True.

    Ranking random scores among the valid blocks picks the blocks without a per-sample loop
    (the argsort trick of MAE, He et al. 2022).
    """
    if not 0.0 <= ratio <= 1.0:
        raise SelfsupError(f"mask ratio must lie in [0, 1], not {ratio}")
    if span < 1:
        raise SelfsupError(f"mask span must be at least 1 step, not {span}")
    device = lengths.device
    blocks = -(-length // span)
    valid_blocks = -(-lengths // span)  # ceil: a partial last block counts
    count = torch.round(valid_blocks.float() * ratio).long()
    if ratio > 0:
        count = count.clamp(min=1)
    if ratio < 1:
        count = torch.minimum(count, (valid_blocks - 1).clamp(min=0))
    scores = _uniform((len(lengths), blocks), generator, device)
    scores = scores.masked_fill(~valid_mask(valid_blocks, blocks), 2.0)  # padding ranks last
    rank = scores.argsort(dim=1).argsort(dim=1)
    chosen = rank < count[:, None]
    steps = chosen.repeat_interleave(span, dim=1)[:, :length]
    return steps & valid_mask(lengths, length)


def segment_permutation(
    x: torch.Tensor, lengths: torch.Tensor, max_segments: int, generator: torch.Generator
) -> torch.Tensor:
    """Cut each valid part into 2..``max_segments`` pieces at random points and reorder them at
    random (TS-TCC's strong augmentation). Vectorised: every output step looks up its source
    step through the permuted segments' output offsets (one searchsorted per batch)."""
    batch, _, length = x.shape
    device = x.device
    if max_segments < 2:
        return x
    k = max_segments
    count = 2 + torch.floor(_uniform((batch,), generator, device) * (k - 1)).long()
    count = torch.minimum(count, lengths.clamp(min=1))  # no more pieces than steps
    # Cut points: k-1 uniform positions in (0, len); the unused ones (beyond count-1) and the
    # duplicates collapse into empty segments, which the permutation carries harmlessly.
    cuts = 1 + torch.floor(_uniform((batch, k - 1), generator, device) * (lengths[:, None] - 1))
    cuts = cuts.long().clamp(min=0)
    used = torch.arange(k - 1, device=device)[None, :] < (count[:, None] - 1)
    cuts = torch.where(used, cuts, lengths[:, None])
    cuts, _ = cuts.sort(dim=1)
    bounds = torch.cat([torch.zeros_like(lengths)[:, None], cuts, lengths[:, None]], dim=1)
    seg_start, seg_len = bounds[:, :-1], bounds[:, 1:] - bounds[:, :-1]  # (B, k)
    order = _uniform((batch, k), generator, device).argsort(dim=1)
    perm_start = torch.gather(seg_start, 1, order)
    perm_len = torch.gather(seg_len, 1, order)
    out_end = perm_len.cumsum(dim=1)  # where each permuted segment ends in the output
    steps = torch.arange(length, device=device)[None, :].expand(batch, -1).contiguous()
    j = torch.searchsorted(out_end, steps, right=True).clamp(max=k - 1)
    out_start = out_end - perm_len
    source = torch.gather(perm_start, 1, j) + steps - torch.gather(out_start, 1, j)
    source = source.clamp(0, length - 1)
    out = torch.gather(x, 2, source[:, None, :].expand(-1, x.shape[1], -1))
    return out * valid_mask(lengths, length)[:, None, :]


@dataclass
class SeriesAugmentConfig:
    """Per-sample probabilities and strengths; an op with probability 0 draws nothing.

    Defaults follow TS-TCC's weak/strong recipe scaled for z-normalised series (Eldele et al.
    2021): light jitter and scaling always, a crop of 50-100% of the length.
    """

    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_p: float = 0.0
    jitter_p: float = 1.0
    jitter_sigma: float = 0.05
    scale_p: float = 1.0
    scale_sigma: float = 0.1
    permute_p: float = 0.0
    max_segments: int = 5
    mask_p: float = 0.0
    mask_ratio: float = 0.15
    mask_span: int = 4

    def __post_init__(self) -> None:
        for name in ("crop_p", "jitter_p", "scale_p", "permute_p", "mask_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SelfsupError(f"augment option {name} must lie in [0, 1]")
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise SelfsupError(f"crop_scale must satisfy 0 < low <= high <= 1, not {low, high}")
        if self.jitter_sigma < 0 or self.scale_sigma < 0:
            raise SelfsupError("jitter_sigma and scale_sigma must not be negative")


def _apply(
    p: float, x: torch.Tensor, changed: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """x where a per-sample coin (probability p) says so, else the unchanged input."""
    if p >= 1.0:
        return changed
    coin = _uniform((x.shape[0],), generator, x.device) < p
    return torch.where(coin[:, None, None], changed, x)


class SeriesAugment:
    """The configured chain: crop -> permutation -> scaling -> jitter -> time masking."""

    def __init__(self, config: SeriesAugmentConfig | None = None) -> None:
        self.config = config or SeriesAugmentConfig()

    # Eager under --compile: crop sizes are drawn per batch, and each would be a recompile.
    @torch.compiler.disable
    def __call__(
        self, x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        if c.crop_p > 0:
            cropped, sizes = random_crop(x, lengths, c.crop_scale, generator)
            if c.crop_p < 1:  # keep the uncropped series for the others (same padded width)
                coin = _uniform((x.shape[0],), generator, x.device) < c.crop_p
                width = x.shape[-1]
                cropped = torch.nn.functional.pad(cropped, (0, width - cropped.shape[-1]))
                x = torch.where(coin[:, None, None], cropped, x)
                lengths = torch.where(coin, sizes, lengths)
            else:
                x, lengths = cropped, sizes
        if c.permute_p > 0:
            x = _apply(c.permute_p, x, segment_permutation(x, lengths, c.max_segments, generator),
                       generator)
        if c.scale_p > 0:
            x = _apply(c.scale_p, x, scaling(x, lengths, c.scale_sigma, generator), generator)
        if c.jitter_p > 0:
            x = _apply(c.jitter_p, x, jitter(x, lengths, c.jitter_sigma, generator), generator)
        if c.mask_p > 0:
            masked, _ = time_mask(x, lengths, c.mask_ratio, c.mask_span, generator)
            x = _apply(c.mask_p, x, masked, generator)
        return x, lengths
