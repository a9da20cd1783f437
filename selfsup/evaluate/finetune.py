"""Fine-tuning: the whole pre-trained encoder plus a linear head, trained on the labels.

Masked image modelling is judged this way, not by frozen-feature probes: MAE's features are
weak under a linear probe and strong after fine-tuning (He et al. 2022, sec. 4 and fig. 9). The
recipe follows the paper's fine-tuning one (its appendix A.2, BEiT's protocol) at CPU scale:
AdamW (weight decay 0.05), linear warm-up then cosine decay over the budget, layer-wise
learning-rate decay for ViTs (Clark et al. 2020, ELECTRA; Bao et al. 2022, BEiT: block i of L
gets ``lr * decay^(L + 1 - i)``, so early blocks move little), label smoothing 0.1, light
augmentation (random resized crop and flip, batched), bf16 autocast. Mixup, CutMix, RandAugment
and drop path are left out: on a few CPU minutes they cost more than they give.

The reference is the same routine on the same architecture randomly initialised, with the same
labels and the same budget (``from_scratch``): the from-scratch supervised ViT.

A validation split, stratified, is carved from the labelled training data; the only choice made
on it is which epoch's weights to keep (the best validation accuracy). The test split only
scores.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup import compiling
from selfsup.augment import BatchedImageAugment, ImageAugmentConfig
from selfsup.config import options_dataclass
from selfsup.data.base import TrainData
from selfsup.data.datasets import ResumableLoader, keep_batch
from selfsup.engine import build_trainer, fused_adamw
from selfsup.errors import SelfsupError
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.plan import PlanBar
from selfsup.evaluate.probes import linear_head, stratified_split
from selfsup.models import build_encoder
from selfsup.models.vit import VisionTransformer

log = logging.getLogger("selfsup")

#: Light augmentation: the supervised baseline's crop range, flip, no colour (He et al. 2016).
FINETUNE_AUGMENT: dict[str, Any] = {"crop_scale": (0.35, 1.0), "jitter_p": 0.0, "grayscale_p": 0.0}


#: How a fine-tuning head may start (FinetuneConfig.head_init).
HEAD_INITS = ("random", "probe")
#: A text encoder's fine-tuning head starts as a probe (LP-FT): on IMDB at 100 labels per class
#: it fine-tunes MiniLM 3 points higher than a random head (benchmarks/README.md, the diagnosis).
TEXT_HEAD_INIT = "probe"
#: An image encoder's: near zero, MAE's recipe. A probe start moved CIFAR-10 fine-tuning of a
#: VICReg ResNet by +0.3 points on average (-1.1 to +1.3 over four subsets of 500 and 5,000
#: labels, a carve of cifar10/train: benchmarks/results/cifar10_finetune_recipe.md): not enough
#: to change the default.
IMAGE_HEAD_INIT = "random"


@dataclass
class FinetuneConfig:
    """A fine-tuning run; the first of ``minutes``, ``epochs`` and ``steps`` reached ends it."""

    minutes: float | None = 5.0
    epochs: int | None = None
    steps: int | None = None  # what a from-scratch run is given: its pre-trained twin's steps
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float | None = 0.75  # ViTs only; None or 1.0: one learning rate for all
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    val_fraction: float = 0.1
    precision: str = "bf16"
    # Convolution nets' weights and batches channels-last, as pre-training runs them
    # (PretrainConfig.channels_last): oneDNN's native layout (benchmarks/finetune_layout.py).
    channels_last: bool = True
    seed: int = 0
    augment_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = False
    # The head's start: "random" (near zero), or "probe": a linear probe fitted on the frozen
    # features of the fine-tuning part (LP-FT, probes.linear_head), itself kept unless an
    # epoch beats it on the validation carve.
    head_init: str = "random"
    # Where the trainer runs (Lightning's names, as in PretrainConfig). The loader does not
    # split the data over processes: more than one device repeats the same batches on each.
    accelerator: str = "cpu"
    devices: int = 1
    # torch.compile the classifier's training forward: auto|on|off. On a CPU ``auto`` stays
    # eager: compiled, a fine-tuning step ran 1.04-1.07x as fast as eager after 15-33 s of
    # compiling (benchmarks/compiled_eval.py), which a 5-minute budget does not win back.
    # Image fine-tuning only (text is eager: its batches change width).
    compile: str = "auto"

    def __post_init__(self) -> None:
        if self.minutes is None and self.epochs is None and self.steps is None:
            raise SelfsupError("fine-tuning needs a budget: minutes, epochs or steps")
        for name in ("minutes", "epochs", "steps", "batch_size", "lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SelfsupError(f"fine-tuning: {name} must be positive, not {value}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise SelfsupError(
                f"fine-tuning: layer_decay must be in (0, 1], not {self.layer_decay}"
            )
        if not 0 <= self.warmup_fraction < 1:
            raise SelfsupError(
                f"fine-tuning: warmup_fraction must be in [0, 1), not {self.warmup_fraction}"
            )
        if self.precision not in ("bf16", "32"):
            raise SelfsupError(
                f"fine-tuning: precision must be 'bf16' or '32', not {self.precision!r}"
            )
        if self.devices < 1:
            raise SelfsupError(f"fine-tuning: devices must be at least 1, not {self.devices}")
        if self.compile not in compiling.CHOICES:
            raise SelfsupError(f"fine-tuning: compile must be one of "
                               f"{', '.join(compiling.CHOICES)}, not {self.compile!r}")
        if self.head_init not in HEAD_INITS:
            raise SelfsupError(
                f"fine-tuning: head_init must be one of {', '.join(HEAD_INITS)}, "
                f"not {self.head_init!r}"
            )


def layer_ids(encoder: nn.Module) -> dict[str, int]:
    """Depth of each encoder parameter for layer-wise decay: embeddings 0, block i is i + 1,
    the final norm (and the head, outside the encoder) depth + 1. Empty for non-ViTs."""
    if not isinstance(encoder, VisionTransformer):
        return {}
    depth = len(encoder.blocks)
    ids = {}
    for name, _ in encoder.named_parameters():
        if name.startswith("blocks."):
            ids[name] = int(name.split(".")[1]) + 1
        elif name.startswith(("patch_embed", "cls_token", "pos_table")):
            ids[name] = 0
        else:
            ids[name] = depth + 1
    return ids


def parameter_groups(
    encoder: nn.Module, head: nn.Module, weight_decay: float, layer_decay: float | None
) -> list[dict[str, Any]]:
    """AdamW groups with an ``lr_scale`` each: layer-wise decay (ViTs) and no weight decay on
    biases, norms, the class token and position table (as BEiT and MAE do)."""
    ids = layer_ids(encoder)
    top = max(ids.values(), default=0)
    decay = layer_decay if layer_decay is not None and ids else 1.0
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    named = [(f"encoder.{n}", p, ids.get(n, top)) for n, p in encoder.named_parameters()]
    named += [(f"head.{n}", p, top) for n, p in head.named_parameters()]
    for name, parameter, layer in named:
        if not parameter.requires_grad:
            continue
        shrink = parameter.ndim > 1 and not name.endswith(("cls_token", "pos_table"))
        group = groups.setdefault(
            (layer, shrink),
            {
                "params": [],
                "weight_decay": weight_decay if shrink else 0.0,
                "lr_scale": decay ** (top - layer),
            },
        )
        group["params"].append(parameter)
    return list(groups.values())


def warmup_cosine(progress: float, warmup: float) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to 0 at progress 1."""
    if progress < warmup:
        return (progress + 1e-3) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))))


