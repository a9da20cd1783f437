"""Helpers shared by the test modules (pytest puts this folder on sys.path)."""

from __future__ import annotations

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
