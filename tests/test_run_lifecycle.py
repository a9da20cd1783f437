"""A run's life as a user meets it: where it is written, who may write it, what a resume does
to a finished run, Ctrl-C, a full disk, and the options and outputs that are refused in words.

Each test here failed before the fix it covers (issue 28); the comment above each says what
happened then.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import selfsup
import selfsup.atomic
import selfsup.checkpoint_io
import selfsup.engine
import selfsup.run
from selfsup import api
from selfsup.errors import Interrupted, SelfsupError
from selfsup.lock import LOCK_NAME, run_lock

TINY = ["--batch-size", "64", "--encoder-option", "width=8", "--no-progress",
        "--precision", "32"]
TINY_API = {"batch_size": 64, "encoder_options": {"width": 8}, "progress": False,
            "precision": "32"}



def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time (ns), by path."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 4-step digits run with a kNN monitor, logging every 2 steps."""
    out = tmp_path_factory.mktemp("finished") / "run"
    selfsup.pretrain("simclr", "digits", out=str(out), steps=4, checkpoint_steps=2,
                     monitor_size=300, log_every_steps=2, **TINY_API)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


# 1. With no --data, `selfsup pretrain simclr` trained for 5 minutes on digits.
def test_no_data_is_refused_and_leaves_no_folder(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--out",
                           str(tmp_path / "r"), *TINY)
    assert code == 2 and "--data" in err and "digits" in err
    assert not (tmp_path / "r").exists()


# 3. A batch larger than the data failed the run ("fewer than one global batch").
def test_the_default_batch_shrinks_to_the_data_and_is_recorded(tmp_path, caplog):
    images = np.random.default_rng(0).integers(0, 255, (40, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "small.npz", images=images)
    out = tmp_path / "run"
    selfsup.pretrain("simclr", str(tmp_path / "small.npz"), out=str(out), steps=2,
                     encoder_options={"width": 8}, progress=False, precision="32")
    assert "training with batches of 40" in caplog.text
    assert "batch_size: 40" in (out / "config.yaml").read_text()
    assert json.loads((out / "pretrain.json").read_text())["batch_size"] == 40


# 5. TensorBoard held loss, lr and epoch only: the monitors wrote to the first logger (CSV).
def test_monitors_reach_tensorboard_too(finished_run):
    events = EventAccumulator(str(next((finished_run / "tensorboard").glob("*"))))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/images_per_s", "collapse/std_ratio",
                "collapse/effective_rank", "monitor/knn_acc"):
        assert tag in tags, sorted(tags)


# 6. Atomic writes were 0600 (mkstemp) whatever the umask.
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        selfsup.atomic.write_json(tmp_path / "a.json", {"x": 1})
        encoder = torch.nn.Linear(2, 2)
        encoder.embed_dim = 2
        selfsup.run.save_encoder(selfsup.run.RunDir(tmp_path), encoder, {"name": "x"})
    finally:
        os.umask(old)
    for name in ("a.json", "encoder.safetensors", "encoder.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


# 12. pretrain.json said epochs_completed 1 after a third of an epoch.
def test_the_summary_counts_epochs_truthfully(finished_run):
    summary = json.loads((finished_run / "pretrain.json").read_text())
    batches = 1797 // 64
    assert summary["epochs_completed"] == 0
    assert summary["epochs"] == round(4 / batches, 3)


# 11. Two processes on one --out both ran and interleaved their checkpoints.
def test_a_live_run_s_folder_is_refused_and_a_dead_one_s_lock_is_not(monkeypatch, capsys,
                                                                      run_copy):
    with run_lock(run_copy):
        code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--out",
                               str(run_copy), "--resume", "--steps", "8", *TINY)
        assert code == 2 and "in use by a live run" in err and f"process {os.getpid()}" in err
        code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--data", "digits",
                               "--out", str(run_copy), "--steps", "8", *TINY)
        assert code == 2 and "in use by a live run" in err
        # Before the live run's first checkpoint, a resume hears the same, not "nothing to
        # resume".
        (run_copy / "checkpoints" / "last.ckpt").unlink()
        code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--out",
                               str(run_copy), "--resume", "--steps", "8", *TINY)
        assert code == 2 and "in use by a live run" in err
    # A process that held the lock and was killed leaves the file, not the lock.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
        "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"),
        str(run_copy / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(SelfsupError, match="in use"), run_lock(run_copy):
        pass
    holder.kill()
    holder.wait()
    with open(run_copy / LOCK_NAME) as handle:  # free again: a non-blocking lock succeeds
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


# 13. Resuming a finished run exited 1 (TypeError in the CLI's summary) and rewrote a good
# pretrain.json with final_loss null, collapse empty and samples_per_s 0.
def test_resuming_a_finished_run_says_so_and_changes_nothing(monkeypatch, capsys, run_copy):
    before = snapshot(run_copy)
    code, out, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--data", "digits",
                             "--steps", "4", "--out", str(run_copy), "--resume", *TINY[-3:])
    assert code == 0 and "Traceback" not in err, err
    assert "done: 4 steps" in out
    after = snapshot(run_copy)
    after.pop(LOCK_NAME), before.pop(LOCK_NAME)
    assert after == before  # not a byte, not a modification time


def test_resuming_after_a_kill_in_the_final_writes_finishes_them(run_copy, finished_run):
    (run_copy / "pretrain.json").unlink()
    (run_copy / "encoder.safetensors").unlink()
    selfsup.pretrain(out=str(run_copy), resume=True, progress=False)
    redone = json.loads((run_copy / "pretrain.json").read_text())
    original = json.loads((finished_run / "pretrain.json").read_text())
    for key in ("this_attempt_seconds",):
        redone.pop(key), original.pop(key)
    assert redone == original  # final loss, kNN, collapse signals and rate included
    assert original["final_loss"] is not None and original["collapse"]
    assert original["knn_monitor_accuracy"] is not None and original["samples_per_s"] > 0
    assert (run_copy / "encoder.safetensors").read_bytes() == \
        (finished_run / "encoder.safetensors").read_bytes()


