"""Helpers shared by the test modules (pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from selfsup.cli import main


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``selfsup ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["selfsup", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


HEAVY = ("torch", "lightning", "pytorch_lightning", "transformers")

#: Runs `selfsup ARGS` for each JSON list of ARGS given, one after another in this one
#: interpreter, and prints for each its exit code and the heavy modules loaded by then.
WRAPPER = f"""
import json, sys
from selfsup.cli import main
report = []
for args in map(json.loads, sys.argv[1:]):
    sys.argv = ["selfsup", *args]
    try:
        main()
    except SystemExit as exited:
        code = exited.code
    report.append({{"args": args, "code": code,
                   "loaded": [m for m in {HEAVY!r} if m in sys.modules]}})
print("REPORT " + json.dumps(report))
"""


def run_in_fresh_interpreter(*commands: list[str]) -> list[dict]:
    """Each command's exit code and the heavy modules loaded once it had run."""
    env = {**os.environ, "COLUMNS": "120"}
    done = subprocess.run([sys.executable, "-c", WRAPPER, *map(json.dumps, commands)],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, done.stderr[-2000:]
    return json.loads(lines[-1].removeprefix("REPORT "))
