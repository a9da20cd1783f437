"""Online monitors during pre-training, shared by every method (as in solo-learn).

- kNN accuracy on a labelled validation split, when the data has labels. The labels are used
  only here, never by the pretext loss: it answers "is the representation getting better for
  classes?" while training runs.
- A label-free collapse signal on each logged batch's embeddings: the std of L2-normalised
  embeddings against 1/sqrt(d), and the effective rank (RankMe); a sustained collapse, or a
  loss stuck at the method's trivial value, raises an alarm (and may end the run).
- Throughput: images per second, each image counted once however many views it yields.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from selfsup.data.base import TrainData
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.probes import knn_classify
from selfsup.evaluate.quality import collapse_signals, collapse_threshold

log = logging.getLogger("selfsup")


def log_to_all(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Write ``metrics`` at this step to every logger (CSV and TensorBoard alike), not only the
    first: ``trainer.logger`` is the first of them. Lightning's loggers write on rank 0 only."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, trainer.global_step)


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
        log_to_all(trainer, {"monitor/knn_acc": self.last_accuracy})

    def state_dict(self) -> dict[str, float | None]:
        # Kept in the checkpoint so that a run resumed after its last step (killed during the
        # final writes) still reports the accuracy it reached.
        return {"last_accuracy": self.last_accuracy}

    def load_state_dict(self, state_dict: dict[str, float | None]) -> None:
        self.last_accuracy = state_dict.get("last_accuracy")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self.last_time >= self.every_seconds:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module)


class CollapseMonitor(pl.Callback):
    """Logs :func:`collapse_signals` of the step's embeddings every ``every_steps`` steps, and
    raises the collapse alarm.

    The alarm fires when, for ``window`` checks in a row, either the spread of the
    L2-normalised embeddings (``std_ratio`` = embedding std * sqrt(d), about 1 when isotropic)
    stays below its threshold, or the loss stays within ``loss_tolerance``
    (relative) of the method's ``trivial_loss``, the value a constant encoder gets (SimCLR:
    ln(2N - 1)). It logs one warning naming the symptom; with ``stop`` it also ends the run at
    the end of the step (``trainer.should_stop``), and the engine's summary says why. Every rank
    measures its own embeddings and the ranks agree (any rank's alarm stops all of them), so
    stopping never leaves one process waiting in a collective.

    The spread threshold is :func:`~selfsup.evaluate.quality.collapse_threshold` of the spread
    the encoder showed at the first step (``reference``, measured while the learning rate is
    still warming up): a tenth of that start, at most 0.1, never below 0.01. Why: untrained
    series encoders (max-pooled over time) start near 0.1 to 0.15 on UCR data, and a healthy
    ts-mask run goes on to 0.06 to 0.1, which a fixed 0.1 called collapse.
    """

    def __init__(
        self,
        every_steps: int,
        *,
        stop: bool = False,
        trivial_loss: float | None = None,
        window: int = 5,
        loss_tolerance: float = 5e-3,
    ) -> None:
        self.every_steps = max(1, every_steps)
        self.stop = stop
        self.trivial_loss = trivial_loss
        self.window = max(1, window)
        self.loss_tolerance = loss_tolerance
        self.last: dict[str, float] = {}
        self.streaks = {"std": 0, "loss": 0}  # consecutive checks showing each symptom
        self.reference: float | None = None  # std_ratio at the first step (kept on --resume)
        self.alarm: str | None = None  # the warning, once raised
        self.stopped = False

    @property
    def std_threshold(self) -> float:
        """The std_ratio below which the embeddings count as collapsed (see the class doc)."""
        return collapse_threshold(self.reference)

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "last": dict(self.last), "alarm": self.alarm,
                "stopped": self.stopped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reference = state_dict.get("reference")
        self.last = dict(state_dict.get("last") or {})
        self.alarm = state_dict.get("alarm")
        self.stopped = bool(state_dict.get("stopped", False))

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        embeddings = pl_module.last_embeddings
        if embeddings is None:
            return
        self.last = collapse_signals(embeddings.float())
        log_to_all(trainer, {f"collapse/{k}": v for k, v in self.last.items()})

    def _symptom(self, loss: float | None) -> str | None:
        """Update the streaks with the latest check; the symptom once one lasts ``window``."""
        ratio = self.last.get("std_ratio")
        low_std = ratio is not None and ratio < self.std_threshold
        self.streaks["std"] = self.streaks["std"] + 1 if low_std else 0
        trivial = self.trivial_loss
        at_trivial = (
            trivial is not None
            and loss is not None
            and abs(loss - trivial) <= self.loss_tolerance * abs(trivial)
        )
        self.streaks["loss"] = self.streaks["loss"] + 1 if at_trivial else 0
        span = f"for the last {self.window} checks ({self.window * self.every_steps} steps)"
        if self.streaks["std"] >= self.window:
            return (
                f"embedding collapse: the std of the L2-normalised embeddings is "
                f"{self.last['embedding_std']:.2e}, {ratio:.3f} of the isotropic 1/sqrt(d) "
                f"(alarm below {self.std_threshold:.3f}, {self._reference_text()}), {span}: "
                "the encoder maps its inputs to (nearly) one point"
            )
        if self.streaks["loss"] >= self.window:
            return (
                f"loss collapse: the loss {loss:.4f} sits at its trivial value {trivial:.4f} "
                f"(what a constant encoder scores) {span}: nothing is being learnt"
            )
        return None

    def _reference_text(self) -> str:
        if self.reference is None:
            return "no reference measured"
        return f"{self.reference:.3f} at the first step"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.reference is None and pl_module.last_embeddings is not None:
            self.reference = collapse_signals(pl_module.last_embeddings.float())["std_ratio"]
        if trainer.global_step % self.every_steps != 0:
            return
        self._measure(trainer, pl_module)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        symptom = self._symptom(float(loss) if loss is not None else None)
        if self.alarm is not None:
            return  # one warning per run; a stop was already decided
        fired = trainer.strategy.reduce_boolean_decision(symptom is not None, all=False)
        if not fired:
            return
        self.alarm = symptom or "collapse on another process (see its embeddings' signals)"
        action = "stopping (--stop-on-collapse)" if self.stop else "use --stop-on-collapse to end"
        if trainer.is_global_zero:
            log.warning("step %d: %s; %s", trainer.global_step, self.alarm, action)
        if self.stop:
            self.stopped = True
            trainer.should_stop = True

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        self._measure(trainer, pl_module)


class Throughput(pl.Callback):
    """Images per second over whole steps: data, augmentation, forward, backward, optimiser.

    Measured between consecutive step ends, less the time the ``paused_by`` monitors spent
    (each has a running ``seconds`` total), so evaluation pauses do not count as training. The
    step after a data loader's restart is left out; when every epoch is a single step (a few
    hundred labelled images), the rate counts those steps, restarts included, rather than none.
    """

    def __init__(self, every_steps: int, paused_by: list | None = None) -> None:
        self.every_steps = max(1, every_steps)
        self.paused_by = paused_by or []
        self.images = 0
        self.seconds = 0.0
        self._last: tuple[float, float] | None = None  # (clock, paused seconds) at last step end
        self._window = (0, 0.0)
        self._across: tuple[float, float] | None = None  # the same, not reset at epoch starts
        self._with_restarts = (0, 0.0)

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
            if trainer.global_step % self.every_steps == 0:
                log_to_all(trainer, {"train/images_per_s": self._window[0]
                                     / max(self._window[1], 1e-9)})
                self._window = (0, 0.0)
        if self._across is not None:
            elapsed = now - self._across[0] - (paused - self._across[1])
            self._with_restarts = (self._with_restarts[0] + len(next(iter(batch.values()))),
                                   self._with_restarts[1] + elapsed)
        self._last = self._across = (time.perf_counter(), self._paused())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = None  # the data loader's restart is not a training step

    def state_dict(self) -> dict[str, Any]:
        # The totals so far, so the rate a resumed run reports covers every attempt.
        return {"images": self.images, "seconds": self.seconds,
                "with_restarts": list(self._with_restarts)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images = int(state_dict.get("images", 0))
        self.seconds = float(state_dict.get("seconds", 0.0))
        images, seconds = state_dict.get("with_restarts", (0, 0.0))
        self._with_restarts = (int(images), float(seconds))

    @property
    def images_per_second(self) -> float:
        if self.seconds:
            return self.images / self.seconds
        images, seconds = self._with_restarts
        return images / seconds if seconds else 0.0
