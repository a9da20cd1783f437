"""`selfsup embed`: stream a dataset through a run's encoder into a Parquet file.

Memory stays flat whatever the dataset size: rows are read a batch at a time straight from the
reader's cache file (not through its memory map, whose touched pages would count towards the
process's resident memory and grow with the file), embedded, and written out part by part.

Resumable and atomic: embeddings go to numbered part files in a hidden sibling folder
(``.NAME.parts/``), each written atomically, with a manifest naming the encoder (sha256 of its
weights) and the data (a hash of its ids and labels). ``resume=True`` keeps the complete parts of
a killed run that match both and embeds only the rest, so no row is written twice. When every
part is there they are concatenated into the final file through a temporary file and a rename,
so the final file either does not exist or is complete.

The file: one row per sample with ``index`` (int64, the row in the data), ``id`` (string: the
file path relative to the folder, or the row number for arrays), ``label`` (int64, when the data
has labels), ``label_name`` (string: the class sub-folder's or the npz ``class_names`` entry,
when the labels have names) and ``embedding`` (fixed-size list of float32). The schema metadata
holds ``run``, ``encoder``, ``dim``, ``modality``, ``class_names`` (a JSON list, when the labels
have names) and, under ``selfsup``, a JSON record of all of it. The names travel in the file
itself, so a reader that knows nothing of selfsup (pandas, DuckDB) sees them.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from selfsup import atomic
from selfsup.data.images import ImageData, load_images
from selfsup.errors import SelfsupError
from selfsup.loading import Embedder, load
from selfsup.registry import Registry

FORMAT_VERSION = 1
#: Rows per part file: what a killed run can lose, and the final file's row-group size.
DEFAULT_ROWS_PER_PART = 8192
EMBEDDING = "embedding"


# ----------------------------------------------------------------------------- sources ----


@dataclass
class Source:
    """A dataset as the embedder sees it: ids, labels, and model-ready batches by row range.

    A modality provides one through `SOURCES` (a text source would tokenise lines or documents);
    `read(a, b)` must cost memory proportional to b - a, never to the dataset.
    """

    path: str
    size: int
    labels: np.ndarray | None
    class_names: list[str] | None
    reader: Any  # callable (a, b) -> model-ready tensor of rows a..b-1
    ids: pa.StringArray | None = None  # one string per row (compact), or None: the row numbers
    skipped: list[Any] = field(default_factory=list)
    close: Any = None  # callable releasing open files, or None

    def __len__(self) -> int:
        return self.size

    def read(self, a: int, b: int) -> torch.Tensor:
        return self.reader(a, b)

    def id_slice(self, a: int, b: int) -> pa.Array:
        if self.ids is None:
            return pa.array([str(i) for i in range(a, b)], pa.string())
        return self.ids.slice(a, b - a)

    def fingerprint(self) -> str:
        """Identifies the rows (ids, labels and count), so a resume cannot mix two datasets."""
        digest = hashlib.sha256()
        digest.update(str(self.size).encode())
        for a in range(0, self.size if self.ids is not None else 0, 65536):
            for name in self.id_slice(a, min(a + 65536, self.size)).to_pylist():
                digest.update(name.encode("utf-8", "surrogatepass") + b"\0")
        if self.labels is not None:
            digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return digest.hexdigest()


SOURCES: Registry = Registry("embedding data modality")


class RowReader:
    """Rows a..b of a uint8 (N, ...) array, read from its backing file when it is a memmap.

    Slicing a memmap maps the file's pages into the process and they stay resident until the
    map is closed, so a sequential pass over a 50k-image cache would grow RSS by the whole file.
    Reading with ``readinto`` goes through the page cache instead, which is not our memory.
    """

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.row_shape = tuple(array.shape[1:])
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * array.itemsize
        self.handle = None
        filename = getattr(array, "filename", None)
        offset = int(getattr(array, "offset", 0) or 0)
        if (
            isinstance(array, np.memmap)
            and filename
            and array.flags.c_contiguous
            and os.path.getsize(filename) == offset + array.nbytes
        ):  # the whole file is this array: rows sit at offset + i * row_bytes
            self.handle = open(filename, "rb")  # noqa: SIM115 - closed by close()
            self.offset = offset

    def read(self, a: int, b: int) -> np.ndarray:
        if self.handle is None:
            return np.array(self.array[a:b])
        out = np.empty((b - a, *self.row_shape), dtype=self.array.dtype)
        self.handle.seek(self.offset + a * self.row_bytes)
        got = self.handle.readinto(memoryview(out).cast("B"))
        if got != out.nbytes:
            raise SelfsupError(
                f"{self.array.filename}: ended early at row {a + got // self.row_bytes}; the image"
                f" cache is damaged, delete it and run again"
            )
        return out

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def image_ids(data: ImageData) -> pa.StringArray | None:
    """Per-row ids: the files' paths relative to the folder (from the reader's cache record) for
    a folder, else None (the row number). An Arrow array costs about 4 bytes plus the path's
    length per row, a fraction of a Python list of strings."""
    filename = getattr(data.images, "filename", None)
    if filename:
        meta = Path(filename).parent / "meta.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, pa.ArrowException):
            files = pa.array(json.loads(meta.read_text(encoding="utf-8"))["files"], pa.string())
            if len(files) == len(data):
                return files
    return None


@SOURCES.register("image")
def image_source(embedder: Embedder, path: str, **reader: Any) -> Source:
    """Images from a folder, an .npz or 'digits', sized as the run's encoder expects.

    Any embedder with `image_size`, `channels` and `to_tensor` (uint8 batch -> model input)
    can use it: `ImageEmbedder`, and a CLIP embedder's image side.
    """
    if not all(hasattr(embedder, a) for a in ("image_size", "channels", "to_tensor")):
        raise SelfsupError(f"{embedder.run.path}: its encoder cannot embed images")
    data = load_images(path, image_size=embedder.image_size, **reader)
    channels = data.images.shape[-1]
    if channels != embedder.channels:
        raise SelfsupError(
            f"{path} has {channels}-channel images; the encoder of {embedder.run.path} expects"
            f" {embedder.channels}"
        )
    rows = RowReader(data.images)
    return Source(
        path=str(path),
        size=len(data),
        ids=image_ids(data),
        labels=data.labels,
        class_names=data.class_names,
        reader=lambda a, b: embedder.to_tensor(rows.read(a, b)),
        skipped=list(data.skipped),
        close=rows.close,
    )


def release_free_memory(collect: bool = True) -> None:
    """Return freed memory to the operating system, so resident memory tracks what is held.

    Opening a dataset builds per-file Python objects (the folder listing that validates the
    cache, the JSON record of file names) that are garbage once the source exists; each part's
    Arrow table is garbage once written. glibc and Arrow's allocator (mimalloc) keep freed
    blocks in the process, so without this the resident size would creep up with the number
    of files and parts although nothing holds them. Called once per part: cheap.
    """
    if collect:
        gc.collect()
    with contextlib.suppress(AttributeError, NotImplementedError):
        pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc only; elsewhere the call is absent


# ------------------------------------------------------------------------------ schema ----


LABEL_NAME = "label_name"


def schema(dim: int, with_labels: bool, meta: dict[str, Any]) -> pa.Schema:
    """The file's columns; ``label_name`` when the labels have names (``meta['class_names']``)."""
    fields = [pa.field("index", pa.int64(), nullable=False), pa.field("id", pa.string())]
    named = with_labels and bool(meta.get("class_names"))
    if with_labels:
        fields.append(pa.field("label", pa.int64()))
    if named:
        fields.append(pa.field(LABEL_NAME, pa.string()))
    fields.append(pa.field(EMBEDDING, pa.list_(pa.float32(), dim), nullable=False))
    flat = {k: str(meta[k]) for k in ("run", "encoder", "dim", "modality")}
    if named:
        flat["class_names"] = json.dumps(list(meta["class_names"]))
    return pa.schema(fields, metadata={**flat, "selfsup": json.dumps(meta)})


