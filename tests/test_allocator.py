"""The engine keeps freed memory in the process: a step's large tensors reuse mapped pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from selfsup import allocator

# Allocate, touch and free a 64 MiB tensor (a ResNet activation's size) 16 times; report each
# round's page faults, after retain_freed_memory() or without it.
PROBE = """
import json, resource, sys
import torch
from selfsup import allocator
kept = allocator.retain_freed_memory() if sys.argv[1] == "retain" else False
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(32 << 20, dtype=torch.bfloat16).fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults}))
"""

needs_glibc = pytest.mark.skipif(allocator.glibc() is None, reason="glibc's mallopt only")


def _probe(mode: str, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k != "SELFSUP_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env={**base, **env}, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_glibc
def test_retained_memory_is_reused_without_page_faults() -> None:
    system = _probe("system")
    kept = _probe("retain")
    assert kept["kept"] and not system["kept"]
    # Without it every round maps 16,384 fresh 4 KiB pages. With it the heap first grows into
    # its padding (aligned blocks fragment it for a few rounds), then reuses what was freed.
    assert min(system["faults"]) > 10_000
    assert max(kept["faults"][-4:]) < 1_000


@needs_glibc
def test_selfsup_malloc_system_keeps_glibcs_defaults() -> None:
    probe = _probe("retain", SELFSUP_MALLOC="system")
    assert not probe["kept"] and min(probe["faults"][-4:]) > 10_000