class Classifier(nn.Module):
    """Encoder + linear head; the head starts near zero (MAE initialises it with std 2e-5)."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


class FinetuneModule(pl.LightningModule):
    """Lightning adapter: schedule over the budget, epoch-end validation, best weights kept.

    ``keep_start``: the weights fine-tuning starts from (an LP-FT probe head) are scored on the
    validation carve first, as epoch -1, and kept unless an epoch beats them, so the result
    never falls below its start on that carve.
    """

    def __init__(
        self,
        model: Classifier,
        config: FinetuneConfig,
        val_data: Any,
        steps_per_epoch: int,
        *,
        keep_start: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.keep_start = keep_start
        self.config = config
        self.val_data = val_data
        self.steps_per_epoch = steps_per_epoch
        augment = {**FINETUNE_AUGMENT, **config.augment_options}
        self.augment = BatchedImageAugment(
            options_dataclass(ImageAugmentConfig, augment, "fine-tuning augment_options")
        )
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.started = time.monotonic()
        self.best_accuracy = -1.0
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[float] = []
        self.checked_at_step = -1
        # The classifier's training forward, compiled where config.compile resolves to on.
        self.compiled: compiling.CompiledStep | None = None
        if finetune_compile(config, steps_per_epoch) == "on":
            self.compiled = compiling.CompiledStep(model, "the fine-tuning step",
                                                   strict=config.compile == "on")

    def progress(self) -> float:
        c = self.config
        fractions = [0.0]
        if c.epochs:
            fractions.append(self.trainer.global_step / (c.epochs * self.steps_per_epoch))
        if c.steps:
            fractions.append(self.trainer.global_step / c.steps)
        if c.minutes:
            fractions.append((time.monotonic() - self.started) / (c.minutes * 60))
        return min(1.0, max(fractions))

    def on_train_start(self) -> None:
        self.started = time.monotonic()
        if self.keep_start:
            self.keep_if_best(-1)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        scale = warmup_cosine(self.progress(), self.config.warmup_fraction)
        for group in self.optimizers().param_groups:
            group["lr"] = self.config.lr * scale * group["lr_scale"]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images = self.augment(batch["images"], self.generator)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = (self.compiled or self.model)(images)
        loss = F.cross_entropy(
            logits.float(), batch["labels"], label_smoothing=self.config.label_smoothing
        )
        self.log("finetune/loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.keep_if_best(self.trainer.current_epoch)

    def keep_if_best(self, epoch: int) -> None:
        accuracy = accuracy_on(self.model, self.val_data, self.config.precision)
        self.history.append(accuracy)
        self.checked_at_step = self.trainer.global_step
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = accuracy, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip by the global norm directly, as pre-training does: Lightning's mixed-precision
        plugin refuses to clip for a fused optimizer (an fp16 scaler would have to unscale
        first); bf16 has no scaler, so these gradients are the true ones."""
        if gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), gradient_clip_val)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = parameter_groups(
            self.model.encoder, self.model.head, self.config.weight_decay, self.config.layer_decay
        )
        fused = fused_adamw(p for group in groups for p in group["params"])
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, 0.999), fused=fused)


