"""The one engine: Lightning trains every method, and nothing else knows about devices.

``fit`` takes a resolved config, data and a run directory, and owns everything a method must not:
the optimiser and its schedule, precision (bf16 autocast on CPU), the wall-clock budget,
progress, CSV/TensorBoard logs, atomic checkpoints, ``--resume``, and the shared monitors.
``build_trainer`` is the one place a Lightning Trainer is built, for ``fit`` and for fine-tuning.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import signal
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
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from rich.progress import (
    BarColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from selfsup import allocator, atomic, checkpoint_io, compiling, optim
from selfsup.config import PretrainConfig, native_bf16, options_dataclass
from selfsup.data.base import TrainData
from selfsup.data.datasets import ResumableLoader, keep_batch
from selfsup.errors import Interrupted, SelfsupError
from selfsup.evaluate.probes import stratified_split
from selfsup.methods import METHODS, Method
from selfsup.models import DATA_SET_OPTIONS, ENCODERS, ImageEncoder, build_encoder
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

    def __init__(self, method: Method, config: PretrainConfig, budget: Budget, *,
                 compile_strict: bool = False) -> None:
        super().__init__()
        self.method = method
        self.config = config
        self.budget = budget
        self.generator = torch.Generator().manual_seed(config.seed)
        self.last_embeddings: torch.Tensor | None = None
        self.progress_fraction = 0.0
        self.skipped_steps: list[int] = []  # steps whose loss was not finite (--skip-nonfinite)
        # The last step's loss, kept in the checkpoint: a run resumed after its last step
        # (killed while writing its final files) still reports it.
        self.last_loss: float | None = None
        self.steps_this_attempt = 0
        # The method's step, compiled under --compile on (resolved from auto by fit).
        self.step_fn = method.training_step
        if config.compile == "on":
            self.step_fn = compiling.CompiledStep(
                method.training_step, f"{config.method}'s training step",
                strict=compile_strict, dynamic=method.compile_dynamic,
            )

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
        out = self.step_fn(batch, self.generator)
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
            last = os.path.join(self.trainer.default_root_dir, "checkpoints", "last.ckpt")
            kept = (f"the last good checkpoint is {last}" if os.path.isfile(last)
                    else "no checkpoint had been written yet")
            raise SelfsupError(
                f"the loss became {out.loss.item()} at step {self.trainer.global_step}; {kept}"
                " (try a lower --lr or --precision 32, or skip such steps with --skip-nonfinite)"
            )
        self.last_embeddings = out.embeddings
        self.last_loss = float(out.loss.detach())
        self.steps_this_attempt += 1
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
        matrices = (optim.muon_parameters(self.method) if self.config.optimizer == "muon"
                    else [])
        on_muon = {id(p) for p in matrices}
        decay, no_decay = [], []
        for parameter in self.method.parameters():
            if parameter.requires_grad and id(parameter) not in on_muon:
                # Norm scales and biases are not weights to shrink (common practice since BYOL).
                (no_decay if parameter.ndim <= 1 else decay).append(parameter)
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        # FSDP clips its sharded gradients through Lightning's plugin, which refuses a fused
        # optimizer; every other strategy is clipped by configure_gradient_clipping below.
        fused = fused_adamw(decay + no_decay) if self.config.strategy != "fsdp" else None
        betas = (0.9, self.config.adam_beta2)
        if matrices:
            return optim.MuonWithAdamW(
                [{"params": matrices, "weight_decay": self.config.weight_decay}], groups,
                lr=self.config.lr, betas=betas, fused=fused,
            )
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=betas, fused=fused)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip by the global norm, as Lightning would. Its mixed-precision plugin refuses to
        clip for a fused optimizer, since an fp16 loss scaler would have to unscale first; bf16
        has no scaler, so the gradients here are true ones and are clipped directly."""
        if not gradient_clip_val:
            return
        if self.config.strategy == "fsdp":
            super().configure_gradient_clipping(optimizer, gradient_clip_val,
                                                gradient_clip_algorithm)
            return
        torch.nn.utils.clip_grad_norm_(self.method.parameters(), gradient_clip_val)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["selfsup_generator"] = self.generator.get_state()
        checkpoint["selfsup_skipped_steps"] = list(self.skipped_steps)
        checkpoint["selfsup_last_loss"] = self.last_loss

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "selfsup_generator" in checkpoint:
            self.generator.set_state(checkpoint["selfsup_generator"])
        self.skipped_steps = list(checkpoint.get("selfsup_skipped_steps", []))
        self.last_loss = checkpoint.get("selfsup_last_loss")


