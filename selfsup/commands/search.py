"""`selfsup embed`'s, `selfsup index`'s and `selfsup search`'s bodies (their options:
selfsup/cli.py). Nothing here trains: Lightning is never loaded."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from selfsup.commands import console
from selfsup.embed import embed as run_embed
from selfsup.index import build_index
from selfsup.index import search as run_search


def embed(run: Path, data: str, out: Path, batch_size: int, resume: bool, skip_bad: bool,
          progress: bool) -> None:
    """`selfsup embed`: the Parquet file, and how to index it."""
    result = run_embed(run, data, out, batch_size=batch_size, resume=resume, skip_bad=skip_bad,
                       progress=progress)
    rate = f", {result['rows_per_s']:.0f} rows/s" if result["rows_per_s"] else ""
    kept = f" ({result['resumed_rows']} kept from before)" if result["resumed_rows"] else ""
    console.print(f"[bold]done[/]: {result['rows']} rows x {result['dim']} dims{kept}{rate};"
                  f" written to {result['out']}")
    console.print(f"next: selfsup index {result['out']} --out index/")


def index(embeddings: Path, out: Path, metric: str, kind: str) -> None:
    """`selfsup index`: the index, its parameters and measured recall."""
    info = build_index(embeddings, out, metric=metric, kind=kind)
    params = ", ".join(f"{k}={v}" for k, v in info["params"].items())
    console.print(
        f"[bold]done[/]: {info['kind']} index ({info['metric']}{', ' + params if params else ''})"
        f" of {info['count']} x {info['dim']} in {info['build_seconds']:.1f} s, recall@10"
        f" {info['recall_at_10']:.3f} vs exact; written to {out}"
    )


def search(run: Path, query: str | None, index: Path, image: Path | None, k: int,
           json_out: bool) -> None:
    """`selfsup search`: the neighbours as a table, or JSON."""
    result = run_search(run, index, query, image=image, k=k)
    if json_out:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{result['modality']} query {result['query']!r}")
    table.add_column("rank", justify="right")
    table.add_column(result["score"], justify="right")
    table.add_column("id")
    table.add_column("label")
    for hit in result["hits"]:
        label = hit.get("label_name", hit.get("label", ""))
        table.add_row(str(hit["rank"]), f"{hit['score']:.4f}", hit["id"], str(label))
    console.print(table)
