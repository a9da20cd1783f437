"""Atomic file writes: write beside the target, flush to disk, then rename over it.

A reader (or a resumed run) therefore sees either the previous complete file or the new complete
file, never a half-written one, even if the process is killed mid-write or the disk fills up.

Only the standard library: embeddings, indexes and reports write through here without loading
torch or Lightning. Lightning's checkpoint writer built on :func:`atomic_path` is in
selfsup/checkpoint_io.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selfsup.errors import DiskFull, SelfsupError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file 0600 (and a writer may replace it with its own); the result
        # gets the mode any new file would (0644 under the usual umask 022), so teammates on a
        # shared disk can read the weights, embeddings and reports.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise DiskFull(str(target)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on success it replaces ``target`` whole.

    A kill or a full disk mid-write leaves the previous folder (or nothing), never a folder
    that half loads. A ``target`` that exists must be a previous export (it holds config.json,
    or an image export's encoder.pt2) or empty, so that a mistyped path never replaces unrelated
    files.
    """
    target = Path(target)
    if (target.exists() and any(target.iterdir())
            and not any((target / name).is_file() for name in ("config.json", "encoder.pt2"))):
        raise SelfsupError(f"{target} exists and is not an exported model; choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_folder(staging: Path, target: Path) -> None:
    """Rename the complete folder ``staging`` onto ``target``, moving an old one aside first."""
    try:
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    except OSError as error:
        raise SelfsupError(f"could not write {target}: {error}") from None


def remove_leftovers(*folders: str | Path) -> list[Path]:
    """Delete the temporaries of writes that were killed (SIGKILL or power loss skip clean-up).

    A killed checkpoint write leaves a file as large as a checkpoint; a run calls this on its own
    folders as it starts, when no other writer can be using them. Returns what it removed.
    """
    removed = []
    for folder in folders:
        for tmp in Path(folder).glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, payload: Any) -> None:
    write_text(target, json.dumps(payload, indent=2, sort_keys=False) + "\n")
