"""Reports: one self-contained HTML page per run (`selfsup report`) or across runs (`compare`)."""

from selfsup.report.html import build_compare, build_report, compare_rows, sweep_markdown, verdict

__all__ = ["build_compare", "build_report", "compare_rows", "sweep_markdown", "verdict"]
