"""Paired image-caption data for CLIP: a table of (image path, caption) rows, decoded once.

Two layouts, picked from the path:

* a ``.csv`` or ``.jsonl`` file with an image-path column and a caption column
  (``image_column`` / ``caption_column``, CLI ``--image-column`` / ``--caption-column``); image
  paths are relative to the file's own folder (absolute paths are kept);
* a folder of images with a captions file inside it (``captions.csv`` or ``captions.jsonl``,
  or the file named by the data option ``captions``); paths are relative to the folder.

Every distinct image path is decoded once into a uint8 memmap cached like the folder reader's
(keyed by the table, every image file's size and mtime, and the options), so a second run starts
at once; rows refer to images and captions by index, so the same image under five captions (the
COCO layout) is stored once and a caption repeated on many rows is encoded once. A row whose
image is missing or unreadable, or whose caption is empty, is a :class:`SelfsupError` naming the
file and line, or, under ``--skip-bad``, skipped and counted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup.config import options_dataclass
from selfsup.data.base import READERS, DataInfo
from selfsup.data.images import (
    ImageData,
    _decode_one,
    _probe_one,
    _reason,
    default_cache_dir,
    image_stats,
)
from selfsup.errors import SelfsupError

log = logging.getLogger("selfsup")

#: Bump when decoding or the cache layout changes, so older caches are not reused.
PAIRS_VERSION = 1
TABLE_EXTENSIONS = (".csv", ".jsonl", ".ndjson")
CAPTION_FILES = ("captions.csv", "captions.jsonl")


@dataclass
class PairOptions:
    """Reader options of paired data (``data_options``; CLI ``--image-column`` ...)."""

    image_column: str = "image"
    caption_column: str = "caption"
    captions: str | None = None  # folder layout: the captions file (default captions.csv/jsonl)


@dataclass
class Row:
    """One parsed table row: where it came from, its image path, its caption."""

    where: str  # "pairs.csv line 7", for messages
    image: str  # absolute path
    caption: str


# ---------------------------------------------------------------------------- the table


def locate(path: str | Path, options: PairOptions) -> tuple[Path, Path]:
    """(table file, folder its image paths are relative to) for a table file or a folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SelfsupError(f"{path}: no such file or folder")
    if path.is_dir():
        if options.captions is not None:
            table = Path(options.captions).expanduser()
            table = table if table.is_absolute() else path / table
            if not table.is_file():
                raise SelfsupError(f"{table}: no such captions file (data option captions)")
            return table, path
        for name in CAPTION_FILES:
            if (path / name).is_file():
                return path / name, path
        raise SelfsupError(
            f"{path}: a folder of paired images needs a captions file in it "
            f"({' or '.join(CAPTION_FILES)}: an image path and a caption per row), or name one "
            "with --data-option captions=FILE"
        )
    if not path.name.lower().endswith(TABLE_EXTENSIONS):
        raise SelfsupError(
            f"{path}: paired data must be a .csv or .jsonl file of image paths and captions, or "
            "a folder of images with a captions.csv"
        )
    return path, path.parent


def read_table(table: Path, base: Path, options: PairOptions) -> list[Row | tuple[str, str]]:
    """Every row of the table: a :class:`Row`, or (where, reason) for a row with a bad field."""
    name = table.name.lower()
    try:
        if name.endswith(".csv"):
            return list(_csv_rows(table, base, options))
        return list(_jsonl_rows(table, base, options))
    except UnicodeDecodeError as error:
        raise SelfsupError(f"{table}: not UTF-8 text ({error.reason} at byte {error.start})") \
            from None
    except OSError as error:
        raise SelfsupError(f"{table}: cannot be read ({_reason(error)})") from None


def _csv_rows(table: Path, base: Path, options: PairOptions):
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        _check_columns(table, columns, options)
        for record in reader:
            yield _row(f"{table} line {reader.line_num}", record, base, options)


