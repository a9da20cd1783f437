"""`selfsup report`'s and `selfsup compare`'s bodies (their options: selfsup/cli.py)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from selfsup.commands import console
from selfsup.report import build_compare, build_report, compare_rows


def report(run: Path, embedding_map: bool) -> None:
    """`selfsup report`: RUN/report.html."""
    console.print(f"written {build_report(run, embedding_map=embedding_map)}")


def compare(runs: list[Path], out: Path) -> None:
    """`selfsup compare`: the table, and the page written."""
    written = build_compare(runs, out)  # checks the runs and --out before anything is shown
    rows = compare_rows(runs)
    table = Table(title="selfsup compare")
    for column in ("run", "method", "encoder", "steps", "minutes", "linear", "kNN", "supervised"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], str(r["method"]), str(r["encoder"]), str(r["steps"]),
                      f"{r['minutes']:.1f}" if r["minutes"] is not None else "—",
                      *(f"{r[p]:.4f}" if r.get(p) is not None else "—"
                        for p in ("linear", "knn", "supervised")))
    console.print(table)
    console.print(f"written {written}")
