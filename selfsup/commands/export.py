"""`selfsup export`'s body (its options: selfsup/cli.py)."""

from __future__ import annotations

from pathlib import Path

from selfsup.commands import console
from selfsup.export import export_run


def export(run: Path, out: Path) -> None:
    """`selfsup export`: the folder, and how to load it."""
    path, how = export_run(run, out)
    console.print(f"exported to {path}; load it with {how}")