def fused_adamw(parameters: typing.Iterable[torch.nn.Parameter]) -> bool | None:
    """True where AdamW's fused kernel can update every parameter (floating point, on a CPU or
    a CUDA GPU): one pass over each parameter instead of a dozen foreach passes, which counts
    for small models such as the Shakespeare GPT; None (PyTorch's default) elsewhere."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
               for p in parameters) or None


class RunProgressBar(RichProgressBar):
    """One bar for the whole run, in the run's own budget: "step 12/40", "2.1/5.0 min" or
    "epoch 0.4/1" (the limit furthest along, the one that ends the run), its percentage,
    elapsed and remaining time, then the loss and the samples per second.

    Lightning's own bar restarts at every epoch and titles it "Epoch 90 ... 1/7 ... v_num: 0",
    which says nothing about a run budgeted in minutes or steps.
    """

    def __init__(self, budget: Budget) -> None:
        super().__init__()
        self.budget = budget

    def configure_columns(self, trainer: pl.Trainer) -> list:
        return [TextColumn("[progress.description]{task.description}"), BarColumn(),
                TaskProgressColumn(), TimeElapsedColumn(), TextColumn("<"),
                TimeRemainingColumn()]

    @property
    def total_train_batches(self) -> int:
        return 100  # the bar counts percent of the budget

    def describe(self, trainer: pl.Trainer, elapsed: float) -> str:
        """Where the run stands against the limit that ends it first."""
        budget, step = self.budget, trainer.global_step
        candidates = []
        if budget.steps:
            candidates.append((step / budget.steps, f"step {step}/{budget.steps}"))
        if budget.epochs:
            done = step / max(1, budget.steps_per_epoch)
            candidates.append((done / budget.epochs, f"epoch {done:.2f}/{budget.epochs}"))
        if budget.minutes:
            candidates.append((elapsed / (60 * budget.minutes),
                               f"{elapsed / 60:.1f}/{budget.minutes:g} min"))
        text = max(candidates)[1] if candidates else f"step {step}"
        return text if text.startswith("step") else f"{text}, step {step}"

    def _sync(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.progress is None or self.is_disabled:
            return
        if self.train_progress_bar_id is None:
            self.train_progress_bar_id = self._add_task(100, "pretraining")
        elapsed = pl_module._elapsed() if isinstance(pl_module, PretrainModule) else 0.0
        fraction = self.budget.progress(trainer, elapsed)
        self.progress.update(self.train_progress_bar_id, completed=100 * fraction,
                             description=self.describe(trainer, elapsed))
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync(trainer, pl_module)  # one bar for the run: never reset at an epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(trainer, pl_module)

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        metrics = {k: v for k, v in super().get_metrics(trainer, pl_module).items()
                   if k != "v_num"}
        if "train/loss" in metrics:
            metrics = {"loss": metrics.pop("train/loss"), **metrics}
        rates = [c.images_per_second for c in trainer.callbacks if isinstance(c, Throughput)]
        if rates and rates[0]:
            metrics["samples/s"] = f"{rates[0] * trainer.world_size:.1f}"
        return metrics


def quiet_lightning() -> None:
    """Keep the console for what the user needs; Lightning's CPU advice is noise here.

    :func:`build_trainer` calls it; :func:`fit` calls it first too, before the encoder and data
    are touched. Repeated calls add no duplicate filters (``filterwarnings`` replaces its own).
    """
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
        ".*zero-element tensors is a no-op.*",  # width=0: refused just after, in words
    ):
        warnings.filterwarnings("ignore", message=pattern)


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
            return sorted(names - set(DATA_SET_OPTIONS))
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


def _uses_gpus(accelerator: str) -> bool:
    return accelerator == "gpu" or (accelerator == "auto" and torch.cuda.device_count() > 0)


def build_trainer(
    *,
    accelerator: str = "cpu",
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str,
    max_epochs: int | None = None,
    max_steps: int | None = None,
    max_time: timedelta | None = None,
    callbacks: list[pl.Callback] | None = None,
    logger: Logger | list[Logger] | bool = False,
    default_root_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    checkpoints: bool = False,
    gradient_clip_val: float | None = None,
    log_every_n_steps: int = 50,
) -> pl.Trainer:
    """The one place a Lightning Trainer is built: pre-training, the supervised baselines, image
    and text fine-tuning.

    Every trainer shares the same device, precision and housekeeping settings, so a run, its
    baseline and its fine-tuning cannot drift apart in how they use the machine. The caller
    says what differs: where it runs (``accelerator``, ``devices``, ``num_nodes``,
    ``strategy``, from its config), the budget, callbacks and loggers.

    - ``precision`` is selfsup's ("bf16" or "32"): bf16 is autocast ("bf16-mixed"), anything
      else full float32 ("32-true").
    - ``max_epochs`` / ``max_steps`` of None (or 0) mean no such limit.
    - Lightning's distributed sampler is never put in: ``fit``'s ResumableLoader splits the
      data over the ranks itself (an exact, resumable order); fine-tuning's loaders do not
      split it, so each rank there sees every batch.
    - BatchNorm statistics are synchronised over processes on GPUs (the global batch's, as in
      one process); CPU processes (gloo) cannot sync them.
    - ``checkpoints``: the trainer writes checkpoints (``callbacks`` holds the ModelCheckpoint);
      they are written atomically (a killed run never leaves half a file). Without it Lightning
      adds no checkpoint callback of its own.
    - No model summary, no sanity validation, Lightning's CPU advice silenced
      (:func:`quiet_lightning`).
    """
    quiet_lightning()
    allocator.retain_freed_memory()
    processes = devices * num_nodes
    return pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        use_distributed_sampler=False,
        sync_batchnorm=processes > 1 and _uses_gpus(accelerator),
        precision="bf16-mixed" if precision == "bf16" else "32-true",
        max_epochs=max_epochs or -1,
        max_steps=max_steps or -1,
        max_time=max_time,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=default_root_dir,
        gradient_clip_val=gradient_clip_val,
        log_every_n_steps=log_every_n_steps,
        enable_progress_bar=progress,
        enable_checkpointing=checkpoints,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        plugins=[checkpoint_io.AtomicCheckpointIO()] if checkpoints else None,
    )




def fit_batch_to_data(config: PretrainConfig, samples: int, source: str) -> PretrainConfig:
    """The config with a batch no larger than the data: 50 series cannot fill the default
    batch of 256, and a run that only ever dropped its one short batch would never step.
    The smaller batch is logged and recorded in config.yaml (what the run really used)."""
    processes = config.devices * config.num_nodes
    if samples >= config.batch_size * processes:
        return config
    fitted = samples // processes
    if fitted < 2:  # batch statistics and in-batch negatives need two samples per process
        raise SelfsupError(
            f"{source} has {samples} sample(s): too few for a batch of at least 2 per process "
            f"over {processes} process(es)"
        )
    log.warning("%s has %d samples, fewer than one batch of %d%s: training with batches of %d",
                source, samples, config.batch_size,
                f" x {processes} processes" if processes > 1 else "", fitted)
    return dataclasses.replace(config, batch_size=fitted)


def fit(
    config: PretrainConfig,
    data: TrainData,
    run: RunDir,
    *,
    resume: bool = False,
    callbacks: list[pl.Callback] | None = None,
) -> tuple[Method, dict[str, Any]]:
    """Train ``config.method`` on ``data`` into ``run``; return the method and a summary."""
    quiet_lightning()
    allocator.retain_freed_memory()  # before the first batch: every step reuses its pages
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
    config = fit_batch_to_data(config, len(data), data.source)
    choice = config.compile  # "auto" is resolved once the budget in steps is known

    encoder_options = {**data.encoder_inputs(), **config.encoder_options}
    try:
        encoder = build_encoder(config.encoder, **encoder_options)
    except (TypeError, ValueError, RuntimeError) as error:  # e.g. width=-1: a negative tensor size
        raise SelfsupError(
            f"encoder {config.encoder!r}: bad encoder_options ({error}); "
            f"valid options: {', '.join(encoder_option_names(config.encoder) or ['(unknown)'])}"
        ) from None
    empty = [name for name, p in encoder.named_parameters() if p.numel() == 0]
    if empty:  # width=0 builds, then fails in the first forward pass deep inside a conv
        raise SelfsupError(
            f"encoder {config.encoder!r}: encoder_options {config.encoder_options} leave "
            f"layers with no weights ({empty[0]} has a size of 0); sizes must be at least 1"
        )
    info = data.data_info()
    if config.init:  # a method reads its starting weights from there (text: its reader too)
        info.extra.setdefault("init", config.init)
    method = method_class(
        encoder,
        info,
        options=config.method_options,
        augment_options=config.augment_options,
        channels_last=config.channels_last,
    )
    if config.channels_last:
        method = method.to(memory_format=torch.channels_last)
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
    step_limits = [config.steps] if config.steps else []
    step_limits += [config.epochs * len(loader)] if config.epochs else []
    config = dataclasses.replace(config, compile=compiling.resolve(
        config.compile, minutes=config.minutes, steps=min(step_limits, default=None),
        device="cuda" if _uses_gpus(config.accelerator) else "cpu", pays=method.compile_auto,
    ))
    # The run keeps the fully resolved config: the method's and augmentation's defaults, and
    # whether it compiled, included.
    run.write_config({**config.to_dict(), **_plain(method.resolved_options())})
    module = PretrainModule(method, config, budget, compile_strict=choice == "on")

    timer = Timer(duration=timedelta(minutes=config.minutes) if config.minutes else None)
    monitors: list[pl.Callback] = []
    knn = None
    if data.labels is not None and config.monitor_size > 0 and not method_class.needs_labels:
        knn = _knn_monitor(data, config)
        monitors.append(knn)
    collapse = CollapseMonitor(
        config.log_every_steps,
        stop=config.stop_on_collapse,
        trivial_loss=method.trivial_loss(config.batch_size * processes),
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
    trainer = build_trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,
        max_epochs=config.epochs,
        max_steps=config.steps,
        callbacks=[
            throughput, timer, collapse, *monitors, checkpoint,
            *method.callbacks(run), *([RunProgressBar(budget)] if config.progress else []),
            *(callbacks or []),
        ],
        logger=[
            CSVLogger(run.path, name="logs", version=attempt),
            TensorBoardLogger(run.path, name="tensorboard", version=attempt),
        ],
        default_root_dir=run.path,
        progress=config.progress,
        checkpoints=True,
        gradient_clip_val=config.grad_clip,
        log_every_n_steps=config.log_every_steps,
    )
    atomic.remove_leftovers(run.path, run.checkpoints)  # of an earlier attempt that was killed
    ckpt_path = None
    if resume:
        if not run.last_checkpoint.is_file():
            raise SelfsupError(f"nothing to resume: {run.last_checkpoint} does not exist")
        ckpt_path = str(run.last_checkpoint)
    started = time.monotonic()
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    except compiling.compile_errors() as error:  # the backward graph compiles at its first use
        raise SelfsupError(compiling.failure_message(
            f"{config.method}'s training step (backward)", error)) from None
    except SystemExit:  # Lightning ends a Ctrl-C with sys.exit(1), saying nothing
        if not trainer.interrupted:
            raise
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after the first
    if trainer.interrupted:
        raise Interrupted(_interrupted_message(config, run, trainer.global_step))
    trainer.save_checkpoint(run.last_checkpoint)  # every rank calls it; rank 0 writes
    if not trainer.is_global_zero:  # the run's files are rank 0's to write
        return method, {}
    method.on_fit_end(run)

    if config.init and isinstance(method.encoder, ImageEncoder):  # its own normalisation
        encoder_options = {**encoder_options, "mean": method.encoder.mean.flatten().tolist(),
                           "std": method.encoder.std.flatten().tolist()}
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
        # Whole passes over the data, and the fraction: Lightning's epoch counter reads 1
        # after a third of an epoch when a step budget ends the run mid-epoch.
        "epochs_completed": trainer.global_step // max(1, len(loader)),
        "epochs": round(trainer.global_step / max(1, len(loader)), 3),
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
        "final_loss": _final(trainer, "train/loss", module.last_loss),
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


def _final(trainer: pl.Trainer, key: str, kept: float | None = None) -> float | None:
    """The last logged value of ``key``; ``kept`` (from the checkpoint) when this attempt
    logged none, as when a run killed during its final writes is resumed to finish them."""
    value = trainer.callback_metrics.get(key)
    return float(value) if value is not None else kept


def _interrupted_message(config: PretrainConfig, run: RunDir, step: int) -> str:
    if not run.last_checkpoint.is_file():
        return (f"stopped at step {step}, before the first checkpoint: nothing of the run "
                "is kept; start it again to train")
    saved = _checkpoint_step(run)
    lost = f" (steps after {saved} are lost)" if saved is not None and saved < step else ""
    return (f"stopped at step {step}; the last checkpoint is {run.last_checkpoint}"
            f"{f', step {saved}' if saved is not None else ''}{lost}; continue with: selfsup "
            f"pretrain {config.method} --out {run.path} --resume")


def _checkpoint_step(run: RunDir) -> int | None:
    try:
        return int(torch.load(run.last_checkpoint, map_location="cpu",
                              weights_only=False)["global_step"])
    except Exception:  # a step in the message is a courtesy, never a second failure
        return None


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
