"""`selfsup captions`'s and `selfsup prepare`'s bodies (their options: selfsup/cli.py)."""

from __future__ import annotations

from pathlib import Path

from selfsup.captions import captions_from_labels
from selfsup.commands import console
from selfsup.data.prepare import prepare as run_prepare
from selfsup.options import key_value_pairs


def captions(from_labels: Path, out: Path, classes: str | None, seed: int) -> None:
    """`selfsup captions`: the pairs CSV, and what to train on it."""
    chosen = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    result = captions_from_labels(from_labels, out, classes=chosen, seed=seed)
    console.print(f"[bold]done[/]: {result['rows']} pairs of {len(result['classes'])} classes "
                  f"({result['templates']} templates) written to {result['out']}")
    console.print(f"next: selfsup pretrain clip --data {result['out']} "
                  "--method-option text_init=HF_FOLDER")


def prepare(path: str, out: Path, repeat: int, shard_size_mb: float, image_size: int | None,
            skip_bad: bool, cache_dir: str | None, data_option: list[str] | None,
            progress: bool) -> None:
    """`selfsup prepare`: the shards, and what they hold."""
    manifest = run_prepare(
        path, out, repeat=repeat, shard_bytes=int(shard_size_mb * 2**20), image_size=image_size,
        skip_bad=skip_bad, cache_dir=cache_dir,
        data_options=key_value_pairs(data_option, "--data-option"), progress=progress,
    )
    if manifest["modality"] == "text":
        what = f"documents ({manifest['characters']:,} characters)"
    else:
        sample = manifest["sample"]
        what = f"{manifest['modality']} samples {tuple(sample['shape'])} {sample['dtype']}"
    console.print(
        f"[bold]done[/]: {manifest['count']} {what} in {len(manifest['shards'])} shard(s), "
        f"written to {out}"
    )
    console.print(f"next: selfsup pretrain METHOD --data {out}")
