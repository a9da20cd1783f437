"""Online monitors during pre-training, shared by every method (as in solo-learn).

- kNN accuracy on a labelled validation split, when the data has labels. The labels are used
  only here, never by the pretext loss: it answers "is the representation getting better for
  classes?" while training runs.
- A label-free collapse signal on each logged batch's embeddings: the std of L2-normalised
  embeddings against 1/sqrt(d), and the effective rank (RankMe).
- Throughput: images per second, each image counted once however many views it yields.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from selfsup.data.base import TrainData
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.probes import knn_classify
from selfsup.evaluate.quality import collapse_signals


class KnnMonitor(pl.Callback):
    """Every ``every_minutes`` of training (and at the end), kNN accuracy of query on bank."""

    def __init__(
        self,
        data: TrainData,
        bank: np.ndarray,
        query: np.ndarray,
        every_minutes: float,
        precision: str,
        k: int = 20,
    ) -> None:
        assert data.labels is not None
        # Small in-memory copies: a monitor must not page a large memmap in at every check.
        self.bank = data.subset(bank, f"{data.source} (kNN monitor bank)")
        self.query = data.subset(query, f"{data.source} (kNN monitor queries)")
        self.every_seconds = every_minutes * 60
        self.precision = precision
        self.k = k
        self.last_time = time.monotonic()
        self.last_accuracy: float | None = None
        self.seconds = 0.0  # time spent measuring, which throughput must not count as training

    def measure(self, pl_module: pl.LightningModule) -> float:
        encoder = pl_module.method.encoder
        bank = extract_features(encoder, self.bank, precision=self.precision)
        query = extract_features(encoder, self.query, precision=self.precision)
        predicted = knn_classify(bank, self.bank.labels, query, k=self.k)
        return float((predicted == self.query.labels).mean())

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.monotonic()
        self.last_accuracy = self.measure(pl_module)
        self.last_time = time.monotonic()
        self.seconds += self.last_time - start
        if trainer.logger is not None:
            trainer.logger.log_metrics({"monitor/knn_acc": self.last_accuracy}, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self.last_time >= self.every_seconds:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module)


class CollapseMonitor(pl.Callback):
    """Logs :func:`collapse_signals` of the step's embeddings every ``every_steps`` steps."""

    def __init__(self, every_steps: int) -> None:
        self.every_steps = max(1, every_steps)
        self.last: dict[str, float] = {}

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        embeddings = pl_module.last_embeddings
        if embeddings is None:
            return
        self.last = collapse_signals(embeddings.float())
        if trainer.logger is not None:
            logged = {f"collapse/{k}": v for k, v in self.last.items()}
            trainer.logger.log_metrics(logged, trainer.global_step)

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_steps == 0:
            self._measure(trainer, pl_module)

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        self._measure(trainer, pl_module)


class Throughput(pl.Callback):
    """Images per second over whole steps: data, augmentation, forward, backward, optimiser.

    Measured between consecutive step ends, less the time the ``paused_by`` monitors spent
    (each has a running ``seconds`` total), so evaluation pauses do not count as training.
    """

    def __init__(self, every_steps: int, paused_by: list | None = None) -> None:
        self.every_steps = max(1, every_steps)
        self.paused_by = paused_by or []
        self.images = 0
        self.seconds = 0.0
        self._last: tuple[float, float] | None = None  # (clock, paused seconds) at last step end
        self._window = (0, 0.0)

    def _paused(self) -> float:
        return sum(monitor.seconds for monitor in self.paused_by)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now, paused = time.perf_counter(), self._paused()
        if self._last is not None:  # the first step (warm-up, start-up) is not counted
            elapsed = now - self._last[0] - (paused - self._last[1])
            images = len(next(iter(batch.values())))  # samples, however many views each
            self.images += images
            self.seconds += elapsed
            self._window = (self._window[0] + images, self._window[1] + elapsed)
            if trainer.global_step % self.every_steps == 0 and trainer.logger is not None:
                rate = self._window[0] / max(self._window[1], 1e-9)
                trainer.logger.log_metrics({"train/images_per_s": rate}, trainer.global_step)
                self._window = (0, 0.0)
        self._last = (time.perf_counter(), self._paused())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = None  # the data loader's restart is not a training step

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0
