"""The collapse alarm: fires on a deliberately collapsed encoder, stays quiet on a healthy run."""

import logging
import math

import torch
from torch import nn

from selfsup import api
from selfsup.models import ENCODERS, ImageEncoder
from selfsup.monitors import CollapseMonitor


@ENCODERS.register("collapse_test_constant")
class ConstantEncoder(ImageEncoder):
    """Every input maps to one (learnable) point: complete collapse by construction."""

    def __init__(self, in_channels: int = 1, mean=None, std=None) -> None:
        super().__init__(in_channels, mean, std)
        self.embed_dim = 16
        self.point = nn.Parameter(torch.randn(16))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.point.expand(len(images), -1) + 0 * images.mean()


def _pretrain(tmp_path, name: str, **options):
    defaults = dict(
        steps=12, batch_size=32, log_every_steps=1, monitor_size=0, progress=False,
        checkpoint_steps=1000,
    )
    run = api.pretrain("simclr", "digits", out=str(tmp_path / name), **{**defaults, **options})
    return run.read_summary()


def test_alarm_fires_on_a_constant_encoder_and_stop_ends_the_run(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        summary = _pretrain(tmp_path, "warned", encoder="collapse_test_constant")
    assert "embedding collapse" in summary["collapse_alarm"]
    assert summary["stopped_early"] is None and summary["steps"] == 12  # warned, not stopped
    assert any("embedding collapse" in r.getMessage() for r in caplog.records)

    stopped = _pretrain(
        tmp_path, "stopped", encoder="collapse_test_constant", stop_on_collapse=True
    )
    assert "embedding collapse" in stopped["stopped_early"]
    assert stopped["steps"] == 5  # the default window: 5 checks in a row, one per step here
    assert (tmp_path / "stopped" / "encoder.safetensors").is_file()  # a clean end


def test_alarm_stays_quiet_on_a_healthy_run(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        summary = _pretrain(
            tmp_path, "healthy", steps=8, stop_on_collapse=True, encoder_options={"width": 8}
        )
    assert summary["collapse_alarm"] is None and summary["stopped_early"] is None
    assert summary["steps"] == 8
    assert summary["collapse"]["std_ratio"] > 0.1  # measured, and healthy
    assert not any("collapse" in r.getMessage() for r in caplog.records)


class _Trainer:
    """The little of a Lightning trainer the monitor uses, in one process."""

    global_step = 0
    logger = None
    is_global_zero = True
    should_stop = False

    class strategy:  # noqa: N801 - mimics trainer.strategy
        @staticmethod
        def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:
            return decision


class _Module:
    def __init__(self, embeddings: torch.Tensor) -> None:
        self.last_embeddings = embeddings


def _feed(monitor: CollapseMonitor, losses, embeddings) -> _Trainer:
    trainer = _Trainer()
    for step, loss in enumerate(losses, start=1):
        trainer.global_step = step
        monitor.on_train_batch_end(trainer, _Module(embeddings), {"loss": loss}, None, step)
    return trainer


def test_loss_at_its_trivial_value_for_a_window_fires_and_a_blip_does_not():
    healthy = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    trivial = math.log(2 * 64 - 1)
    # At the trivial value for 4 checks, then away: no alarm with a window of 5.
    monitor = CollapseMonitor(1, trivial_loss=trivial, stop=True)
    trainer = _feed(monitor, [trivial] * 4 + [trivial - 1] + [trivial] * 4, healthy)
    assert monitor.alarm is None and not trainer.should_stop
    # Sustained: the alarm names the loss symptom and stops.
    monitor = CollapseMonitor(1, trivial_loss=trivial, stop=True)
    trainer = _feed(monitor, [trivial * 1.001] * 5, healthy)
    assert monitor.alarm is not None and monitor.alarm.startswith("loss collapse")
    assert trainer.should_stop and monitor.stopped
    # A healthy spread and a loss well below the trivial value: quiet.
    monitor = CollapseMonitor(1, trivial_loss=trivial)
    _feed(monitor, [trivial * 0.6] * 20, healthy)
    assert monitor.alarm is None
