"""ResNets with a CIFAR stem (He et al. 2016), sized by configuration for CPU budgets.

The CIFAR stem (one 3x3 convolution, stride 1, no max-pool) keeps spatial detail on 32x32 and
smaller inputs, as in SimCLR's CIFAR-10 experiments (Chen et al. 2020, appendix B.9).
``resnet18`` is the standard 11M-parameter network; ``resnet_small`` is the same family narrower
and shallower, for runs that must finish in minutes on two cores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.models.base import ImageEncoder
from selfsup.models.registry import ENCODERS


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (projected when the shape changes)."""

    def __init__(self, in_width: int, out_width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_width, out_width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_width)
        self.conv2 = nn.Conv2d(out_width, out_width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_width)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_width != out_width:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_width, out_width, 1, stride, bias=False), nn.BatchNorm2d(out_width)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self._conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))

    def _conv1(self, x: torch.Tensor) -> torch.Tensor:
        """conv1, run with stride 1 on a 1x1 input, where that is the same convolution.

        On a 1x1 input a 3x3 convolution with padding 1 uses only its centre tap, so stride 2
        and stride 1 give the same 1x1 output. torch 2.13's CPU bf16 kernel for the stride-2
        case returns a garbage weight gradient there (up to 1e37, inf or nan, varying from run
        to run; digits' 8x8 images reach the last stage at 1x1), which stride 1 avoids.
        """
        if self.conv1.stride != (1, 1) and x.shape[-2:] == (1, 1):
            return F.conv2d(x, self.conv1.weight, None, 1, 1)
        return self.conv1(x)


class ResNet(ImageEncoder):
    """CIFAR-stem ResNet of BasicBlocks; ``depths`` blocks per stage, ``widths`` channels."""

    def __init__(
        self,
        in_channels: int = 3,
        depths: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__(in_channels, mean, std)
        if len(depths) != len(widths):
            raise ValueError("depths and widths need one entry per stage")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_width = widths[0]
        for stage, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            blocks = []
            for block in range(depth):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_width, width, stride))
                in_width = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.embed_dim = in_width
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last stage's (B, embed_dim, h, w) map, before pooling."""
        return self.stages(self.stem(self.normalise(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_map(images).mean(dim=(2, 3))


# mean and std are spelt out rather than passed as **kwargs so that the signature lists exactly
# the options a user may set (the engine names them in its error for a bad encoder option).
@ENCODERS.register("resnet18")
def resnet18(
    in_channels: int = 3,
    width: int = 64,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> ResNet:
    """ResNet-18 with a CIFAR stem: 4 stages of 2 blocks, widths 64-128-256-512 (512-d output)."""
    return ResNet(in_channels, (2, 2, 2, 2), [width * m for m in (1, 2, 4, 8)], mean, std)


@ENCODERS.register("resnet_small")
def resnet_small(
    in_channels: int = 3,
    width: int = 32,
    depths: Sequence[int] = (1, 1, 1, 1),
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> ResNet:
    """A CPU-budget ResNet: one block per stage, widths 32-64-128-256 (256-d output) by default."""
    return ResNet(in_channels, tuple(depths), [width * m for m in (1, 2, 4, 8)], mean, std)
