"""The one engine: Lightning trains every method, and nothing else knows about devices.

``fit`` takes a resolved config, data and a run directory, and owns everything a method must not:
the optimiser and its schedule, precision (bf16 autocast on CPU), the wall-clock budget,
progress, CSV/TensorBoard logs, atomic checkpoints, ``--resume``, and the shared monitors.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import time
import typing
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, Timer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from selfsup import atomic
from selfsup.config import PretrainConfig, native_bf16, options_dataclass
from selfsup.data.base import TrainData
from selfsup.data.datasets import ResumableLoader, keep_batch
from selfsup.errors import SelfsupError
from selfsup.evaluate.probes import stratified_split
from selfsup.methods import METHODS, Method
from selfsup.models import ENCODERS, build_encoder
from selfsup.monitors import CollapseMonitor, KnnMonitor, Throughput
from selfsup.run import RunDir, save_encoder

log = logging.getLogger("selfsup")


@dataclass
class Budget:
    """The run's budget; progress (0 to 1) is the furthest along of its limits."""

    minutes: float | None
    epochs: int | None
    steps: int | None
    steps_per_epoch: int

    def progress(self, trainer: pl.Trainer, elapsed_seconds: float) -> float:
        fractions = [0.0]
        if self.steps:
            fractions.append(trainer.global_step / self.steps)
        if self.epochs:
            fractions.append(trainer.global_step / (self.epochs * self.steps_per_epoch))
        if self.minutes:
            fractions.append(elapsed_seconds / (self.minutes * 60))
        return min(1.0, max(fractions))


def warmup_cosine(progress: float, warmup: float) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to 0 at progress 1."""
    if progress < warmup:
        return (progress + 1e-3) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))))


class PretrainModule(pl.LightningModule):
    """Adapts a :class:`Method` to Lightning: optimiser, schedule, logging, RNG state."""

    def __init__(self, method: Method, config: PretrainConfig, budget: Budget) -> None:
        super().__init__()
        self.method = method
        self.config = config
        self.budget = budget
        self.generator = torch.Generator().manual_seed(config.seed)
        self.last_embeddings: torch.Tensor | None = None
        self.progress_fraction = 0.0
        self.skipped_steps: list[int] = []  # steps whose loss was not finite (--skip-nonfinite)

    def _elapsed(self) -> float:
        timers = [c for c in self.trainer.callbacks if isinstance(c, Timer)]
        return timers[0].time_elapsed("train") if timers else 0.0

    def on_train_start(self) -> None:
        if self.trainer.world_size > 1:
            # One seed on every rank would give rank r's i-th image the same augmentation as
            # rank 0's i-th; the checkpoint keeps rank 0's generator only, so reseed from
            # (seed, rank, step), which a resumed run can redo.
            seed = np.random.SeedSequence(
                [self.config.seed, self.trainer.global_rank, self.trainer.global_step]
            )
            self.generator.manual_seed(int(seed.generate_state(1, dtype=np.uint64)[0] >> 1))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.progress_fraction = self.budget.progress(self.trainer, self._elapsed())
        scale = warmup_cosine(self.progress_fraction, self.config.warmup_fraction)
        for group in self.optimizers().param_groups:
            group["lr"] = self.config.lr * scale
        self.method.on_train_step_start(self.progress_fraction)

    def training_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> torch.Tensor | None:
        if not self.method.needs_labels:  # labels never reach a pretext loss
            batch = {key: value for key, value in batch.items() if key != "labels"}
        out = self.method.training_step(batch, self.generator)
        if not torch.isfinite(out.loss):
            if self.config.skip_nonfinite:
                # Returning None makes Lightning skip backward and the optimiser step.
                self.skipped_steps.append(self.trainer.global_step)
                log.warning(
                    "the loss became %s at step %d; step skipped (%d so far, --skip-nonfinite)",
                    out.loss.item(), self.trainer.global_step, len(self.skipped_steps),
                )
                self.log("train/skipped_nonfinite", float(len(self.skipped_steps)))
                return None
            raise SelfsupError(
                f"the loss became {out.loss.item()} at step {self.trainer.global_step}; "
                f"the last good checkpoint is {self.trainer.default_root_dir}/checkpoints/last.ckpt"
                " (try a lower --lr or --precision 32, or skip such steps with --skip-nonfinite)"
            )
        self.last_embeddings = out.embeddings
        # Under DDP each rank's loss is its share of the global batch's; the logged value is
        # their mean, the global loss (one all-reduce per step).
        self.log("train/loss", out.loss, prog_bar=True, sync_dist=self.trainer.world_size > 1)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        for name, value in out.logs.items():
            self.log(f"train/{name}", value)
        return out.loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.method.on_train_step_end(self.progress_fraction)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for parameter in self.method.parameters():
            if parameter.requires_grad:
                # Norm scales and biases are not weights to shrink (common practice since BYOL).
                (no_decay if parameter.ndim <= 1 else decay).append(parameter)
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, self.config.adam_beta2))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["selfsup_generator"] = self.generator.get_state()
        checkpoint["selfsup_skipped_steps"] = list(self.skipped_steps)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "selfsup_generator" in checkpoint:
            self.generator.set_state(checkpoint["selfsup_generator"])
        self.skipped_steps = list(checkpoint.get("selfsup_skipped_steps", []))


class RunProgressBar(RichProgressBar):
    """Lightning's (rich) progress bar, truthful about this engine's budgets.

    Lightning titles the bar "Epoch N/{max_epochs - 1}", which reads "Epoch N/-2" in a run
    limited by steps or minutes (the engine passes max_epochs=-1 there). Here a run with
    ``--steps`` (and no ``--epochs``) counts optimiser steps over the whole run (global step /
    steps) under "Epoch N" with no epoch total; ``--epochs`` keeps Lightning's "Epoch N/last"
    over each epoch's batches; a run limited by minutes alone shows "Epoch N" over the epoch.
    """

    def _counts_steps(self) -> bool:
        return self.trainer.max_steps > 0 and self.trainer.max_epochs in (None, -1)

    @property
    def total_train_batches(self) -> int | float:
        if self._counts_steps():
            return self.trainer.max_steps
        return super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch}"
        if self._counts_steps():
            description += ", steps"
        elif self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            description += f"/{self.trainer.max_epochs - 1}"
        return description

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._counts_steps():  # the bar's position is the run's step, not the epoch's batch
            batch_idx = trainer.global_step - 1
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def _quiet_lightning() -> None:
    """Keep the console for what the user needs; Lightning's CPU advice is noise here."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*GPU available but not used.*",
        ".*exists and is not empty.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*LeafSpec.*",
        ".*number of training batches .* is smaller than the logging interval.*",
        ".*predict_dataloader.*",
        ".*Precision bf16-mixed is not supported by the model summary.*",
        ".*`training_step` returned `None`.*",  # --skip-nonfinite does that on purpose
    ):
        warnings.filterwarnings("ignore", message=pattern)


