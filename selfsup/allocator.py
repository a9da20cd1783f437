"""Freed memory kept in the process, so each training step reuses pages already mapped.

glibc's malloc serves a block above its mmap threshold (128 KiB at first, rising to at most
32 MiB) with fresh pages from the kernel and hands them back on ``free``. A training step
allocates and frees the same large activations every time, so every step faults them all in
again: a SimCLR step of resnet_small at batch 256 took about 160,000 page faults here, and
ran at 0.5-0.7x the speed it reaches once freed pages are kept (``benchmarks/compiled_steps.py``:
"before" against "eager"). PyTorch's CPU performance guide preloads jemalloc or tcmalloc for
the same reason; :func:`retain_freed_memory` gets the effect from the glibc already loaded,
with no preload and no re-exec:

- ``M_MMAP_MAX = 0``: every block comes from the heap, none from its own mapping;
- ``M_TRIM_THRESHOLD = 2 GiB``: freed memory at the heap's top stays mapped up to that much;
- ``M_TOP_PAD = 256 MiB``: the heap grows in large steps (fewer ``brk`` calls).

The resident size then stays at the process's high-water mark instead of following what is
live; code that wants memory back (``selfsup embed`` after each part) calls ``malloc_trim``.
``SELFSUP_MALLOC=system`` in the environment keeps glibc's defaults. Elsewhere (macOS, musl)
this does nothing.
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 256 << 20))

_retained = False


def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc, else None."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL("libc.so.6")
    except (ValueError, OSError, AttributeError):  # no such confstr name, or no glibc
        return None


def retain_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse (see the module's docstring); True once it does.

    Idempotent and cheap: the engine calls it before every fit and Trainer, feature extraction
    before it encodes.
    """
    global _retained
    if _retained:
        return True
    if os.environ.get("SELFSUP_MALLOC", "retain").strip().lower() == "system":
        return False
    libc = glibc()
    if libc is None:
        return False
    _retained = all(libc.mallopt(option, value) == 1 for option, value in SETTINGS)
    return _retained
