"""Faults and resumption: a resumed run ends where an uninterrupted one does, even after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from selfsup.config import build_config
from selfsup.data import ImageData, load_images
from selfsup.data.datasets import ImageBatchDataset, ResumableLoader, keep_batch
from selfsup.engine import fit
from selfsup.run import RunDir

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "method": "simclr",
    "data": "digits",
    "batch_size": 64,
    "encoder_options": {"width": 8},
    "precision": "32",
    "progress": False,
    "monitor_size": 0,
    "log_every_steps": 2,
    "checkpoint_steps": 2,
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and on a busy machine it spins."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CrashAt(pl.Callback):
    """Raises after optimiser step ``step``, like a crash between two checkpoints."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def _digits(size: int | None) -> ImageData:
    data = load_images("digits", progress=False)
    if size is None:
        return data
    assert data.labels is not None
    return ImageData(data.images[:size], data.labels[:size], data.class_names, "digits", [])


def _train(run_dir: Path, data: ImageData, steps: int, crash: int | None,
           optimizer: str = "adamw") -> dict:
    """The final encoder weights of a run, crashed at step ``crash`` and resumed if given."""
    config = build_config({**TINY, "steps": steps, "out": str(run_dir), "optimizer": optimizer})
    run = RunDir(run_dir)
    run.path.mkdir()
    if crash is None:
        method, _ = fit(config, data, run)
    else:
        with pytest.raises(RuntimeError, match="simulated crash"):
            fit(config, data, run, callbacks=[CrashAt(crash)])
        leftover = run.checkpoints / ".last.ckpt.killed.tmp"  # as a write killed mid-way leaves
        leftover.write_bytes(b"half a checkpoint")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            method, _ = fit(config, data, run, resume=True)
        assert not [w for w in caught if "not resumable" in str(w.message)]
        assert not leftover.exists()
    # The whole method: the projection head's linear layers are where Muon works.
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Reference runs, one per (data size, steps), shared by the crash points."""
    cache: dict[tuple[int | None, int, str], dict] = {}

    def get(size: int | None, steps: int, optimizer: str) -> dict:
        if (size, steps, optimizer) not in cache:
            run_dir = tmp_path_factory.mktemp("whole") / "run"
            cache[size, steps, optimizer] = _train(run_dir, _digits(size), steps, None, optimizer)
        return cache[size, steps, optimizer]

    return get


@pytest.mark.parametrize(
    ("size", "steps", "crash", "optimizer"),
    [
        (None, 8, 5, "adamw"),  # 28 batches an epoch: resumed at step 4, mid-epoch
        (256, 10, 5, "adamw"),  # 4 batches an epoch: resumed at step 4, at an epoch's end
        (256, 10, 7, "adamw"),  # resumed at step 6, mid-way through the second epoch
        (256, 10, 7, "muon"),  # Muon's momenta and AdamW's moments both in the checkpoint
    ],
)
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, uninterrupted, size, steps, crash,
                                                  optimizer):
    # Exact equality: fp32 on CPU is deterministic for a fixed order of operations, and the
    # resumed run sees the same batches (ResumableLoader), augmentations (the generator state
    # in the checkpoint), weights, optimiser moments and learning-rate schedule.
    reference = uninterrupted(size, steps, optimizer)
    resumed = _train(tmp_path / "run", _digits(size), steps, crash, optimizer)
    assert reference.keys() == resumed.keys()
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key


def _order(loader: ResumableLoader, batches: int) -> list[list[int]]:
    it = iter(loader)
    return [next(it)["labels"].tolist() for _ in range(batches)]


@pytest.mark.parametrize("workers", [0, 1])  # a worker prefetches ahead of what is consumed
def test_loader_state_resumes_mid_epoch_and_reshuffles_later_epochs(workers):
    data = ImageData(np.zeros((10, 1, 1, 1), np.uint8), np.arange(10), None, "toy", [])

    def loader() -> ResumableLoader:
        dataset = ImageBatchDataset(data, with_labels=True)
        return ResumableLoader(dataset, batch_size=3, seed=7, drop_last=True, collate_fn=keep_batch,
                               num_workers=workers, persistent_workers=workers > 0)

    whole = loader()
    epochs = [_order(whole, 3) for _ in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]  # a new order every epoch
    assert all(len(set(sum(epoch, []))) == 9 for epoch in epochs)  # no repeats within one

    first = loader()
    assert _order(first, 2) == epochs[0][:2]
    state = first.state_dict()
    assert state == {"seed": 7, "size": 10, "epoch": 0, "batches": 2}
    second = loader()
    second.load_state_dict(state)
    assert _order(second, 1) == epochs[0][2:]
    assert _order(second, 3) == epochs[1] and _order(second, 3) == epochs[2]


# ------------------------------------------------------------------------------- SIGKILL ----


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "selfsup", "pretrain", "simclr", *args, "--no-progress"]


def test_sigkill_leaves_a_loadable_checkpoint_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    # One thread: on a busy two-core machine a second OpenMP thread mostly spins (about 8x the
    # CPU time here), and the test needs no parallelism.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        _cli("--data", "digits", "--steps", "40", "--checkpoint-steps", "2", "--batch-size", "32",
             "--encoder-option", "width=8", "--precision", "32", "--out", str(run)),
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL, err.decode(errors="replace")[-2000:]
    assert not (run / "pretrain.json").exists()  # killed part-way, not after finishing

    state = torch.load(last, weights_only=False)  # complete: atomic writes never leave half files
    assert 2 <= state["global_step"] < 40
    # A kill during a checkpoint write may leave that write's temporary file (SIGKILL runs no
    # clean-up); last.ckpt is intact either way, and the resumed run removes such leftovers.
    resumed = subprocess.run(
        _cli("--resume", "--out", str(run)), cwd=tmp_path, env=env, capture_output=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")[-2000:]
    assert json.loads((run / "pretrain.json").read_text())["steps"] == 40
    assert not list((run / "checkpoints").glob("*.tmp"))  # pathlib's * matches dot-files too