def finetune_compile(config: FinetuneConfig, steps_per_epoch: int) -> str:
    """``on`` or ``off`` for a fine-tuning run: ``auto`` compiles only on GPUs, where it is
    expected to pay (not yet measured: benchmarks/gpu_check.py has not run; on a CPU it was
    measured not to), and only for budgets long enough to win the compilation back."""
    on_gpu = config.accelerator in ("gpu", "auto") and torch.cuda.is_available()
    bounds = [config.steps, None if config.epochs is None else config.epochs * steps_per_epoch]
    steps = min((b for b in bounds if b is not None), default=None)
    return compiling.resolve(config.compile, minutes=config.minutes, steps=steps,
                             device="cuda" if on_gpu else "cpu", pays=on_gpu)


@torch.no_grad()
def accuracy_on(
    model: nn.Module, data: TrainData, precision: str, batch_size: int = 512
) -> float:
    """Top-1 accuracy of ``model`` on the un-augmented inputs of ``data`` (eval mode)."""
    assert data.labels is not None
    was_training = model.training
    model.eval()
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    correct = 0
    try:
        for start in range(0, len(data), batch_size):
            rows = np.arange(start, min(start + batch_size, len(data)))
            with autocast:
                predicted = model(data.inputs(rows)).argmax(1).numpy()
            correct += int((predicted == data.labels[rows]).sum())
    finally:
        model.train(was_training)
    return correct / max(1, len(data))


