"""The probe curve: does more (continued) pre-training still pay, read off while it trains.

Every ``every_steps`` optimiser steps (and at the start and the end of training), a small
labelled set is embedded by the frozen current encoder (mean-pooled, fp32, no gradients, eval
mode restored afterwards), a linear probe is fitted on a stratified carve of it and scored on
the held-out rest. The accuracy is logged as ``probe_acc`` to the run's metrics (metrics.csv,
TensorBoard) and every record is kept in ``RUN/probe_curve.json``, which ``selfsup report`` draws.
When the curve flattens, more pre-training is not buying the task anything (Gururangan et al.
2020 read the same question off downstream scores after the fact; this reads it as it happens).

Keep the set small (hundreds of texts): the probe pauses training while it runs. The split
into probe-train / probe-test and the probe's C choice (a validation carve of probe-train) are
fixed by the seed, so points along the curve differ only by the encoder.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np

from selfsup import atomic
from selfsup.data.labelled_text import LabelledText, read_with_options
from selfsup.errors import SelfsupError
from selfsup.evaluate.probes import linear_probe, stratified_split
from selfsup.models.hf_text import load_hf_tokenizer
from selfsup.text_models import TextModel, text_features, tokenize_texts

log = logging.getLogger("selfsup")

PROBE_CURVE_FILE = "probe_curve.json"
METRIC = "probe_acc"


class ProbeCurve(pl.Callback):
    """Linear-probe accuracy of the frozen encoder on a small labelled text set, every N steps.

    ``tokenizer`` (a ``tokenizers.Tokenizer``) may be given, or is found when training starts:
    on the method (``method.tokenizer``), as the file its data names
    (``method.info.extra["tokenizer_file"]``, the mlm/span readers), or in the run folder
    (``tokenizer.json``, ``hf/``). Only rank 0 probes.
    """

    def __init__(
        self,
        data: LabelledText,
        every_steps: int = 100,
        *,
        out: str | Path | None = None,
        tokenizer: Any = None,
        max_length: int = 128,
        max_texts: int = 1000,
        test_fraction: float = 0.5,
        seed: int = 0,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        if int(every_steps) < 1:
            raise SelfsupError(f"--probe-every must be at least 1 step, got {every_steps}")
        if len(np.unique(data.labels)) < 2:
            raise SelfsupError(f"{data.source}: the probe set's labels hold a single class")
        self.data = data.sample(max_texts, seed, "probe set")
        self.every = int(every_steps)
        self.out = Path(out) if out is not None else None
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.seed = seed
        self.batch_size = batch_size
        train, test = stratified_split(self.data.labels, test_fraction, seed)
        fit, val = stratified_split(self.data.labels[train], 0.25, seed)
        self.rows = {"fit": train[fit], "val": train[val], "test": test}
        self.records: list[dict[str, Any]] = []
        self._tokens = None
        self._last_step = -1

    # ----------------------------------------------------------------------------- set-up

    def _path(self, trainer: pl.Trainer) -> Path:
        return self.out or Path(trainer.default_root_dir) / PROBE_CURVE_FILE

    def _find_tokenizer(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:

        method = getattr(pl_module, "method", pl_module)
        for owner in (self, method, getattr(method, "encoder", None)):
            found = getattr(owner, "tokenizer", None)
            if found is not None:
                return found
        extra = getattr(getattr(method, "info", None), "extra", None) or {}
        root = Path(trainer.default_root_dir)
        files = [extra.get("tokenizer_file"), root / "tokenizer.json",
                 root / "hf" / "tokenizer.json"]
        for candidate in (Path(f) for f in files if f):
            if candidate.is_file():
                return load_hf_tokenizer(candidate)
        raise SelfsupError(
            "the probe curve needs the method's tokenizer (method.tokenizer) or a "
            "tokenizer.json in the run folder"
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        path = self._path(trainer)
        if path.is_file():  # a resumed run: keep the records made before this step
            saved = json.loads(path.read_text(encoding="utf-8")).get("records", [])
            self.records = [r for r in saved if r["step"] < trainer.global_step]
        self.probe(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.is_global_zero and trainer.global_step % self.every == 0:
            self.probe(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.probe(trainer, pl_module)

    # ----------------------------------------------------------------------------- probing

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any] | None:
        """One point of the curve at the current step (once per step); logged and saved."""

        step = int(trainer.global_step)
        if step == self._last_step:
            return None
        self._last_step = step
        started = time.monotonic()
        method = getattr(pl_module, "method", pl_module)
        encoder = method.encoder
        if self._tokens is None:
            model = TextModel(encoder, self._find_tokenizer(trainer, pl_module), "probe")
            self._tokens = tokenize_texts(model, self.data.texts, self.max_length,
                                          what="probe-set texts")
        features = text_features(encoder, self._tokens, int(encoder.pad_id),
                                 batch_size=self.batch_size, precision="32")
        y = self.data.labels
        fit, val, test = self.rows["fit"], self.rows["val"], self.rows["test"]
        result = linear_probe(features[fit], y[fit], features[val], y[val], features[test],
                              y[test], seed=self.seed)
        record = {"step": step, METRIC: result.accuracy, "val_accuracy": result.val_accuracy,
                  "C": result.chosen["C"], "seconds": time.monotonic() - started}
        self.records.append(record)
        for logger in trainer.loggers:
            logger.log_metrics({METRIC: result.accuracy}, step=step)
        log.info("probe curve: step %d, probe accuracy %.4f (%.1f s)", step, result.accuracy,
                 record["seconds"])
        self.save(trainer)
        return record

    def save(self, trainer: pl.Trainer) -> None:
        atomic.write_json(self._path(trainer), {
            "data": self.data.source,
            "num_texts": len(self.data),
            "num_probe_train": int(len(self.rows["fit"]) + len(self.rows["val"])),
            "num_probe_test": int(len(self.rows["test"])),
            "max_length": self.max_length,
            "every_steps": self.every,
            "metric": "linear-probe accuracy on the held-out part of the probe set",
            "records": self.records,
        })


def probe_curve_callback(
    probe_data: str | Path,
    every_steps: int = 100,
    *,
    data_options: dict[str, Any] | None = None,
    **options: Any,
) -> ProbeCurve:
    """A :class:`ProbeCurve` over the labelled text file ``probe_data`` (for ``--probe-data``)."""
    return ProbeCurve(read_with_options(probe_data, data_options), every_steps, **options)


def read_probe_curve(run: str | Path) -> dict[str, Any] | None:
    """``RUN/probe_curve.json``, or None when the run has none."""
    path = Path(run) / PROBE_CURVE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SelfsupError(f"{path}: not readable JSON ({error})") from None


__all__ = ["METRIC", "PROBE_CURVE_FILE", "ProbeCurve", "probe_curve_callback",
           "read_probe_curve"]
