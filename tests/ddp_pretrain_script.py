"""A tiny, deterministic pre-training that tests/test_ddp.py runs in 1 and in 2 processes.

Run as a script (``python tests/ddp_pretrain_script.py OUT DEVICES BATCH_SIZE``) it pre-trains
through ``selfsup.api.pretrain``; with DEVICES=2 Lightning's DDP launcher starts rank 1 by
running this script again. The method has no randomness (its second view is the mirrored
image) and no BatchNorm (CPU processes cannot synchronise its statistics), so 2 processes
with B samples each must follow one process with 2B exactly: same losses, same weights.
Each rank saves its final weights as ``OUT/weights-rank{R}.pt``.

A fourth argument names the method: ``ddp_test_mirror`` (default) or ``ddp_test_mocov2``, MoCo
v2 with the same mirrored views, whose queue must hold every rank's keys (``weights-rank{R}.pt``
holds the queue and its pointer too, as buffers of the method).
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

from selfsup import api
from selfsup.methods import METHODS, Method
from selfsup.methods.base import StepOutput
from selfsup.methods.losses import nt_xent
from selfsup.methods.mocov2 import MoCoV2
from selfsup.models import ENCODERS, ImageEncoder


@ENCODERS.register("ddp_test_mlp")
class TinyMLP(ImageEncoder):
    """Flattened pixels -> Linear -> ReLU -> 16-d embedding."""

    def __init__(self, in_channels: int = 1, mean=None, std=None, pixels: int = 64) -> None:
        super().__init__(in_channels, mean, std)
        self.embed_dim = 16
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * pixels, 32), nn.ReLU(), nn.Linear(32, 16)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(images))


@METHODS.register("ddp_test_mirror")
class MirrorContrast(Method):
    """NT-Xent between each image and its mirror image, through a linear projector."""

    default_encoder = "ddp_test_mlp"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.projector = nn.Linear(self.encoder.embed_dim, 8)

    def training_step(self, batch, generator) -> StepOutput:
        images = batch["images"].permute(0, 3, 1, 2).float() / 255
        views = torch.cat([images, images.flip(-1)])
        features = self.encoder(views)
        z1, z2 = self.projector(features).chunk(2)
        return StepOutput(loss=nt_xent(z1, z2, 0.5), embeddings=features[: len(images)].detach())


@METHODS.register("ddp_test_mocov2")
class MirrorMoCoV2(MoCoV2):
    """MoCo v2 whose two views are each image and its mirror image (no randomness)."""

    default_encoder = "ddp_test_mlp"

    def views(self, images: torch.Tensor, count: int, generator, augment=None) -> torch.Tensor:
        images = images.permute(0, 3, 1, 2).float() / 255
        return torch.cat([images, images.flip(-1)])


# A queue of 20 keys that a global batch of 16 does not divide, so the pointer wraps mid-batch;
# over 4 steps every slot is overwritten, and the later steps' negatives are earlier keys.
METHOD_OPTIONS = {
    "ddp_test_mirror": {},
    "ddp_test_mocov2": {"queue_size": 20, "hidden_dim": 32, "projection_dim": 8},
}


class SaveWeights(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.method.state_dict().items()}
        torch.save(state, self.out / f"weights-rank{trainer.global_rank}.pt")


def pretrain(
    out: str, devices: int, batch_size: int, method: str = "ddp_test_mirror", steps: int = 4
) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    api.pretrain(
        method,
        "digits",
        out=out,
        steps=steps,
        batch_size=batch_size,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        precision="32",
        lr=0.05,
        method_options=METHOD_OPTIONS[method],
        monitor_size=0,
        log_every_steps=1,
        checkpoint_steps=1000,
        progress=False,
        callbacks=[SaveWeights(out)],
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    pretrain(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5])
