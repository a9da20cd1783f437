"""`selfsup prepare`: which modality an input is, and its reader's shards written.

The one module that knows every modality's reader (images, series, text); the readers and
``data/shards.py`` never import it. The shard format is described in ``data/shards.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.data import images, series, shards, text
from selfsup.data.images import IMAGE_EXTENSIONS
from selfsup.errors import SelfsupError

_TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".ndjson", ".gz", ".json")
_SERIES_SUFFIXES = (".csv", ".parquet", ".pq")


def prepare(
    path: str,
    out: str | Path,
    *,
    repeat: int = 1,
    shard_bytes: int = shards.SHARD_BYTES,
    image_size: int | None = None,
    skip_bad: bool = False,
    cache_dir: str | None = None,
    data_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert ``path`` into WebDataset shards in ``out``; returns the manifest.

    ``repeat`` k writes the data k times over (sample i + j*N is sample i), for scale tests.
    A text corpus is read as ``data/text.py`` reads it, with ``data_options`` ``text_field``,
    ``text_column`` and ``encoding_errors``; each document becomes one sample.
    ``out`` is written whole in a hidden staging folder beside it and renamed into place at
    the end, so a killed prepare never leaves a folder that looks complete; an existing
    ``out`` must be an earlier prepare's output (it is replaced) or empty.
    """
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise SelfsupError(f"--repeat must be a positive integer, got {repeat!r}")
    if shard_bytes < 1:
        raise SelfsupError(f"the shard size must be positive, got {shard_bytes}")
    out = Path(out).expanduser()
    shards.check_out(out)
    modality = detect_modality(path, data_options)
    if modality == "image":
        if data_options:
            raise SelfsupError("image data takes no --data-option; use --image-size/--skip-bad")
        source = images.prepare_source(path, {"image_size": image_size, "skip_bad": skip_bad,
                                             "cache_dir": cache_dir, "progress": progress})
    elif modality == "text":
        if image_size is not None:
            raise SelfsupError("--image-size is for images; this input is a text corpus")
        source = text.prepare_source(path, data_options or {})
    else:
        if image_size is not None:
            raise SelfsupError("--image-size is for images; this input is a series file")
        source = series.prepare_source(path, {"data_options": data_options})
    return shards.write_prepared(source, path, out, repeat, shard_bytes)


def detect_modality(path: str | Path, data_options: dict[str, Any] | None = None) -> str:
    """image, series or text, from what ``path`` is; SelfsupError when it is none of them.

    A parquet file is text when ``data_options`` name a ``text_column`` or when it has a
    string column ``text``; otherwise it holds series.
    """
    if str(path) == "digits":
        return "image"
    if "," in str(path) and not Path(path).exists():  # pooled series files (data/series.py)
        series.series_files(path)  # each part exists, else the message names it
        return "series"
    p = Path(path).expanduser()
    if not p.exists():
        raise SelfsupError(f"{path}: no such file or folder")
    if shards.is_prepared(p):
        raise SelfsupError(f"{path} is already a prepared shards folder")
    if p.is_dir():
        top = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
        if top and all(f.suffix.lower() == ".npz" for f in top):
            return "series"  # a folder of series files, pooled
        for _, _, files in os.walk(p):
            if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files if not f.startswith(".")):
                return "image"
            if any(f.lower().endswith(_TEXT_SUFFIXES) for f in files):
                return "text"
        raise SelfsupError(f"{path}: no image files (or text files) found in this folder")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as archive:
                keys = set(archive.files)
        except Exception as e:
            raise SelfsupError(f"{path}: not a readable .npz archive ({e})") from None
        if keys & {"images", "x"}:
            return "image"
        if keys & {"X", "X_train", "X_test"}:
            # X is an image array when it is uint8 with 3 or 4 axes, else series
            return "series" if keys & {"X_train", "X_test"} else _npz_x_kind(p)
        raise SelfsupError(f"{path}: an .npz with neither images nor series (keys: "
                           f"{', '.join(sorted(keys)) or '(none)'})")
    if suffix in (".parquet", ".pq") and _parquet_is_text(p, data_options or {}):
        return "text"
    if suffix in _SERIES_SUFFIXES:
        return "series"
    if suffix in _TEXT_SUFFIXES:
        return "text"
    raise SelfsupError(
        f"{path}: unknown input; prepare reads an image folder, an .npz, 'digits', a series "
        ".csv/.parquet/.npz, or a text corpus (.txt/.md, a folder of them, .jsonl(.gz), "
        ".parquet with a text column)"
    )


def _parquet_is_text(p: Path, data_options: dict[str, Any]) -> bool:
    if "text_column" in data_options:
        return True
    import pyarrow as pa  # here, not at the top: pyarrow is heavy and only parquet needs it
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(p)
    except (OSError, pa.ArrowException):
        return False  # the series reader names the problem
    index = schema.get_field_index("text")
    return index >= 0 and (pa.types.is_string(schema.field(index).type)
                           or pa.types.is_large_string(schema.field(index).type))


def _npz_x_kind(p: Path) -> str:
    with np.load(p, allow_pickle=False) as archive:
        x = archive["X"]
    return "image" if x.dtype == np.uint8 and x.ndim in (3, 4) else "series"