def finetune(
    encoder: nn.Module, train: TrainData, test: TrainData, config: FinetuneConfig
) -> dict[str, Any]:
    """Fine-tune ``encoder`` (changed in place) with a new linear head on ``train``'s labels;
    return test accuracy and how it was reached."""

    if train.labels is None or test.labels is None:
        raise SelfsupError("fine-tuning needs labelled training and test data")
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    fit_idx, val_idx = stratified_split(train.labels, config.val_fraction, config.seed)
    fit_data = train.subset(fit_idx, f"{train.source} (fine-tuning part)")
    val_data = train.subset(val_idx, f"{train.source} (validation part)")
    batch_size = min(config.batch_size, len(fit_data))
    loader = ResumableLoader(
        fit_data.batch_dataset(with_labels=True),
        batch_size=batch_size,
        seed=config.seed,
        drop_last=True,
        collate_fn=keep_batch,
    )
    pl.seed_everything(config.seed, verbose=False)
    model = Classifier(encoder, num_classes)
    head = probe_head(model, fit_data, config) if config.head_init == "probe" else None
    module = FinetuneModule(model, config, val_data, len(loader), keep_start=head is not None)
    trainer = finetune_trainer(config, gradient_clip_val=3.0)
    seconds = fit_keeping_best(trainer, module, model, loader)
    accuracy = accuracy_on(model, test, config.precision)
    return {
        "accuracy": accuracy,
        **fit_summary(trainer, module, loader, seconds),
        "images_per_s": trainer.global_step * batch_size / max(seconds, 1e-9),
        "num_train": len(fit_data),
        "num_val": len(val_data),
        "num_test": len(test),
        "head": {"init": config.head_init, **(head or {})},
        "start_kept": module.best_epoch == -1,
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"},
    }


def start_head(head: nn.Linear, features: np.ndarray, labels: np.ndarray, seed: int
               ) -> dict[str, Any]:
    """Set ``head`` to a linear probe of frozen ``features`` (probes.linear_head, C by 5-fold
    cross-validation): LP-FT's first stage. Returns how the probe was chosen."""
    weight, bias, chosen = linear_head(features, labels, head.out_features, seed=seed)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    return chosen


def probe_head(model: Classifier, fit: TrainData, config: FinetuneConfig) -> dict[str, Any]:
    """``model.head`` as a linear probe of the frozen encoder's features of ``fit`` (the
    fine-tuning part; the validation carve unseen)."""
    assert fit.labels is not None
    features = extract_features(model.encoder, fit, precision=config.precision)
    return start_head(model.head, features, fit.labels, config.seed)


def finetune_trainer(config: FinetuneConfig, *, gradient_clip_val: float) -> pl.Trainer:
    """The engine's Trainer for one fine-tuning run: epochs, steps and minutes from the
    config."""
    return build_trainer(
        accelerator=config.accelerator, devices=config.devices, precision=config.precision,
        max_epochs=config.epochs, max_steps=config.steps,
        max_time=timedelta(minutes=config.minutes) if config.minutes else None,
        progress=config.progress, gradient_clip_val=gradient_clip_val,
    )


def fit_summary(trainer: pl.Trainer, module: FinetuneModule, loader: Any,
                seconds: float) -> dict[str, Any]:
    """What every fine-tuning result records of its fit: the epoch kept and the work done."""
    return {"val_accuracy": module.best_accuracy, "chosen_epoch": module.best_epoch,
            "val_history": module.history, "steps": trainer.global_step,
            "epochs": trainer.global_step / max(1, len(loader)), "seconds": seconds}


def from_scratch(spec: dict[str, Any]) -> nn.Module:
    """The same encoder architecture as an exported run's (its ``encoder.json`` spec), randomly
    initialised: the baseline a fine-tuned encoder must beat."""
    return build_encoder(spec["name"], **spec["options"])


def label_subset(data: TrainData, fraction: float, seed: int) -> TrainData:
    """A stratified ``fraction`` of ``data``'s labelled samples (all of them at 1.0)."""
    if not 0 < fraction <= 1:
        raise SelfsupError(f"label fraction must be in (0, 1], not {fraction}")
    if fraction == 1:
        return data
    assert data.labels is not None
    _, keep = stratified_split(data.labels, fraction, seed)
    return data.subset(keep, f"{data.source} ({fraction:.0%} of the labels)")