def label_names(labels: np.ndarray, class_names: list[str]) -> pa.Array:
    """Each label's class name (null for a label the names do not cover)."""
    labels = np.asarray(labels, dtype=np.int64)
    known = (labels >= 0) & (labels < len(class_names))
    names = pa.array([str(name) for name in class_names], pa.string())
    indices = pa.array(np.where(known, labels, 0), mask=~known)
    return names.take(indices)


def file_meta(path: str | Path) -> dict[str, Any]:
    """The ``selfsup`` record of an embeddings file; an error naming the file if it has none."""
    try:
        raw = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as error:
        raise SelfsupError(f"{path}: not a readable Parquet file ({error})") from None
    if b"selfsup" not in raw:
        return {}
    try:
        return json.loads(raw[b"selfsup"])
    except ValueError:
        raise SelfsupError(f"{path}: its 'selfsup' metadata is not valid JSON") from None


def _part_table(
    sch: pa.Schema, start: int, ids: pa.Array, labels: np.ndarray | None, vectors: np.ndarray
) -> pa.Table:
    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    columns = [pa.array(np.arange(start, start + n, dtype=np.int64)), ids]
    if labels is not None:
        columns.append(pa.array(np.asarray(labels, dtype=np.int64)))
    if LABEL_NAME in sch.names:
        class_names = json.loads(sch.metadata[b"class_names"])
        columns.append(label_names(labels, class_names))
    columns.append(pa.FixedSizeListArray.from_arrays(flat, dim))
    return pa.Table.from_arrays(columns, schema=sch)