def _jsonl_rows(table: Path, base: Path, options: PairOptions):
    with open(table, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{table} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield where, f"not valid JSON ({error.msg})"
                continue
            if not isinstance(record, dict):
                yield where, "not a JSON object"
                continue
            yield _row(where, record, base, options)


def _check_columns(table: Path, columns: list[str], options: PairOptions) -> None:
    missing = [c for c in (options.image_column, options.caption_column) if c not in columns]
    if missing:
        raise SelfsupError(
            f"{table}: no column {', '.join(map(repr, missing))}; its columns are "
            f"{', '.join(map(repr, columns)) or '(none)'} (choose them with --image-column and "
            "--caption-column)"
        )


def _row(where: str, record: dict[str, Any], base: Path, options: PairOptions) -> Row | tuple:
    image, caption = record.get(options.image_column), record.get(options.caption_column)
    if not isinstance(image, str) or not image.strip():
        return where, f"no image path in {options.image_column!r}"
    if not isinstance(caption, str) or not caption.strip():
        return where, f"no caption in {options.caption_column!r}"
    image_path = Path(image.strip()).expanduser()
    if not image_path.is_absolute():
        image_path = base / image_path
    return Row(where, os.path.abspath(image_path), caption.strip())


# ---------------------------------------------------------------------------- the data


@dataclass
class PairData:
    """Images and captions paired by row: what CLIP trains on and retrieval is scored on."""

    images: np.ndarray  # uint8 (M, H, W, C), each distinct image once (possibly a memmap)
    image_rows: np.ndarray  # int64 (N,): row -> index into images
    caption_rows: np.ndarray  # int64 (N,): row -> index into captions
    captions: list[str]  # each distinct caption once
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (row, reason), --skip-bad
    image_files: list[str] | None = None  # index -> file, where known

    modality = "image_text"
    labels = None

    @property
    def num_classes(self) -> int | None:
        return None

    def __len__(self) -> int:
        return int(len(self.image_rows))

    def row_captions(self, indices: np.ndarray | None = None) -> list[str]:
        rows = self.caption_rows if indices is None else self.caption_rows[np.asarray(indices)]
        return [self.captions[i] for i in rows.tolist()]

    def image_data(self) -> ImageData:
        """The distinct images as unlabelled :class:`ImageData` (statistics, probes)."""
        return ImageData(self.images, None, None, self.source, [])

    # -- the TrainData protocol (selfsup/data/base.py) --

    def data_info(self) -> DataInfo:
        return DataInfo(
            channels=int(self.images.shape[-1]),
            image_size=int(self.images.shape[1]),
            num_images=len(self),
            extra={"captions": self.captions, "image_count": int(len(self.images))},
        )

    def encoder_inputs(self) -> dict[str, Any]:
        mean, std = image_stats(self.image_data())
        return {"in_channels": int(self.images.shape[-1]), "mean": mean, "std": std}

    def encoder_spec(self) -> dict[str, Any]:
        return {"image_size": int(self.images.shape[1]), "channels": int(self.images.shape[-1])}

    def batch_dataset(self, with_labels: bool) -> Dataset:
        if with_labels:
            raise SelfsupError(f"{self.source}: paired data has no class labels")
        return PairBatchDataset(self)

    def inputs(self, indices: np.ndarray) -> torch.Tensor:
        """Float (B, C, H, W) images in [0, 1] of those rows."""
        return self.image_data().inputs(self.image_rows[np.asarray(indices)])

    def subset(self, indices: np.ndarray, source: str) -> PairData:
        rows = np.sort(np.asarray(indices))
        return replace(self, image_rows=self.image_rows[rows], caption_rows=self.caption_rows[rows],
                       source=source)


class PairBatchDataset(Dataset):
    """A batch of rows at once: uint8 images, and caption and image ids (for the loss)."""

    def __init__(self, data: PairData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = np.asarray(positions)
        image_ids = self.data.image_rows[rows]
        unique, inverse = np.unique(image_ids, return_inverse=True)  # sorted: file order
        images = np.asarray(self.data.images[unique])[inverse]
        return {
            "images": torch.from_numpy(np.ascontiguousarray(images)),
            "captions": torch.from_numpy(self.data.caption_rows[rows].astype(np.int64)),
            "image_ids": torch.from_numpy(image_ids.astype(np.int64)),
        }

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}


def load_pairs(
    path: str | Path,
    options: dict[str, Any] | PairOptions | None = None,
    *,
    skip_bad: bool = False,
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
) -> PairData:
    """Read a pairs table (or a folder with a captions file) and decode its images (cached)."""
    if not isinstance(options, PairOptions):
        options = options_dataclass(PairOptions, dict(options or {}), "paired-data options")
    table, base = locate(path, options)
    parsed = read_table(table, base, options)
    if not parsed:
        raise SelfsupError(f"{table}: no rows (an image path and a caption per row)")
    bad: list[tuple[str, str]] = [r for r in parsed if isinstance(r, tuple)]
    rows = [r for r in parsed if isinstance(r, Row)]
    if bad and not skip_bad:
        _raise_bad(bad)
    files = sorted({r.image for r in rows})
    stats = {}
    for file in files:
        try:
            st = os.stat(file)
            stats[file] = (st.st_size, st.st_mtime_ns)
        except OSError:
            stats[file] = None  # reported below, with the row that names it
    table_stat = table.stat()
    key_src = json.dumps(
        [PAIRS_VERSION, str(table.resolve()), table_stat.st_size, table_stat.st_mtime_ns,
         options.image_column, options.caption_column, image_size, bool(skip_bad),
         [[f, stats[f]] for f in files]],
        separators=(",", ":"),
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    root = Path(cache_dir).expanduser() / "pairs" if cache_dir else default_cache_dir() / "pairs"
    folder = root / key
    if not (folder / "meta.json").is_file():
        _decode(rows, bad, files, stats, image_size, skip_bad, root, folder, table)
    data = _read_cache(folder, str(path))
    if data.skipped:
        names = ", ".join(w for w, _ in data.skipped[:3])
        log.warning("skipped %d bad rows of %s (--skip-bad): %s%s", len(data.skipped), path,
                    names, ", ..." if len(data.skipped) > 3 else "")
    return data


def _raise_bad(bad: list[tuple[str, str]], total: int | None = None) -> None:
    where, reason = bad[0]
    others = (total if total is not None else len(bad)) - 1
    more = f" ({others} more bad)" if others > 0 else ""
    raise SelfsupError(
        f"{where}: {reason}{more}; fix or remove the row, or use --skip-bad to skip bad rows"
    )


def _decode(
    rows: list[Row],
    bad: list[tuple[str, str]],
    files: list[str],
    stats: dict[str, Any],
    image_size: int | None,
    skip_bad: bool,
    root: Path,
    folder: Path,
    table: Path,
) -> None:
    """Probe every image, pick the output size, decode the readable ones into the cache."""
    first_row = {}
    for row in rows:
        first_row.setdefault(row.image, row.where)
    broken: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for file in files:
        if stats[file] is None:
            broken[file] = "no such image file"
            continue
        try:
            sizes[file] = _probe_one(file)
        except Exception as error:  # any failure: this image is bad
            broken[file] = f"cannot read image ({_reason(error)})"
    if broken and not skip_bad:
        first = min(broken, key=lambda f: _line(first_row[f]))
        _raise_bad([(f"{first_row[first]}: image {first}", broken[first])], len(broken))
    if not sizes:
        raise SelfsupError(f"{table}: none of its {len(files)} images could be read")
    counts = Counter(sizes.values())
    if image_size is None and len(counts) == 1:
        target = None  # one size: keep it
        (w, h), = counts
        out_hw = (h, w)
    else:
        side = image_size or min(counts.most_common(1)[0][0])
        target, out_hw = side, (side, side)
        if image_size is None:
            log.info("images have %d different sizes; resizing to %dx%d", len(counts), side, side)
    good = [f for f in files if f in sizes]
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=root))
    try:
        images = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(good), *out_hw, 3)
        )
        kept: list[str] = []
        for file in good:
            try:
                array = _decode_one(file, target)
                if array.shape[:2] != out_hw:
                    raise ValueError(f"size {array.shape[1]}x{array.shape[0]} after decoding")
            except Exception as error:  # truncated files fail only when decoded
                broken[file] = f"cannot read image ({_reason(error)})"
                if not skip_bad:
                    _raise_bad([(f"{first_row[file]}: image {file}", broken[file])])
                continue
            images[len(kept)] = array
            kept.append(file)
        images.flush()
        del images
        index = {file: i for i, file in enumerate(kept)}
        captions: dict[str, int] = {}
        image_rows, caption_rows, skipped = [], [], list(bad)
        for row in rows:
            if row.image not in index:
                skipped.append((row.where, f"image {row.image}: {broken[row.image]}"))
                continue
            image_rows.append(index[row.image])
            caption_rows.append(captions.setdefault(row.caption, len(captions)))
        if not image_rows:
            raise SelfsupError(f"{table}: every row is bad; the first: {skipped[0][0]}: "
                               f"{skipped[0][1]}")
        np.save(tmp / "image_rows.npy", np.asarray(image_rows, dtype=np.int64))
        np.save(tmp / "caption_rows.npy", np.asarray(caption_rows, dtype=np.int64))
        meta = {"version": PAIRS_VERSION, "count": len(kept), "files": kept,
                "captions": list(captions), "skipped": skipped}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not a concurrent twin that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _line(where: str) -> int:
    tail = where.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _read_cache(folder: Path, source: str) -> PairData:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    images = np.load(folder / "images.npy", mmap_mode="r")
    if meta["count"] > 0 and images.shape[-1] != 3:
        raise SelfsupError(f"{folder}: damaged pairs cache; delete it and run again")
    return PairData(
        images=images,
        image_rows=np.load(folder / "image_rows.npy"),
        caption_rows=np.load(folder / "caption_rows.npy"),
        captions=list(meta["captions"]),
        source=source,
        skipped=[tuple(s) for s in meta["skipped"]],
        image_files=list(meta["files"]),
    )


def _read_pair_data(
    path: str, options: dict[str, Any], config: Any, method: Any = None
) -> PairData:
    """The "image_text" reader of the registry."""
    return load_pairs(path, options, skip_bad=config.skip_bad, image_size=config.image_size,
                      cache_dir=config.cache_dir)


if "image_text" not in READERS:
    READERS.register("image_text")(_read_pair_data)
