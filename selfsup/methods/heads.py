"""Heads that sit on top of an encoder during pre-training and are thrown away afterwards."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """Linear -> BatchNorm -> ReLU -> Linear: SimCLR's non-linear projection g(h).

    Chen et al. 2020 (sec. 4.2) show the loss is better applied after such a head, while the
    representation before it (h) transfers better; the head is discarded after pre-training.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
