"""The training progress bar tells the truth about the run's budget: no "Epoch N/-2"."""

import re

import lightning.pytorch as pl
import pytest

from selfsup import api


class BarSpy(pl.Callback):
    """After each step, the description, total and position of the training bar."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float | None, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = trainer.progress_bar_callback
        task = bar.progress.tasks[bar.train_progress_bar_id]
        self.seen.append((task.description, task.total, task.completed))


def _bar(tmp_path, name: str, **budget) -> list[tuple[str, float | None, float]]:
    spy = BarSpy()
    api.pretrain(
        "simclr", "digits", out=str(tmp_path / name), batch_size=128, monitor_size=0,
        progress=True, checkpoint_steps=1000, precision="32", encoder_options={"width": 8},
        callbacks=[spy], **budget,
    )
    assert spy.seen
    for description, total, _ in spy.seen:
        assert "/-" not in description, description
        assert total is not None and total > 0, (description, total)
    return spy.seen


def test_a_step_budget_counts_the_run_s_steps(tmp_path):
    seen = _bar(tmp_path, "steps", steps=3)
    assert [(total, completed) for _, total, completed in seen] == [(3, 1), (3, 2), (3, 3)]
    assert all("/" not in description for description, _, _ in seen)


@pytest.mark.parametrize("budget", [{"epochs": 1}, {"minutes": 0.02}])
def test_epoch_and_minute_budgets_count_the_epoch_s_batches(tmp_path, budget):
    seen = _bar(tmp_path, "run", **budget)
    batches = 1797 // 128  # digits' images, full batches only
    for description, total, completed in seen:
        assert total == batches and 0 <= completed <= batches
        if "epochs" in budget:
            assert description.rstrip() == "Epoch 0/0"
        else:  # as many epochs as the minutes allow, and no epoch total to show
            assert re.fullmatch(r"Epoch \d+", description.rstrip()), description