# ---------------------------------------------------------------------------- the verb ----


class _Bar:
    """A rich progress bar with the embedding rate, or nothing."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("Embedding"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self.bar.start()
            self.task = self.bar.add_task("embed", total=total, completed=done, rate="")

    def update(self, advance: int, rate: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=advance, rate=f"{rate:,.0f} /s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def parts_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.parts")


def _complete_parts(folder: Path, bounds: list[tuple[int, int]], sch: pa.Schema) -> int:
    """How many leading parts are present with the right row count and columns (a part of an
    older selfsup may lack ``label_name``); later ones are redone."""
    done = 0
    for k, (a, b) in enumerate(bounds):
        part = folder / f"part-{k:06d}.parquet"
        try:
            if not part.is_file() or pq.read_metadata(part).num_rows != b - a:
                break
            if pq.read_schema(part).names != sch.names:
                break
        except (OSError, pa.ArrowException):
            break
        done += 1
    return done


def _clear_parts(folder: Path) -> None:
    """Remove a parts folder this module wrote (only its own file names)."""
    if not folder.is_dir():
        return
    for item in folder.iterdir():
        if item.name == "manifest.json" or item.name.startswith(("part-", ".part-")):
            item.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def embed(
    run: str | Path,
    data: str,
    out: str | Path,
    batch_size: int = 256,
    resume: bool = False,
    *,
    progress: bool = True,
    precision: str = "auto",
    skip_bad: bool = False,
    cache_dir: str | None = None,
    rows_per_part: int | None = None,
) -> dict[str, Any]:
    """Embed every sample of `data` with the run's encoder into the Parquet file `out`.

    Returns a summary: rows, dim, rows embedded by this call, seconds, images per second.
    """
    if batch_size < 1:
        raise SelfsupError(f"--batch-size must be at least 1, got {batch_size}")
    out = Path(out)
    if out.suffix.lower() != ".parquet":
        raise SelfsupError(f"{out}: the output must be a .parquet file")
    if out.is_dir():
        raise SelfsupError(f"{out} is a folder; --out must name a .parquet file")
    per_part = int(rows_per_part or DEFAULT_ROWS_PER_PART)
    if per_part < 1:
        raise SelfsupError(f"rows_per_part must be at least 1, got {per_part}")

    embedder = load(run, precision=precision, batch_size=batch_size)
    modality = embedder.modality
    if modality not in SOURCES:
        raise SelfsupError(f"embedding {modality} data is not supported yet")
    reader = {"skip_bad": skip_bad, "progress": progress, "cache_dir": cache_dir}
    source = SOURCES.get(modality)(embedder, data, **reader)
    release_free_memory()  # the reader's per-file listing is garbage now; hand it back
    try:
        return _embed_source(embedder, source, out, batch_size, per_part, resume, progress)
    finally:
        if source.close is not None:
            source.close()


def _embed_source(
    embedder: Embedder,
    source: Source,
    out: Path,
    batch_size: int,
    per_part: int,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    n = len(source)
    meta = {
        **embedder.describe(),
        "format_version": FORMAT_VERSION,
        "data": source.path,
        "data_sha256": source.fingerprint(),
        "rows": n,
        "class_names": source.class_names,
    }
    summary: dict[str, Any] = {"out": str(out), "rows": n, "dim": embedder.dim,
                               "skipped": len(source.skipped)}
    if resume and out.is_file():
        done = file_meta(out)
        same = ("encoder_sha256", "data_sha256", "rows")
        if all(done.get(k) == meta[k] for k in same):
            return {**summary, "embedded_now": 0, "resumed_rows": n, "seconds": 0.0,
                    "rows_per_s": None}
        raise SelfsupError(
            f"{out} already exists and holds embeddings of another encoder or data; delete it or"
            f" run without --resume to overwrite it"
        )

    sch = schema(embedder.dim, source.labels is not None, meta)
    folder = parts_dir(out)
    bounds = [(a, min(a + per_part, n)) for a in range(0, n, per_part)]
    manifest = {k: meta[k] for k in ("encoder_sha256", "data_sha256", "rows", "dim", "run",
                                     "data")}
    manifest["rows_per_part"] = per_part
    first = 0
    if resume and (folder / "manifest.json").is_file():
        try:
            saved = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except ValueError:
            saved = {}
        keys = ("encoder_sha256", "data_sha256", "rows", "rows_per_part")
        if any(saved.get(k) != manifest[k] for k in keys):
            raise SelfsupError(
                f"{folder}: the unfinished embedding there used another encoder or other data"
                f" (run {saved.get('run')}, data {saved.get('data')}); run without --resume to"
                f" start again"
            )
        atomic.remove_leftovers(folder)
        first = _complete_parts(folder, bounds, sch)
    else:
        _clear_parts(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic.write_json(folder / "manifest.json", manifest)

    start_row = bounds[first][0] if first < len(bounds) else n
    bar = _Bar(progress, n, start_row)
    started = time.perf_counter()
    try:
        for k in range(first, len(bounds)):
            a, b = bounds[k]
            vectors = np.empty((b - a, embedder.dim), dtype=np.float32)
            for s in range(a, b, batch_size):
                e = min(s + batch_size, b)
                vectors[s - a : e - a] = embedder.forward(source.read(s, e))
                bar.update(e - s, (e - start_row) / max(time.perf_counter() - started, 1e-9))
            labels = None if source.labels is None else source.labels[a:b]
            _write_part(folder / f"part-{k:06d}.parquet",
                        _part_table(sch, a, source.id_slice(a, b), labels, vectors))
            release_free_memory(collect=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - started

    # Concatenated a row group at a time: memory holds one part's rows, whatever the total.
    with atomic.atomic_path(out) as tmp, pq.ParquetWriter(tmp, sch) as writer:
        for k in range(len(bounds)):
            part = pq.ParquetFile(folder / f"part-{k:06d}.parquet")
            for group in range(part.num_row_groups):
                writer.write_table(part.read_row_group(group).cast(sch))
            part.close()
            release_free_memory(collect=False)
    _clear_parts(folder)
    embedded = n - start_row
    return {
        **summary,
        "embedded_now": embedded,
        "resumed_rows": start_row,
        "seconds": seconds,
        "rows_per_s": embedded / seconds if seconds > 0 and embedded else None,
    }


def _write_part(path: Path, table: pa.Table) -> None:
    with atomic.atomic_path(path) as tmp:
        pq.write_table(table, tmp)


__all__ = ["LABEL_NAME", "SOURCES", "RowReader", "Source", "embed", "file_meta", "image_source",
           "label_names", "schema"]
