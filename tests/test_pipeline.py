"""End to end on scikit-learn's digits: pretrain -> evaluate, and resume after a crash."""

import json
import math

import lightning.pytorch as pl
import pytest

import selfsup
from selfsup.config import build_config
from selfsup.data import load_images
from selfsup.engine import fit
from selfsup.errors import SelfsupError
from selfsup.run import RunDir, load_encoder

TINY = {
    "batch_size": 64,
    "encoder": "resnet_small",
    "encoder_options": {"width": 8},
    "progress": False,
    "monitor_size": 300,
    "log_every_steps": 2,
    "augment_options": {"flip_p": 0.0, "crop_scale": [0.5, 1.0]},
}


def test_pretrain_then_evaluate_on_digits(tmp_path):
    run = selfsup.pretrain("simclr", "digits", out=str(tmp_path / "run"), steps=6, **TINY)
    summary = json.loads(run.summary.read_text())
    assert summary["steps"] == 6 and summary["samples_seen"] == 6 * 64
    assert summary["knn_monitor_accuracy"] is not None
    assert 0 < summary["collapse"]["std_ratio"] <= 1.5
    encoder, spec = load_encoder(run)
    assert spec["name"] == "resnet_small" and spec["channels"] == 1 and encoder.embed_dim == 64
    assert run.metrics.is_file() and "train/loss" in run.metrics.read_text().splitlines()[0]

    result = selfsup.evaluate(run.path, "digits", baseline_minutes=0.05, progress=False)
    assert json.loads(run.eval.read_text()) == result
    # Even a barely trained encoder separates digits far above chance (0.10).
    assert result["linear"]["accuracy"] > 0.5 and result["knn"]["accuracy"] > 0.5
    assert result["num_train"] + result["num_test"] == 1797
    assert 0.0 <= result["supervised"]["accuracy"] <= 1.0
    assert result["linear_over_supervised"] == pytest.approx(
        result["linear"]["accuracy"] / result["supervised"]["accuracy"]
    )


class CrashAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


class FirstStep(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step


def test_resume_after_crash_continues_from_last_checkpoint(tmp_path):
    config = build_config({**TINY, "method": "simclr", "data": "digits", "steps": 8,
                           "checkpoint_steps": 2, "out": str(tmp_path / "run")})
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_config(config.to_dict())
    data = load_images("digits", progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(config, data, run, callbacks=[CrashAt(5)])
    assert run.last_checkpoint.is_file() and not run.summary.exists()
    assert not list(run.checkpoints.glob("*.tmp"))

    first = FirstStep()
    fit(config, data, run, resume=True, callbacks=[first])
    assert first.step == 4  # the last checkpoint (every 2 steps) before the crash at step 5
    assert json.loads(run.summary.read_text())["steps"] == 8
    assert sorted(p.name for p in run.logs.iterdir()) == ["0", "1"]


def test_resume_through_the_api_extends_the_budget(tmp_path):
    out = str(tmp_path / "run")
    selfsup.pretrain("simclr", "digits", out=out, steps=3, **TINY)
    with pytest.raises(SelfsupError, match="already holds a run"):
        selfsup.pretrain("simclr", "digits", out=out, steps=3, **TINY)
    with pytest.raises(SelfsupError, match="batch_size"):
        selfsup.pretrain("simclr", out=out, steps=5, resume=True, batch_size=32)
    run = selfsup.pretrain("simclr", out=out, steps=5, resume=True, progress=False)
    assert json.loads(run.summary.read_text())["steps"] == 5


def test_nonfinite_loss_stops_with_step_and_checkpoint(tmp_path, monkeypatch):
    import selfsup.methods.simclr as simclr

    real, calls = simclr.nt_xent, {"n": 0}
    monkeypatch.setattr(simclr, "nt_xent", lambda z1, z2, t: (z1.sum() + z2.sum()) * float("nan"))
    # At step 0 no checkpoint exists yet: the message must not name one.
    with pytest.raises(SelfsupError, match=r"loss became nan at step 0") as raised:
        selfsup.pretrain("simclr", "digits", out=str(tmp_path / "run"), steps=3, **TINY)
    assert "no checkpoint had been written yet" in str(raised.value)
    assert "last.ckpt" not in str(raised.value)
    # After a checkpoint, it names the one that exists.

    def nan_at_third_step(z1, z2, t):
        calls["n"] += 1
        loss = real(z1, z2, t)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(simclr, "nt_xent", nan_at_third_step)
    out = tmp_path / "later"
    with pytest.raises(SelfsupError, match=r"loss became nan at step 2.*last\.ckpt"):
        selfsup.pretrain("simclr", "digits", out=str(out), steps=5, checkpoint_steps=1, **TINY)
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_skip_nonfinite_skips_and_counts_bad_steps(tmp_path, monkeypatch):
    import selfsup.methods.simclr as simclr

    real = simclr.nt_xent
    calls = {"n": 0}

    def every_other_nan(z1, z2, t):
        calls["n"] += 1
        loss = real(z1, z2, t)
        return loss * float("nan") if calls["n"] % 2 == 0 else loss

    monkeypatch.setattr(simclr, "nt_xent", every_other_nan)
    run = selfsup.pretrain(
        "simclr", "digits", out=str(tmp_path / "run"), steps=4, skip_nonfinite=True, **TINY
    )
    summary = json.loads(run.summary.read_text())
    # A skipped batch still counts as a step of the budget; it makes no update.
    assert summary["steps"] == 4 and calls["n"] == 4
    assert summary["skipped_nonfinite_steps"] == 2
    assert math.isfinite(summary["final_loss"])
