"""The training progress bar shows the run's own budget: one bar from start to end, in steps,
minutes or epochs, with the loss and the rate; never Lightning's "Epoch 90 ... v_num: 0"."""

import re

import lightning.pytorch as pl
import pytest

from selfsup import api


class BarSpy(pl.Callback):
    """After each step: the bar's description, total and position, and its metrics."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float | None, float, dict]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = trainer.progress_bar_callback
        task = bar.progress.tasks[bar.train_progress_bar_id]
        self.seen.append((task.description, task.total, task.completed,
                          bar.get_metrics(trainer, pl_module)))


def _bar(tmp_path, name: str, **budget) -> list[tuple[str, float | None, float, dict]]:
    spy = BarSpy()
    api.pretrain(
        "simclr", "digits", out=str(tmp_path / name), batch_size=128, monitor_size=0,
        progress=True, checkpoint_steps=1000, precision="32", encoder_options={"width": 8},
        callbacks=[spy], log_every_steps=1, **budget,
    )
    assert spy.seen
    for description, total, completed, metrics in spy.seen:
        assert "Epoch" not in description and "v_num" not in metrics, (description, metrics)
        assert total == 100 and 0 <= completed <= 100, (total, completed)
    return spy.seen


def test_a_step_budget_counts_the_run_s_steps(tmp_path):
    seen = _bar(tmp_path, "steps", steps=3)
    assert [d for d, *_ in seen] == ["step 1/3", "step 2/3", "step 3/3"]
    assert [round(c, 3) for _, _, c, _ in seen] == [33.333, 66.667, 100.0]
    assert all("loss" in metrics for *_, metrics in seen)
    assert "samples/s" in seen[-1][3]  # the rate, once two steps have been timed


def test_an_epoch_budget_is_one_bar_across_epochs(tmp_path):
    batches = 1797 // 128  # digits' images, full batches only
    seen = _bar(tmp_path, "epochs", epochs=2)
    assert len(seen) == 2 * batches
    positions = [c for _, _, c, _ in seen]
    assert positions == sorted(positions) and positions[-1] == 100  # never reset at an epoch
    assert re.fullmatch(r"epoch 1\.00/2, step 14", seen[batches - 1][0]), seen[batches - 1][0]


@pytest.mark.parametrize("minutes", [0.03])
def test_a_minute_budget_shows_minutes(tmp_path, minutes):
    seen = _bar(tmp_path, "minutes", minutes=minutes)
    for description, *_ in seen:
        assert re.fullmatch(r"\d+\.\d/0\.03 min, step \d+", description), description
