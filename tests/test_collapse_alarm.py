"""The collapse alarm: fires on a deliberately collapsed encoder, stays quiet on healthy runs
(images, and series, whose pooled embeddings are far from isotropic even untrained)."""

import csv
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from selfsup import api
from selfsup.evaluate.quality import COLLAPSE_STD_RATIO
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
    loggers: list = []
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


GUNPOINT = Path(__file__).resolve().parents[2] / "shared/data/timeseries/ucr_GunPoint.npz"


def _std_ratios(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("collapse/std_ratio")]
    return [float(r["collapse/std_ratio"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


@pytest.mark.skipif(not GUNPOINT.is_file(), reason="needs ../shared/data (UCR GunPoint)")
def test_alarm_stays_quiet_on_a_healthy_series_run(tmp_path, caplog):
    """ts-mask on GunPoint: max-pooled series embeddings start near a ratio of 0.13 untrained
    and dip below the fixed tenth for many checks while the reconstruction loss falls; the
    alarm, relative to where the encoder started, stays quiet."""
    out = tmp_path / "series"
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        run = api.pretrain(
            "ts-mask", str(GUNPOINT), out=str(out), steps=24, batch_size=16,
            log_every_steps=1, monitor_size=0, progress=False, checkpoint_steps=1000,
            precision="32", data_options={"split": "train"}, stop_on_collapse=True,
        )
    summary = run.read_summary()
    assert summary["collapse_alarm"] is None and summary["steps"] == 24
    assert not any("collapse" in r.getMessage() for r in caplog.records)
    ratios = _std_ratios(out)
    # The run the fixed rule flagged: at least one window of 5 checks in a row below a tenth
    # (while every check stays well clear of zero, unlike the constant encoder's).
    below = [r < COLLAPSE_STD_RATIO for r in ratios]
    assert any(all(below[i : i + 5]) for i in range(len(below) - 4)), ratios
    assert min(ratios) > 0.03
    with open(out / "metrics.csv", newline="") as handle:
        losses = [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]
    assert losses[-1] < 0.5 * losses[0]  # and it is learning: the reconstruction error falls


def test_the_spread_threshold_follows_the_start_and_a_fall_from_it_still_fires():
    generator = torch.Generator().manual_seed(0)
    offset = 6 * torch.ones(64, 32)  # a large common part, as max-pooled series features have
    start = offset + torch.randn(64, 32, generator=generator)
    collapsed = offset + 1e-3 * torch.randn(64, 32, generator=generator)
    monitor = CollapseMonitor(1)
    _feed(monitor, [1.0] * 10, start)  # narrow from the start: not a collapse
    assert monitor.alarm is None
    assert 0.1 < monitor.reference < 0.3
    assert monitor.std_threshold == pytest.approx(COLLAPSE_STD_RATIO * monitor.reference)
    _feed(monitor, [1.0] * 5, collapsed)  # a hundredfold fall from the start
    assert monitor.alarm is not None and monitor.alarm.startswith("embedding collapse")
    # --resume keeps the start's reference (Lightning saves the callback's state_dict).
    resumed = CollapseMonitor(1)
    resumed.load_state_dict(monitor.state_dict())
    assert resumed.reference == monitor.reference
    # An isotropic start keeps the fixed tenth; one at zero keeps the floor of a hundredth.
    isotropic = CollapseMonitor(1)
    _feed(isotropic, [1.0], torch.randn(64, 32, generator=generator))
    assert isotropic.std_threshold == pytest.approx(COLLAPSE_STD_RATIO, rel=0.2)
    constant = CollapseMonitor(1)
    _feed(constant, [1.0] * 5, offset)
    assert constant.std_threshold == pytest.approx(COLLAPSE_STD_RATIO**2)
    assert constant.alarm is not None