# 14. Ctrl-C exited 1 and printed nothing.
def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(monkeypatch, capsys, tmp_path):
    real = selfsup.engine.Throughput.on_train_batch_end

    def interrupt_at_step_3(self, trainer, *args):
        real(self, trainer, *args)
        if trainer.global_step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(selfsup.engine.Throughput, "on_train_batch_end", interrupt_at_step_3)
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--data", "digits",
                           "--steps", "10", "--checkpoint-steps", "2", "--out", str(out), *TINY)
    assert code == 130
    assert err.startswith("interrupted: stopped at step 3; the last checkpoint is "
                          f"{out / 'checkpoints' / 'last.ckpt'}, step 2")
    assert f"selfsup pretrain simclr --out {out} --resume" in err
    monkeypatch.undo()
    run = selfsup.pretrain(out=str(out), resume=True, progress=False)  # and it resumes
    assert run.read_summary()["steps"] == 10


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# 10. --out on a full disk ended in a traceback with half a run left.
def test_disk_full_before_the_first_checkpoint_keeps_nothing(monkeypatch, capsys, tmp_path):
    def torch_cannot_write(obj, path):  # what torch.save raises on a full disk
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 0")

    monkeypatch.setattr(selfsup.checkpoint_io.torch, "save", torch_cannot_write)
    monkeypatch.setattr(selfsup.atomic.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--data", "digits",
                           "--steps", "4", "--checkpoint-steps", "2", "--out", str(out), *TINY)
    assert code == 2 and "Traceback" not in err
    assert "no space left on the device" in err and "nothing of the run is kept" in err
    assert not out.exists()


def test_disk_full_in_the_final_encoder_write_resumes_to_a_whole_run(monkeypatch, capsys,
                                                                     tmp_path):
    monkeypatch.setattr(selfsup.run, "save_file", _no_space)
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--data", "digits",
                           "--steps", "4", "--checkpoint-steps", "2", "--out", str(out), *TINY)
    assert code == 2 and "no space left" in err and "--resume" in err, err
    assert not (out / "encoder.safetensors").exists() and not (out / "pretrain.json").exists()
    assert not list(out.rglob(".*.tmp"))  # nothing half-written
    monkeypatch.undo()
    run = selfsup.pretrain(out=str(out), resume=True, progress=False)
    assert run.read_summary()["steps"] == 4 and run.read_summary()["final_loss"] is not None
    selfsup.run.load_encoder(run)


# 15. Sixteen bad inputs ended in a traceback, and some bad options were accepted.
@pytest.mark.parametrize(("args", "message"), [
    (["--out", "{file}"], "is a file"),
    (["--out", "{file}/run"], "which is a file"),
    (["--out", ""], "empty string"),
    (["--out", "{tmp}/r", "--image-size", "100000"], "image_size 100000 is too large"),
    (["--out", "{tmp}/r", "--encoder-option", "width=0"], "has a size of 0"),
    (["--out", "{tmp}/r", "--method-option", "temperature=-1"], "must be positive"),
    (["--out", "{tmp}/r", "--method-option", "temperature=0"], "must be positive"),
    (["--out", "{tmp}/r", "--method-option", "projection_dim=0"], "must be positive"),
])
def test_bad_outputs_and_options_are_refused_in_words(monkeypatch, capsys, tmp_path, args,
                                                      message):
    (tmp_path / "file").write_text("not a folder")
    args = [a.format(file=tmp_path / "file", tmp=tmp_path) for a in args]
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--data", "digits",
                           "--steps", "2", *TINY, *args)
    assert code == 2 and "Traceback" not in err and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing left behind
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_read_only_disk_is_refused_in_words(monkeypatch, capsys, tmp_path):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)  # as root, chmod alone would not stop it
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--data", "digits",
                           "--steps", "2", "--out", str(tmp_path / "r"), *TINY)
    assert code == 2 and "the file system is read-only" in err and "Traceback" not in err


@pytest.mark.parametrize("damage", ["truncated checkpoint", "garbage checkpoint",
                                    "broken config"])
def test_a_damaged_run_is_refused_on_resume_and_left_as_it_was(monkeypatch, capsys, run_copy,
                                                               damage):
    (run_copy / "pretrain.json").unlink()  # an unfinished run: the resume would train
    checkpoint = run_copy / "checkpoints" / "last.ckpt"
    if damage == "truncated checkpoint":
        checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    elif damage == "garbage checkpoint":
        checkpoint.write_bytes(os.urandom(3000))
    else:
        (run_copy / "config.yaml").write_text("method: [simclr\n")
    before = snapshot(run_copy)
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--out", str(run_copy),
                           "--resume", "--steps", "8", "--no-progress")
    assert code == 2 and "Traceback" not in err and "damaged" in err, err
    after = snapshot(run_copy)
    after.pop(LOCK_NAME, None), before.pop(LOCK_NAME, None)
    assert after == before  # config.yaml not rewritten, no new log folder


def test_bad_nested_options_are_checked_before_any_data_is_read():
    with pytest.raises(SelfsupError, match="momentum' must be between 0 and 1"):
        api.pretrain("byol", "no-such-folder", steps=1, method_options={"momentum": 1.5})


def test_the_interrupted_error_carries_the_shell_s_code():
    assert Interrupted("x").exit_code == 130 and Interrupted("x").label == "interrupted"