#: Encoder arguments the engine sets from the data; the user's encoder_options are the rest.
_ENGINE_SET = {"in_channels", "mean", "std"}


def encoder_option_names(name: str) -> list[str] | None:
    """The options the registered encoder ``name`` accepts, or None where they cannot be listed.

    A constructor that passes ``**options`` on to the class it returns (as the ViTs do) accepts
    that class's arguments too, so the search follows the return annotation one level down.
    """
    target: Any = ENCODERS.get(name)
    names: set[str] = set()
    for _ in range(2):
        try:
            parameters = list(inspect.signature(target).parameters.values())
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return sorted(names - _ENGINE_SET)
        try:
            target = typing.get_type_hints(target).get("return")
        except Exception:  # an annotation that does not resolve at run time
            return None
        if not isinstance(target, type):
            return None
    return None


def with_default_encoder(config: PretrainConfig) -> PretrainConfig:
    """The config with ``encoder`` filled in from the method's default when the user named none."""
    if config.encoder is not None:
        return config
    return dataclasses.replace(config, encoder=METHODS.get(config.method).default_encoder)


def check_options(config: PretrainConfig) -> None:
    """Refuse an unknown method, encoder or nested option before the data is read.

    Decoding a folder can take minutes; a typo in ``--method-option`` should not wait for it.
    ``fit`` checks the values again when it builds the method (ranges included).
    """
    config = with_default_encoder(config)
    check_processes(config)
    method_class = METHODS.get(config.method)
    options_dataclass(
        method_class.Options, config.method_options, f"options of method {method_class.__name__}"
    )
    try:
        method_class.check_augment_options(config.augment_options)
    except ValueError as error:
        raise SelfsupError(f"method {config.method!r}: {error}") from None
    valid = encoder_option_names(config.encoder)
    unknown = sorted(set(map(str, config.encoder_options)) - set(valid or []))
    if valid is not None and unknown:
        raise SelfsupError(
            f"encoder {config.encoder!r}: unknown encoder_options {', '.join(unknown)}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        )


def check_processes(config: PretrainConfig) -> None:
    """Refuse devices this machine does not have, with what it does have.

    ``--devices`` counts per node: under SLURM or torchrun each node checks its own.
    """
    if config.accelerator in ("gpu", "auto"):
        gpus = torch.cuda.device_count()
        if config.accelerator == "gpu" and gpus == 0:
            raise SelfsupError(
                "--accelerator gpu: no CUDA GPU is visible to PyTorch here (check "
                "CUDA_VISIBLE_DEVICES and that torch is a CUDA build); use --accelerator cpu"
            )
        if gpus and config.devices > gpus:
            raise SelfsupError(
                f"--devices {config.devices}: this node has {gpus} GPU(s); ask for at most {gpus}"
            )
        if gpus:
            return
    if config.strategy == "fsdp":
        raise SelfsupError(
            "strategy 'fsdp' needs GPUs (it shards parameters over NCCL collectives, which CPU "
            "processes do not provide) and none is visible here; use --strategy ddp"
        )
    cores = os.cpu_count() or 1
    if config.devices > cores:
        raise SelfsupError(
            f"--devices {config.devices} CPU processes but this node has {cores} core(s): each "
            f"process needs one; ask for at most {cores}"
        )


def _uses_gpus(config: PretrainConfig) -> bool:
    return config.accelerator == "gpu" or (
        config.accelerator == "auto" and torch.cuda.device_count() > 0
    )


def _trivial_loss(method: Method, global_batch: int) -> float | None:
    """The loss a collapsed encoder gets, where the method declares it (``trivial_loss``)."""
    declared = getattr(method, "trivial_loss", None)
    return declared(global_batch) if callable(declared) else None


def fit(
    config: PretrainConfig,
    data: TrainData,
    run: RunDir,
    *,
    resume: bool = False,
    callbacks: list[pl.Callback] | None = None,
) -> tuple[Method, dict[str, Any]]:
    """Train ``config.method`` on ``data`` into ``run``; return the method and a summary."""
    _quiet_lightning()
    config = with_default_encoder(config)
    if config.precision == "bf16" and not native_bf16():
        log.warning(
            "bf16 on this CPU is emulated (no AVX-512 BF16 / AMX) and much slower than fp32; "
            "--precision auto picks the faster one"
        )
    pl.seed_everything(config.seed, workers=True, verbose=False)
    method_class = METHODS.get(config.method)
    if method_class.modality != data.modality:
        raise SelfsupError(
            f"method {config.method!r} trains on {method_class.modality} data; "
            f"{data.source} was read as {data.modality} data"
        )
    if method_class.needs_labels and data.labels is None:
        raise SelfsupError(f"method {config.method!r} needs labelled data; {data.source} has none")
    check_processes(config)
    if len(data) < config.batch_size * config.devices * config.num_nodes:
        raise SelfsupError(
            f"{data.source} has {len(data)} samples, fewer than one global batch "
            f"({config.batch_size} per process x {config.devices * config.num_nodes} "
            "processes); lower --batch-size"
        )

    encoder_options = {**data.encoder_inputs(), **config.encoder_options}
    try:
        encoder = build_encoder(config.encoder, **encoder_options)
    except (TypeError, ValueError, RuntimeError) as error:  # e.g. width=-1: a negative tensor size
        raise SelfsupError(
            f"encoder {config.encoder!r}: bad encoder_options ({error}); "
            f"valid options: {', '.join(encoder_option_names(config.encoder) or ['(unknown)'])}"
        ) from None
    info = data.data_info()
    method = method_class(
        encoder,
        info,
        options=config.method_options,
        augment_options=config.augment_options,
        channels_last=config.channels_last,
    )
    if config.channels_last:
        method = method.to(memory_format=torch.channels_last)
    # The run keeps the fully resolved config: the method's and augmentation's defaults included.
    run.write_config({**config.to_dict(), **_plain(method.resolved_options())})

    dataset = data.batch_dataset(with_labels=method_class.needs_labels)
    processes = config.devices * config.num_nodes
    loader = ResumableLoader(  # shuffled by (seed, epoch); a resumed run continues the epoch
        dataset,
        batch_size=config.batch_size,  # per process
        seed=config.seed,
        replicas=processes,  # each rank its block of every global batch
        drop_last=True,  # contrastive and BatchNorm statistics want full batches
        collate_fn=keep_batch,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
    )
    budget = Budget(config.minutes, config.epochs, config.steps, len(loader))
    module = PretrainModule(method, config, budget)

    timer = Timer(duration=timedelta(minutes=config.minutes) if config.minutes else None)
    monitors: list[pl.Callback] = []
    knn = None
    if data.labels is not None and config.monitor_size > 0 and not method_class.needs_labels:
        knn = _knn_monitor(data, config)
        monitors.append(knn)
    collapse = CollapseMonitor(
        config.log_every_steps,
        stop=config.stop_on_collapse,
        trivial_loss=_trivial_loss(method, config.batch_size * processes),
    )
    throughput = Throughput(config.log_every_steps, paused_by=[knn] if knn else [])
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoints,
        filename="last",
        save_top_k=0,
        save_last=True,
        every_n_train_steps=config.checkpoint_steps,
        train_time_interval=(
            None if config.checkpoint_steps else timedelta(minutes=config.checkpoint_minutes)
        ),
    )
    attempt = run.next_attempt()
    trainer = pl.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        # Our loader splits the data over the ranks itself (exact, resumable order).
        use_distributed_sampler=False,
        # Global batch statistics, as in one process; CPU processes (gloo) cannot sync them.
        sync_batchnorm=processes > 1 and _uses_gpus(config),
        precision="bf16-mixed" if config.precision == "bf16" else "32-true",
        max_epochs=config.epochs or -1,
        max_steps=config.steps or -1,
        callbacks=[
            throughput, timer, collapse, *monitors, checkpoint,
            *method.callbacks(run), *([RunProgressBar()] if config.progress else []),
            *(callbacks or []),
        ],
        logger=[
            CSVLogger(run.path, name="logs", version=attempt),
            TensorBoardLogger(run.path, name="tensorboard", version=attempt),
        ],
        default_root_dir=run.path,
        gradient_clip_val=config.grad_clip,
        log_every_n_steps=config.log_every_steps,
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        plugins=[atomic.AtomicCheckpointIO()],
    )
    atomic.remove_leftovers(run.path, run.checkpoints)  # of an earlier attempt that was killed
    ckpt_path = None
    if resume:
        if not run.last_checkpoint.is_file():
            raise SelfsupError(f"nothing to resume: {run.last_checkpoint} does not exist")
        ckpt_path = str(run.last_checkpoint)
    started = time.monotonic()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise SelfsupError(
            f"interrupted at step {trainer.global_step}; continue with --resume "
            f"(last checkpoint: {run.last_checkpoint})"
        )
    trainer.save_checkpoint(run.last_checkpoint)  # every rank calls it; rank 0 writes
    if not trainer.is_global_zero:  # the run's files are rank 0's to write
        return method, {}
    method.on_fit_end(run)

    spec = {
        **data.encoder_spec(),
        "name": config.encoder,
        "options": encoder_options,
        "method": config.method,
        "modality": data.modality,
    }
    save_encoder(run, method.encoder, spec)
    summary = {
        "method": config.method,
        "steps": trainer.global_step,
        "epochs_completed": trainer.current_epoch,
        "samples_seen": trainer.global_step * config.batch_size * processes,
        "train_seconds": timer.time_elapsed("train"),
        "this_attempt_seconds": time.monotonic() - started,
        # Measured on rank 0; the ranks step in lockstep, so all of them process this many.
        "samples_per_s": throughput.images_per_second * processes,
        "images_per_s": throughput.images_per_second * processes,  # as image runs call it
        "precision": config.precision,
        "batch_size": config.batch_size,
        "processes": processes,
        "global_batch_size": config.batch_size * processes,
        "num_samples": len(data),
        "skipped_inputs": len(data.skipped),
        "skipped_nonfinite_steps": len(module.skipped_steps),
        "final_loss": _final(trainer, "train/loss"),
        "knn_monitor_accuracy": knn.last_accuracy if knn else None,
        "collapse": collapse.last,
        "collapse_alarm": collapse.alarm,
        "stopped_early": collapse.alarm if collapse.stopped else None,
    }
    atomic.write_json(run.summary, summary)
    run.merge_metrics()
    return method, summary


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so that YAML's safe dumper can write the value."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _final(trainer: pl.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return float(value) if value is not None else None


def _knn_monitor(data: TrainData, config: PretrainConfig) -> KnnMonitor:
    """Bank and queries carved (stratified) from the data; the query share is a quarter."""
    assert data.labels is not None
    n = len(data)
    size = min(config.monitor_size, n)
    rng = np.random.default_rng(config.seed)
    subset = rng.choice(n, size=size, replace=False)
    bank, query = stratified_split(data.labels[subset], 0.25, config.seed)
    return KnnMonitor(
        data,
        subset[bank],
        subset[query],
        every_minutes=config.monitor_minutes,
        precision=config.precision,
    )
