"""MoCo v2: contrast each query with its key from a momentum encoder and a queue of old keys.

He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020; Chen, Fan, Girshick, He. "Improved Baselines with Momentum Contrastive
Learning", arXiv:2003.04297, 2020 (v2: MLP head, temperature 0.2, stronger augmentation).

The queue decouples the number of negatives from the batch size, which is why MoCo suits small
CPU batches; the momentum (EMA) key encoder keeps the queued keys consistent with each other.

Defaults and their sources:
- MLP head 2048 -> ReLU -> 128, no BatchNorm (v2, sec. 2); InfoNCE temperature 0.2 (v2).
- queue of 4096 keys and momentum 0.99 (constant): the official MoCo CIFAR-10 demo's setting
  (the ImageNet values 65536 and 0.999 are for 1.28M images and long schedules; with 0.999 a
  few-minute CPU run would hardly move its key encoder). The queue is clamped to half the
  dataset when the engine passes ``DataInfo.num_images``: a queue that spans the dataset holds
  old keys of the query's own image as negatives.
- asymmetric loss (the query from view 1, the key from view 2) as in the paper;
  ``symmetric=True`` adds the swapped term (the CIFAR demo's option; twice the compute).
- augmentation: SimCLR's recipe with crops from 20% of the area (v2's "aug+"), without its
  Gaussian blur at 32x32 (as SimCLR's CIFAR setting).
Under DDP every process enqueues the keys of the whole global batch, gathered from all ranks
(Algorithm 1 and the official code's ``concat_all_gather``), so the ranks share one queue and
two processes with B samples each follow one process with 2B (checked in tests/test_ddp.py).
Not done: Shuffle-BN (v1, sec. 3.3), which needs several devices; on one device the key
encoder's BatchNorm sees the same batch as the query encoder's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from selfsup import distributed
from selfsup.errors import SelfsupError
from selfsup.methods.base import ImageMethod, StepOutput
from selfsup.methods.heads import ProjectionHead
from selfsup.methods.losses import info_nce
from selfsup.methods.momentum import MomentumTeacher
from selfsup.methods.registry import METHODS


@dataclass
class MoCoV2Options:
    temperature: float = 0.2
    queue_size: int = 4096
    momentum: float = 0.99
    projection_dim: int = 128
    hidden_dim: int = 2048
    symmetric: bool = False


@METHODS.register("mocov2")
class MoCoV2(ImageMethod):
    """Query encoder + MLP head, their EMA copy as the key encoder, a FIFO queue of keys."""

    Options = MoCoV2Options
    augment_defaults = {"crop_scale": (0.2, 1.0)}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        o = self.options
        if o.queue_size < 1:
            raise SelfsupError(f"mocov2: queue_size must be at least 1, not {o.queue_size}")
        if self.info.num_images is not None:
            o.queue_size = max(1, min(o.queue_size, self.info.num_images // 2))
        self.projector = ProjectionHead(
            self.encoder.embed_dim, o.hidden_dim, o.projection_dim, batch_norm=False
        )
        self.teacher = MomentumTeacher(
            self.encoder, self.projector, base_momentum=o.momentum, final_momentum=o.momentum
        )
        # Random unit vectors until real keys replace them, as in the official code.
        queue = F.normalize(torch.randn(o.queue_size, o.projection_dim), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        images = batch["images"]
        n = len(images)
        views = self.views(images, 2, generator)
        queue = self.queue.clone()  # this step's negatives: the keys of earlier steps
        t = self.options.temperature
        if self.options.symmetric:
            keys = self.teacher(views)
            features = self.encoder(views)
            queries = self.projector(features)
            pairs = [(queries[:n], keys[n:]), (queries[n:], keys[:n])]
            new_keys = [keys[:n], keys[n:]]
        else:
            keys = self.teacher(views[n:])
            features = self.encoder(views[:n])
            pairs = [(self.projector(features), keys)]
            new_keys = [keys]
        # Every rank's keys in rank order, i.e. the global batch's as one process would hold
        # them (each view gathered on its own so the order is that of one process too).
        gathered = [distributed.all_gather(k.detach())[0] for k in new_keys]
        # Sum over this rank's queries, scaled so that the ranks' values average to the mean
        # over the global batch (DDP averages gradients; batches may differ in size).
        terms = sum(info_nce(q, k, t, queue) for q, k in pairs) * n
        loss = distributed.local_share(terms, len(gathered[0]))
        self._enqueue(torch.cat(gathered))
        return StepOutput(
            loss=loss,
            embeddings=features[:n].detach(),
            logs={"momentum": self.teacher.momentum},
        )

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Write the newest keys over the oldest (ring buffer; wraps around the end).

        ``keys`` are the global batch's: every rank writes the same keys at the same slots, so
        the ranks' queues stay identical (MoCo's ``concat_all_gather``). A batch longer than
        the queue keeps its last ``len(queue)`` keys.
        """
        keys = F.normalize(keys.float(), dim=1)[-len(self.queue) :]
        slots = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % len(self.queue)
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % len(self.queue))

    def on_train_step_end(self, progress: float) -> None:
        self.teacher.update(progress, self.encoder, self.projector)
