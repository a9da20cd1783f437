"""Writes are all-or-nothing: a failure mid-write leaves the previous file intact."""

import errno

import pytest
import torch

from selfsup import atomic, checkpoint_io
from selfsup.errors import SelfsupError


def test_failed_write_keeps_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "eval.json"
    atomic.write_json(target, {"accuracy": 0.5})
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text('{"accuracy": 0.')
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "accuracy": 0.5\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_full_disk_is_a_clear_error_and_no_partial_file(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(SelfsupError, match="no space left"), atomic.atomic_path(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_io_failure_keeps_previous_checkpoint(tmp_path, monkeypatch):
    io = checkpoint_io.AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
