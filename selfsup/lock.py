"""One live writer per run directory: an advisory lock that a killed process cannot leave stuck.

Two ``selfsup pretrain`` processes on one ``--out`` (or a ``--resume`` while the first still
runs) would interleave checkpoints, logs and the exported encoder. The first takes an exclusive
``flock`` on ``RUN/.selfsup.lock`` and writes who it is into the file; the second finds the lock
held and refuses, naming the live run. The kernel releases a ``flock`` when its process dies,
however it dies (SIGKILL included), so a stale lock file is simply taken over.

Only the run's first process takes it: the other ranks of a multi-process run are its own
children (Lightning's launcher) or peers started with it (torchrun, SLURM) and write nothing
but their share of collective work.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from selfsup.errors import SelfsupError

LOCK_NAME = ".selfsup.lock"


def _is_first_process() -> bool:
    """Rank 0 of a multi-process launch, read from the launcher's environment (the process
    group does not exist yet when a run starts)."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold the run directory's lock for the ``with`` block, or refuse: another live process
    is writing this run."""
    if not _is_first_process():
        yield
        return
    path = folder / LOCK_NAME
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the whole block)
    except OSError as error:
        raise SelfsupError(f"cannot write in the run directory {folder}: "
                           f"{error.strerror or error}") from None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            raise SelfsupError(
                f"{folder} is in use by a live run ({_describe(handle.read())}); wait for it "
                "to finish, or stop it, before resuming; or choose another --out"
            ) from None
        with contextlib.suppress(OSError):  # who holds it: for the message above, best effort
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "command": " ".join(sys.argv)}) + "\n")
            handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return (f"process {holder['pid']} on {holder['host']}, started {holder['started']}: "
                f"{holder['command']}")
    except (ValueError, KeyError, TypeError):
        return "another process"


__all__ = ["LOCK_NAME", "run_lock"]
