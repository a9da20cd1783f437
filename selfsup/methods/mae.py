"""MAE: hide most patches of an image and reconstruct their pixels from the rest.

He, Chen, Xie, Li, Dollár, Girshick. "Masked Autoencoders Are Scalable Vision Learners", CVPR
2022. A random 75% of the patches is removed per image (sec. 3, "Masking"); the ViT encoder runs
on the visible quarter only (with its class token), which is what makes MAE cheap; a light
decoder gets the encoded visible tokens back in place, learned mask tokens in the holes and its
own fixed 2-D sin-cos positions, and predicts each patch's pixels; the loss is the mean squared
error on the masked patches only, against per-patch normalised pixels by default (table 1c:
"w/ norm" is better). Augmentation is random resized crop (scale 0.2-1) and flip only (sec.
A.1). The paper's decoder (8 blocks, 512 wide) is for ViT-B/L at 224 px; the default here is
one block, 128 wide: table 1a finds fine-tuning accuracy the same with a 1-block decoder (84.8
vs 84.9), and on ViT-Tiny at 32x32 a heavier decoder would eat the masking's saving (it runs
on all the patches).
Fine-tuning, not a linear probe, is the protocol that judges it (sec. 4, "partial
fine-tuning"): see ``selfsup/evaluate/finetune.py``.

The run directory receives a picture of what the model reconstructs (original / masked /
reconstruction with the visible patches pasted back, one column per image) every
``reconstruction_minutes`` as ``reconstructions/step_XXXXX.png`` and at the end as
``reconstruction.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch import nn

from selfsup import atomic
from selfsup.augment import to_float_images
from selfsup.errors import SelfsupError
from selfsup.methods.base import ImageMethod, StepOutput
from selfsup.methods.registry import METHODS
from selfsup.models.vit import Block, VisionTransformer, patchify, sincos_2d, unpatchify


@dataclass
class MAEOptions:
    mask_ratio: float = 0.75
    decoder_width: int = 128
    decoder_depth: int = 1
    decoder_heads: int = 4
    norm_pix_loss: bool = True
    # The reconstruction picture: how often (0: only at the end) and how many images.
    reconstruction_minutes: float = 2.0
    reconstruction_images: int = 8


@dataclass
class Masking:
    """One draw of random masking: ``keep`` (B, K) visible patch indices, ascending, and
    ``mask`` (B, N) 1.0 where the patch is hidden."""

    keep: torch.Tensor
    mask: torch.Tensor


def random_masking(
    batch: int, patches: int, ratio: float, generator: torch.Generator
) -> Masking:
    """Hide ``round(patches * ratio)`` patches of each sample, independently per sample: rank
    uniform noise per sample and keep the lowest-ranked (MAE's shuffle-and-keep, sec. 3)."""
    keep_count = patches - int(round(patches * ratio))
    noise = torch.rand(batch, patches, generator=generator)
    keep = noise.argsort(dim=1)[:, :keep_count].sort(dim=1).values
    mask = torch.ones(batch, patches)
    mask.scatter_(1, keep, 0.0)
    return Masking(keep=keep, mask=mask)


def masked_patch_loss(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, normalise: bool
) -> torch.Tensor:
    """Mean squared error per patch, averaged over the hidden patches only (float32).

    With ``normalise`` each target patch is standardised by its own mean and variance, so the
    model is not paid for predicting a patch's brightness but its structure (table 1c)."""
    target = target.float()
    if normalise:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (prediction.float() - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


@METHODS.register("mae")
class MAE(ImageMethod):
    """Masked autoencoder: ViT encoder on the visible patches, light decoder on all of them."""

    Options = MAEOptions
    default_encoder: ClassVar[str] = "vit_tiny"
    progressive_resolution: ClassVar[bool] = False  # one view, augmented directly
    augment_defaults: ClassVar[dict[str, Any]] = {
        "crop_scale": (0.2, 1.0),
        "jitter_p": 0.0,
        "grayscale_p": 0.0,
    }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        o = self.options
        if not isinstance(self.encoder, VisionTransformer):
            raise SelfsupError(
                f"method mae needs a ViT encoder (vit_tiny, vit_small), not "
                f"{type(self.encoder).__name__}; pass --encoder vit_tiny"
            )
        patch = self.encoder.patch_size
        if self.info.image_size % patch:
            raise SelfsupError(
                f"method mae: image size {self.info.image_size} is not a multiple of the "
                f"encoder's patch size {patch}"
            )
        self.grid = self.info.image_size // patch
        count = self.grid * self.grid
        hidden = int(round(count * o.mask_ratio))
        if not 0 < hidden < count:
            raise SelfsupError(
                f"options of method MAE: mask_ratio={o.mask_ratio} hides {hidden} of {count} "
                "patches; it must hide at least one and leave at least one"
            )
        if o.decoder_depth < 1 or o.decoder_heads < 1:
            raise SelfsupError(
                "options of method MAE: decoder_depth and decoder_heads must be at least 1"
            )
        if o.decoder_width <= 0 or o.decoder_width % 4 or o.decoder_width % o.decoder_heads:
            raise SelfsupError(
                f"options of method MAE: decoder_width={o.decoder_width} must be a positive "
                f"multiple of 4 and of decoder_heads={o.decoder_heads}"
            )
        if o.reconstruction_minutes < 0 or o.reconstruction_images < 1:
            raise SelfsupError(
                "options of method MAE: reconstruction_minutes must be >= 0 and "
                "reconstruction_images >= 1"
            )
        width = self.encoder.embed_dim
        self.decoder_embed = nn.Linear(width, o.decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, o.decoder_width))
        self.decoder_blocks = nn.Sequential(
            *(Block(o.decoder_width, o.decoder_heads, 4.0) for _ in range(o.decoder_depth))
        )
        self.decoder_ln = nn.LayerNorm(o.decoder_width)
        self.decoder_pred = nn.Linear(o.decoder_width, patch * patch * self.info.channels)
        cells = torch.arange(self.grid)
        self.register_buffer(
            "decoder_pos", sincos_2d(cells, cells, o.decoder_width).unsqueeze(0), persistent=False
        )
        nn.init.normal_(self.mask_token, std=0.02)
        for module in (self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)  # as MAE's decoder
                nn.init.zeros_(module.bias)

    def decode(self, encoded: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Predicted pixels (B, N, p*p*C) of every patch from the encoded visible tokens
        (B, 1 + K, width; class token first) and their grid indices ``keep`` (B, K)."""
        x = self.decoder_embed(encoded)
        batch, count = len(x), self.grid * self.grid
        holes = self.mask_token.to(x.dtype).expand(batch, count, -1)
        index = keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        full = holes.scatter(1, index, x[:, 1:])  # visible tokens back in their places
        full = full + self.decoder_pos.to(x.dtype)
        x = torch.cat([x[:, :1], full], dim=1)
        x = self.decoder_ln(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])

    def forward_masked(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, Masking, torch.Tensor]:
        """Float images (B, C, H, W) in [0, 1] -> (loss, prediction, masking, encoded)."""
        masking = random_masking(len(images), self.grid * self.grid, self.options.mask_ratio,
                                 generator)
        keep = masking.keep.to(images.device)
        encoded = self.encoder.encode_subset(images, keep)
        prediction = self.decode(encoded, keep)
        target = patchify(self.encoder.normalise(images), self.encoder.patch_size)
        loss = masked_patch_loss(
            prediction, target, masking.mask.to(images.device), self.options.norm_pix_loss
        )
        return loss, prediction, masking, encoded

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        images = self.augment(batch["images"], generator)
        loss, _, _, encoded = self.forward_masked(images, generator)
        return StepOutput(loss=loss, embeddings=encoded[:, 0].detach())

    @torch.no_grad()
    def reconstruct(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(original, masked, reconstruction) float images in [0, 1] for uint8 or float input.

        Masked patches are grey in ``masked``; ``reconstruction`` shows the predicted patches
        with the visible ones pasted back (the paper's figures). With normalised-pixel targets
        a prediction is brought back to pixels with its true patch's mean and variance, as the
        paper's visualisations do: the picture shows structure, not predicted brightness."""
        original = to_float_images(images)
        _, prediction, masking, _ = self.forward_masked(original, generator)
        p = self.encoder.patch_size
        target = patchify(self.encoder.normalise(original), p)
        prediction = prediction.float()
        if self.options.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
            prediction = prediction * std + mean
        height, width = original.shape[-2:]
        hidden = masking.mask.unsqueeze(-1).to(original.device)
        pasted = unpatchify(target * (1 - hidden) + prediction * hidden, p, height, width)
        reconstruction = (pasted * self.encoder.std + self.encoder.mean).clamp(0, 1)
        visible = unpatchify(patchify(original, p) * (1 - hidden) + 0.5 * hidden, p, height, width)
        return original, visible, reconstruction

    def callbacks(self, run: Any) -> list[pl.Callback]:
        """The periodic reconstruction picture (the engine adds these to its Trainer)."""
        return [
            ReconstructionPictures(
                self,
                Path(run.path),
                every_minutes=self.options.reconstruction_minutes,
                count=self.options.reconstruction_images,
            )
        ]


def save_grid(path: Path, rows: list[torch.Tensor], scale: int = 4) -> None:
    """Write image rows (each a (B, C, H, W) batch in [0, 1]) as one PNG grid, each image
    enlarged ``scale`` times (nearest neighbour, so patches stay sharp) with a 2-pixel gap."""
    gap = 2
    batch, channels, height, width = rows[0].shape
    cell_h, cell_w = height * scale, width * scale
    canvas = np.full(
        (len(rows) * (cell_h + gap) + gap, batch * (cell_w + gap) + gap, 3), 255, np.uint8
    )
    for r, row in enumerate(rows):
        pixels = (row.float().clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        if channels == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        for c in range(batch):
            top, left = gap + r * (cell_h + gap), gap + c * (cell_w + gap)
            canvas[top : top + cell_h, left : left + cell_w] = pixels[c, ..., :3]
    with atomic.atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")


class ReconstructionPictures(pl.Callback):
    """Writes ``reconstructions/step_XXXXX.png`` every ``every_minutes`` of training (0: none
    in between) and ``reconstruction.png`` (plus the last step's file) when training ends.

    The pictured images are the first ``count`` of the first batch this callback sees, and each
    picture masks them with the same fixed seed, so successive pictures differ only by what the
    model has learnt."""

    def __init__(self, method: MAE, run_path: Path, every_minutes: float, count: int = 8) -> None:
        self.method = method
        self.run_path = Path(run_path)
        self.every_seconds = every_minutes * 60
        self.count = count
        self.images: torch.Tensor | None = None
        self.last_written = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last_written = time.monotonic()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.images is None:
            self.images = batch["images"][: self.count].clone()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.every_seconds > 0 and time.monotonic() - self.last_written >= self.every_seconds:
            self.write(trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self.write(trainer.global_step)
        if path is not None:
            with atomic.atomic_path(self.run_path / "reconstruction.png") as tmp:
                tmp.write_bytes(path.read_bytes())

    def write(self, step: int) -> Path | None:
        """Picture of the current model's reconstructions; None before any batch was seen."""
        self.last_written = time.monotonic()
        if self.images is None:
            return None
        path = self.run_path / "reconstructions" / f"step_{step:05d}.png"
        write_reconstruction(self.method, self.images, path)
        return path


def write_reconstruction(method: MAE, images: torch.Tensor, path: Path, seed: int = 0) -> None:
    """Reconstruct ``images`` under a fixed masking seed and save the three-row grid."""
    was_training = method.training
    method.eval()
    try:
        rows = method.reconstruct(images, torch.Generator().manual_seed(seed))
    finally:
        method.train(was_training)
    save_grid(path, list(rows))
