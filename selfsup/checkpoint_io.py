"""Lightning checkpoints written atomically (through :func:`selfsup.atomic.atomic_path`).

Apart from selfsup/atomic.py because it needs torch and Lightning, which the plain writers
(embeddings, indexes, reports) do not.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from selfsup.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O whose writes go through :func:`atomic_path`."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with atomic_path(path) as tmp:
            try:
                torch.save(checkpoint, tmp)
            except RuntimeError as error:  # torch's zip writer reports a full disk this way
                raise _write_error(Path(path), error) from None


def _write_error(target: Path, error: RuntimeError) -> OSError:
    """torch.save's RuntimeError as the OSError it stands for: ENOSPC when the disk is (all
    but) full, so that callers handle one kind of failure; else an EIO naming the cause."""
    usage = shutil.disk_usage(target.parent)
    if usage.free < max(64 * 2**20, usage.total // 100):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
    return OSError(errno.EIO, f"{os.strerror(errno.EIO)}: {str(error).splitlines()[0]}",
                   str(target))
