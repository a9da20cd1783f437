"""Momentum (EMA) teachers, shared by MoCo, BYOL and DINO.

A teacher is a copy of online modules that is never trained by gradients: after every optimiser
step it moves a little towards them, ``target = m * target + (1 - m) * online`` (MoCo, He et al.
2020, eq. 2). A slowly moving target gives consistent keys (MoCo) or regression targets (BYOL,
DINO) without the collapse that copying the online weights outright would invite.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """Move ``target`` towards ``online`` in place: ``t = momentum * t + (1 - momentum) * o``.

    Parameters and floating-point buffers (BatchNorm running statistics) are averaged alike, as
    timm's ModelEmaV2 does, so a teacher used in eval mode has statistics that match its
    weights; integer buffers (BatchNorm's batch counter) are copied. Both modules must have the
    same structure.
    """
    weight = 1.0 - momentum
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o.detach().to(t.dtype), weight)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        if t.is_floating_point():
            t.lerp_(o.to(t.dtype), weight)
        else:
            t.copy_(o)


def cosine_momentum(base: float, progress: float, final: float = 1.0) -> float:
    """EMA momentum that rises from ``base`` to ``final`` along a half cosine over training.

    BYOL (Grill et al. 2020, sec. 3.2): ``1 - (1 - base) * (cos(pi * progress) + 1) / 2``; the
    teacher follows quickly early on, while the online network changes fast, and freezes at the
    end. ``final = base`` gives a constant momentum (MoCo v2).
    """
    progress = min(1.0, max(0.0, progress))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class MomentumTeacher(nn.Module):
    """Frozen copies of online modules, applied in sequence, that follow them by EMA.

    ``MomentumTeacher(encoder, projector, base_momentum=0.996)`` is the teacher of
    ``projector(encoder(x))``. Its parameters have ``requires_grad=False`` so the engine's
    optimiser (which takes only trainable parameters) never sees them; its forward pass runs
    without autograd. It stays in whatever train/eval mode the method is in: the papers run the
    teacher's BatchNorm on batch statistics during training, as here.
    """

    def __init__(
        self, *online: nn.Module, base_momentum: float, final_momentum: float = 1.0
    ) -> None:
        super().__init__()
        if not 0.0 <= base_momentum <= 1.0 or not 0.0 <= final_momentum <= 1.0:
            raise ValueError("EMA momentum must be in [0, 1]")
        self.net = nn.Sequential(*(copy.deepcopy(module) for module in online))
        self.net.requires_grad_(False)
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        # The last momentum used, for the step's logs: a tensor, so that a compiled step reads
        # it as an input (a float attribute would be a constant guarded on, and a schedule
        # that changes it every step would recompile the step every step). Not in the state
        # dict: update() sets it from the progress again.
        self.register_buffer("momentum", torch.tensor(float(base_momentum)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x)

    def update(self, progress: float, *online: nn.Module) -> float:
        """One EMA step towards ``online`` (the same modules, in the same order, as at
        construction) with the momentum scheduled at ``progress``; returns that momentum."""
        momentum = cosine_momentum(self.base_momentum, progress, self.final_momentum)
        self.momentum.fill_(momentum)
        for target, source in zip(self.net, online, strict=True):
            ema_update(target, source, momentum)
        return momentum