def scratch_recipe(config: FinetuneConfig, steps: int) -> FinetuneConfig:
    """The from-scratch twin's recipe: the pre-trained run's, with exactly its ``steps`` (not
    its minutes, which a busy machine would turn into fewer steps for one of the two), no
    layer-wise decay (nothing pre-trained to protect) and a random head (a probe of random
    features is no head start)."""
    return dataclasses.replace(config, layer_decay=None, minutes=None, epochs=None, steps=steps,
                               head_init="random")


def finetune_protocol(
    encoder: nn.Module,
    spec: dict[str, Any],
    train: TrainData,
    test: TrainData,
    config: FinetuneConfig,
    *,
    label_fractions: tuple[float, ...] = (1.0,),
    baseline: bool = True,
    bar: PlanBar | None = None,
) -> dict[str, Any]:
    """Fine-tune a copy of ``encoder`` and, with ``baseline``, the same architecture from
    scratch (:func:`scratch_recipe`: the same labels and steps), for each fraction of the
    labels. Keys: ``"10%"``, ``"100%"``...
    Each fine-tuning is one unit of ``bar``, the evaluation's progress bar."""
    if spec.get("modality", "image") != "image":
        raise SelfsupError("the fine-tuning protocol handles image encoders only for now")
    bar = bar or PlanBar()
    result: dict[str, Any] = {}
    for fraction in label_fractions:
        labelled = label_subset(train, fraction, config.seed)
        bar.start(f"fine-tuning on {fraction:.0%} of the labels")
        row: dict[str, Any] = {
            "pretrained": finetune(copy.deepcopy(encoder).train(), labelled, test, config)
        }
        bar.done()
        if baseline:
            bar.start(f"fine-tuning from scratch on {fraction:.0%} of the labels")
            recipe = scratch_recipe(config, row["pretrained"]["steps"])
            row["scratch"] = finetune(from_scratch(spec).train(), labelled, test, recipe)
            row["gain"] = row["pretrained"]["accuracy"] - row["scratch"]["accuracy"]
            bar.done()
        result[f"{fraction:.0%}"] = row
    return result


def evaluate_finetune(
    encoder: nn.Module,
    spec: dict[str, Any],
    train: TrainData,
    test: TrainData,
    *,
    minutes: float,
    fractions: tuple[float, ...] = (1.0,),
    seed: int = 0,
    baseline: bool = True,
    precision: str = "bf16",
    progress: bool = False,
    compile: str = "auto",
    head_init: str = IMAGE_HEAD_INIT,
    bar: PlanBar | None = None,
) -> dict[str, Any]:
    """`selfsup evaluate --protocol finetune`: the run's encoder fine-tuned for ``minutes``
    (and, with ``baseline``, the same network from scratch for as many steps), per label
    fraction."""
    config = FinetuneConfig(minutes=minutes, seed=seed, precision=precision, progress=progress,
                            compile=compile, head_init=head_init)
    rows = finetune_protocol(
        encoder, spec, train, test, config, label_fractions=fractions, baseline=baseline,
        bar=bar,
    )
    return {"minutes": minutes, "config": dataclasses.asdict(config), "fractions": rows}


def fit_keeping_best(trainer: pl.Trainer, module: Any, model: nn.Module, loader: Any) -> float:
    """Fit, score the last partial epoch too, and leave ``model`` at its best validation
    epoch (``module``: a :class:`FinetuneModule`); returns the seconds spent fitting."""
    started = time.monotonic()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.monotonic() - started
    if trainer.interrupted:
        raise SelfsupError(f"fine-tuning interrupted at step {trainer.global_step}")
    if module.checked_at_step != trainer.global_step:  # stopped by the clock mid-epoch
        module.keep_if_best(trainer.current_epoch)
    if module.best_state is not None:
        model.load_state_dict(module.best_state)
    return seconds
