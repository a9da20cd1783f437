"""DINO: self-distillation of an EMA teacher into a student across multi-crop views.

Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin. "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021.

The teacher sees only the global views; the student sees all views and must reproduce the
teacher's (centred, sharpened) distribution over prototypes from every other view, so
small local crops learn to predict what the whole image holds. Centring and sharpening pull
in opposite directions and together avoid both kinds of collapse (one prototype / uniform).

Defaults and their sources (paper sec. 3 and appendix; the official ``main_dino.py``):
- head: MLP 2048 -> 2048 -> 256 bottleneck with GELU, then a weight-normalised layer to
  ``out_dim`` prototypes: 4096 here instead of 65536 (solo-learn's CIFAR setting; a 65536-way
  softmax on every view would dominate a CPU step).
- temperatures: student 0.1; teacher 0.04 rising linearly to 0.07 over the first 30% of
  training (the paper's ViT-S schedule: 0.04 -> 0.07 over 30 epochs), then 0.07.
- centre: EMA of the teacher's batch-mean output with momentum 0.9.
- teacher momentum 0.996 rising to 1 along a cosine.
- multi-crop: 2 global crops at the data's size and 4 local crops at half of it (the paper
  uses 224 / 96 px and 8-10 local crops; 4 keeps a CPU step at about 3 global views of
  compute). Crop areas: global 14-100%, local 5-14% (the split at 0.14 of SwAV, Caron et al.
  2020; DINO's code uses 0.4 for 224-px images, too coarse a range for 32x32 data). The local
  size is rounded down to a multiple of a ViT's patch size.
- augmentation: BYOL's asymmetric recipe on the two global views, without Gaussian blur at
  32x32 (solo-learn's CIFAR recipe); local crops get the common recipe, without solarization.
Not done: freezing the last layer during the first epoch (an optional stabiliser in the
official code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup import distributed
from selfsup.methods.base import BYOL_COLOUR, BYOL_VIEWS, ImageMethod, StepOutput
from selfsup.methods.heads import DINOHead
from selfsup.methods.losses import dino_loss
from selfsup.methods.momentum import MomentumTeacher
from selfsup.methods.registry import METHODS


@dataclass
class DINOOptions:
    out_dim: int = 4096
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    student_temperature: float = 0.1
    teacher_temperature: float = 0.07
    warmup_teacher_temperature: float = 0.04
    teacher_temperature_warmup: float = 0.3  # fraction of training
    center_momentum: float = 0.9
    momentum: float = 0.996
    local_crops: int = 4
    local_crop_size: int | None = None  # None: half the data's image size
    local_crop_scale: tuple[float, float] = (0.05, 0.14)


@METHODS.register("dino")
class DINO(ImageMethod):
    """Student encoder + DINO head; their EMA copy is the teacher; a running centre."""

    Options = DINOOptions
    augment_defaults = {"crop_scale": (0.14, 1.0), **BYOL_COLOUR}
    view_augment_defaults = BYOL_VIEWS

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        o = self.options
        if o.local_crop_size is None:
            patch = getattr(self.encoder, "patch_size", 1)
            o.local_crop_size = max(patch, self.info.image_size // 2 // patch * patch)
        self.local_augment = self.augment_variant(
            crop_scale=o.local_crop_scale, output_size=o.local_crop_size, solarize_p=0.0
        )
        self.head = DINOHead(self.encoder.embed_dim, o.out_dim, o.hidden_dim, o.bottleneck_dim)
        self.teacher = MomentumTeacher(self.encoder, self.head, base_momentum=o.momentum)
        self.register_buffer("center", torch.zeros(1, o.out_dim))
        # Progress as of the last step, for the teacher temperature (a buffer: resumes with it).
        self.register_buffer("progress", torch.zeros(()))

    def teacher_temperature(self) -> torch.Tensor:
        """Linear warm-up from ``warmup_teacher_temperature`` to ``teacher_temperature``.

        A tensor computed from the ``progress`` buffer: a compiled step reads it as an input,
        where a Python float would be a constant that recompiles the step at every new value.
        """
        o = self.options
        if o.teacher_temperature_warmup <= 0:
            return torch.full((), o.teacher_temperature, device=self.progress.device)
        ramp = (self.progress / o.teacher_temperature_warmup).clamp(max=1.0)
        return o.warmup_teacher_temperature + ramp * (
            o.teacher_temperature - o.warmup_teacher_temperature
        )

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        o = self.options
        images = batch["images"]
        n = len(images)
        global_views, local_views = self.multi_crop(
            images, generator, 2, self.local_augment, o.local_crops
        )
        features = self.encoder(global_views)
        student = [self.head(features)]
        if local_views is not None:
            student.append(self.head(self.encoder(local_views)))
        student_scores = torch.cat(student).view(-1, n, o.out_dim)  # (2 + local, B, K)
        teacher_scores = self.teacher(global_views).float().view(2, n, o.out_dim)
        temperature = self.teacher_temperature()
        loss = dino_loss(
            student_scores, teacher_scores, self.center, o.student_temperature, temperature
        )
        self._update_center(teacher_scores)
        return StepOutput(
            loss=loss,
            embeddings=features[:n].detach(),
            logs={"teacher_temperature": temperature, "momentum": self.teacher.momentum},
        )

    @torch.no_grad()
    def _update_center(self, teacher_scores: torch.Tensor) -> None:
        """``center = m * center + (1 - m) * mean teacher output`` (paper, eq. 4)."""
        update_center(self.center, teacher_scores, self.options.center_momentum)

    def on_train_step_end(self, progress: float) -> None:
        self.teacher.update(progress, self.encoder, self.head)
        self.progress.fill_(progress)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_scores: torch.Tensor, momentum: float) -> None:
    """Move ``center`` (1, K) towards the teacher's mean output over the *global* batch, all
    views included: under DDP every rank's rows count (as in the official code's all-reduce),
    so the centre, like the teacher, stays identical on all ranks."""
    batch_center = distributed.global_mean(teacher_scores.reshape(-1, teacher_scores.shape[-1]))
    center.lerp_(batch_center.unsqueeze(0).to(center.dtype), 1 - momentum)
