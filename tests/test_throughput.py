"""The throughput monitor: images per second over whole steps, however the epochs fall."""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from selfsup.monitors import Throughput


def _steps(monitor: Throughput, epochs: int, steps_per_epoch: int, batch: int) -> None:
    trainer = SimpleNamespace(global_step=0, logger=None)
    for _ in range(epochs):
        monitor.on_train_epoch_start(trainer, None)
        for _ in range(steps_per_epoch):
            time.sleep(0.01)
            trainer.global_step += 1
            monitor.on_train_batch_end(trainer, None, None, {"images": torch.zeros(batch)}, 0)


def test_rate_leaves_out_the_first_step_of_each_epoch() -> None:
    monitor = Throughput(every_steps=100)
    _steps(monitor, epochs=2, steps_per_epoch=4, batch=8)
    assert monitor.images == 2 * 3 * 8  # three counted steps an epoch
    assert 0 < monitor.images_per_second <= 8 / 0.01


def test_single_step_epochs_still_have_a_rate() -> None:
    """A few hundred labelled images with a batch of 256: every epoch is one step. The rate
    then counts the steps across restarts instead of reporting 0 images/s."""
    monitor = Throughput(every_steps=100)
    _steps(monitor, epochs=5, steps_per_epoch=1, batch=8)
    assert monitor.images == 0  # no step followed another within an epoch
    assert 0 < monitor.images_per_second <= 8 / 0.01
