"""`selfsup prepare`: data far larger than RAM as WebDataset shards, read back with flat memory.

Layout of a prepared folder (format version 1)::

    shards/
      manifest.json          what is inside: modality, count, sample shape and dtype, classes,
                             the source's fingerprint, image statistics, the shard list
      shard-000000.tar ...   WebDataset shards: sample i is ``{i:09d}.npy`` (the array: uint8
                             H x W x C for images, float32 C x L for series) and, when labelled,
                             ``{i:09d}.cls`` (the class index as text)
      offsets.npy            int64 (N,): where sample i's array bytes start inside its shard
      labels.npy             int64 (N,), when labelled; lengths.npy for series

The shards are plain tar files in WebDataset's naming convention (Breuel et al., the
``webdataset`` library), so any WebDataset pipeline can stream them as they are
(``webdataset.WebDataset("shards/shard-{000000..000009}.tar").decode()``), and ``tar tf``
lists them. selfsup itself reads them by random access: ``offsets.npy`` makes every sample one
``os.pread`` of known size (what WebDataset's ``wids`` does with its tar indexes), so the
engine's exact, resumable, rank-split epoch order (``data/datasets.py`` ResumableLoader) works
on shards unchanged, and the process holds only the batches in flight: no memory map grows with
the data, and the operating system's page cache, not the process, keeps what was read.

A reader sees a prepared folder (or its ``manifest.json``) through :func:`is_prepared`: the
image reader returns an :class:`ImageData` whose ``images`` is a :class:`ShardArray` (indexed
like the uint8 memmap it replaces), the series reader a :class:`SeriesData` over shards. Text
corpora are not supported yet (:func:`prepare` says so).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup import atomic
from selfsup.data.series import SeriesData
from selfsup.errors import SelfsupError

log = logging.getLogger("selfsup")

MANIFEST = "manifest.json"
FORMAT = "selfsup-shards"
FORMAT_VERSION = 1
#: Default shard size; WebDataset advises 100 MB to 1 GB so that reads are long and files few.
SHARD_BYTES = 256 * 2**20
_TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".gz", ".json")
_SERIES_SUFFIXES = (".csv", ".parquet", ".pq")


# ------------------------------------------------------------------------------ detection ----


def manifest_path(path: str | Path) -> Path | None:
    """The manifest of a prepared folder (``path`` is the folder or the manifest), else None."""
    if str(path) == "digits":
        return None
    p = Path(path).expanduser()
    candidate = p if p.name == MANIFEST else p / MANIFEST
    try:
        return candidate if candidate.is_file() else None
    except OSError:
        return None


def is_prepared(path: str | Path) -> bool:
    return manifest_path(path) is not None


def read_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(folder, manifest), checked: format, version and every shard present at its size."""
    mpath = manifest_path(path)
    if mpath is None:
        raise SelfsupError(f"{path}: not a prepared shards folder (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SelfsupError(f"{mpath}: cannot be read as JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SelfsupError(f"{mpath}: not a selfsup shards manifest (format {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SelfsupError(
            f"{mpath}: shards format version {manifest.get('format_version')}, this selfsup "
            f"reads version {FORMAT_VERSION}; prepare the data again"
        )
    folder = mpath.parent
    for shard in manifest["shards"]:
        file = folder / shard["name"]
        size = file.stat().st_size if file.is_file() else -1
        if size != shard["bytes"]:
            state = "missing" if size < 0 else f"{size} bytes, expected {shard['bytes']}"
            raise SelfsupError(f"{file}: shard {state}; run selfsup prepare again")
    return folder, manifest


# --------------------------------------------------------------------------------- reading ----


class ShardArray:
    """A read-only (N, *shape) array whose rows live in tar shards; each row is one pread.

    Indexing follows numpy on the first axis (an int, a slice, an integer array or list; a
    tuple applies the rest to the rows read), which is all ImageData and SeriesData ask of
    their arrays. Files are opened lazily per process, so DataLoader workers (fork or spawn)
    each get their own descriptors.
    """

    def __init__(
        self, folder: Path, shards: list[dict[str, Any]], offsets: np.ndarray,
        shape: tuple[int, ...], dtype: str,
    ) -> None:
        self.folder, self.names = folder, [s["name"] for s in shards]
        self.starts = np.array([s["first"] for s in shards], dtype=np.int64)
        self.offsets = offsets
        self.sample_shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.sample_shape)) * self.dtype.itemsize
        self._fds: dict[int, int] = {}
        self._pid = -1

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.offsets), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}, "_pid": -1}

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker must not share the parent's offsets
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            try:
                fd = os.open(self.folder / self.names[shard], os.O_RDONLY)
            except OSError as e:
                file = self.folder / self.names[shard]
                raise SelfsupError(f"{file}: cannot open ({e})") from None
            self._fds[shard] = fd
        return fd

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as one new array; reads in file order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(rows) and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"index out of range for {n} samples")
        rows = np.where(rows < 0, rows + n, rows)
        out = np.empty((len(rows), *self.sample_shape), dtype=self.dtype)
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        order = np.lexsort((self.offsets[rows], shard_of))
        flat = out.reshape(len(rows), -1).view(np.uint8)
        for i in order.tolist():
            data = os.pread(self._fd(int(shard_of[i])), self.row_bytes, int(self.offsets[rows[i]]))
            if len(data) != self.row_bytes:
                raise SelfsupError(
                    f"{self.folder / self.names[shard_of[i]]}: truncated at sample {rows[i]}; "
                    "run selfsup prepare again"
                )
            flat[i] = np.frombuffer(data, dtype=np.uint8)
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            return self.read(np.array([key]))[0][rest]
        if isinstance(key, slice):
            return self.read(np.arange(len(self))[key])[(slice(None), *rest)]
        index = np.asarray(key)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return self.read(index)[(slice(None), *rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.read(np.arange(len(self)))  # the whole data: only for small subsets
        return whole if dtype is None else whole.astype(dtype)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def _arrays(folder: Path, manifest: dict[str, Any]) -> tuple[ShardArray, np.ndarray | None]:
    offsets = np.load(folder / "offsets.npy")
    if len(offsets) != manifest["count"]:
        raise SelfsupError(f"{folder}/offsets.npy: {len(offsets)} rows, the manifest says "
                           f"{manifest['count']}; run selfsup prepare again")
    sample = manifest["sample"]
    array = ShardArray(folder, manifest["shards"], offsets, tuple(sample["shape"]),
                       sample["dtype"])
    labels = np.load(folder / "labels.npy") if manifest["labels"] else None
    return array, labels


def load_image_shards(path: str | Path, image_size: int | None = None) -> Any:
    """A prepared image folder as an :class:`ImageData` over shards (nothing loaded but labels)."""
    from selfsup.data.images import ImageData

    folder, manifest = read_manifest(path)
    if manifest["modality"] != "image":
        raise SelfsupError(f"{folder} holds {manifest['modality']} shards, not images")
    shape = manifest["sample"]["shape"]
    if image_size is not None and (shape[0], shape[1]) != (image_size, image_size):
        raise SelfsupError(
            f"{folder}: its images are {shape[0]}x{shape[1]}; shards are not resized when "
            f"read: prepare them with --image-size {image_size}, or leave image_size unset"
        )
    images, labels = _arrays(folder, manifest)
    return ImageData(images, labels, manifest["class_names"], str(folder), [])  # type: ignore[arg-type]


def load_series_shards(path: str | Path) -> Any:
    """A prepared series folder as a :class:`SeriesData` whose values stay in the shards."""
    folder, manifest = read_manifest(path)
    if manifest["modality"] != "series":
        raise SelfsupError(f"{folder} holds {manifest['modality']} shards, not series")
    values, labels = _arrays(folder, manifest)
    lengths = np.load(folder / "lengths.npy")
    return ShardSeriesData(values, lengths, labels, str(folder), manifest["class_names"], [])  # type: ignore[arg-type]


@dataclass
class ShardSeriesData(SeriesData):
    """SeriesData whose values are a :class:`ShardArray`; batches are read, not indexed."""

    def batch_dataset(self, with_labels: bool) -> Any:
        return ShardSeriesBatchDataset(self, with_labels)


class ShardSeriesBatchDataset(Dataset):
    """SeriesBatchDataset's batches ({"series", "lengths", "labels"?}) read from shards."""

    def __init__(self, data: Any, with_labels: bool = False) -> None:
        if with_labels and data.labels is None:
            raise SelfsupError(f"{data.source} has no labels")
        self.data, self.with_labels = data, with_labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = np.asarray(positions, dtype=np.int64)
        lengths = self.data.lengths[rows]
        values = np.asarray(self.data.values[rows])[:, :, : int(lengths.max())]
        batch = {"series": torch.from_numpy(np.ascontiguousarray(values)),
                 "lengths": torch.from_numpy(lengths)}
        if self.with_labels:
            batch["labels"] = torch.from_numpy(self.data.labels[rows])
        return batch

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}


def load_prepared(modality: str, path: str | Path, config: Any = None) -> Any:
    """What ``load_data`` returns for a prepared folder, for the method's ``modality``."""
    _, manifest = read_manifest(path)
    if manifest["modality"] != modality:
        raise SelfsupError(
            f"{path} holds {manifest['modality']} shards but this method reads {modality} data"
        )
    if modality == "image":
        return load_image_shards(path, getattr(config, "image_size", None))
    if modality == "series":
        return load_series_shards(path)
    raise SelfsupError(f"{path}: {modality} shards cannot be read yet")  # pragma: no cover


# ------------------------------------------------------------------------------- preparing ----


def detect_modality(path: str | Path) -> str:
    """image, series or text, from what ``path`` is; SelfsupError when it is none of them."""
    if str(path) == "digits":
        return "image"
    p = Path(path).expanduser()
    if not p.exists():
        raise SelfsupError(f"{path}: no such file or folder")
    if is_prepared(p):
        raise SelfsupError(f"{path} is already a prepared shards folder")
    if p.is_dir():
        from selfsup.data.images import IMAGE_EXTENSIONS

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
    if suffix in _SERIES_SUFFIXES:
        return "series"
    if suffix in _TEXT_SUFFIXES:
        return "text"
    raise SelfsupError(
        f"{path}: unknown input; prepare reads an image folder, an .npz, 'digits', a series "
        ".csv/.parquet/.npz (text corpora are not supported yet)"
    )


def _npz_x_kind(p: Path) -> str:
    with np.load(p, allow_pickle=False) as archive:
        x = archive["X"]
    return "image" if x.dtype == np.uint8 and x.ndim in (3, 4) else "series"


def fingerprint(path: str | Path) -> str:
    """sha256 over the source's file names, sizes and modification times (not its bytes)."""
    h = hashlib.sha256()
    if str(path) == "digits":
        import sklearn

        h.update(f"digits sklearn {sklearn.__version__}".encode())
        return h.hexdigest()
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                st = os.stat(os.path.join(root, name))
                rel = os.path.relpath(os.path.join(root, name), p)
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass
class _Source:
    """What prepare writes: rows of one fixed-shape array, plus per-sample extras."""

    modality: str
    count: int
    get: Callable[[np.ndarray], np.ndarray]  # rows -> (len, *shape) array
    shape: tuple[int, ...]
    dtype: str
    labels: np.ndarray | None
    class_names: list[str] | None
    extra: dict[str, Any]  # manifest fields (statistics, ...)
    lengths: np.ndarray | None = None


def _image_source(path: str, options: dict[str, Any]) -> _Source:
    from selfsup.data.images import image_stats, load_images

    data = load_images(path, image_size=options.get("image_size"),
                       skip_bad=bool(options.get("skip_bad", False)),
                       cache_dir=options.get("cache_dir"), progress=options.get("progress", True))
    mean, std = image_stats(data)  # what ImageData.encoder_inputs computes, recorded once
    return _Source("image", len(data), lambda rows: np.asarray(data.images[rows]),
                   tuple(int(s) for s in data.images.shape[1:]), "uint8", data.labels,
                   data.class_names, {"mean": mean, "std": std,
                                      "skipped": [list(s) for s in data.skipped]})


def _series_source(path: str, options: dict[str, Any]) -> _Source:
    from selfsup.data.series import load_series

    data = load_series(path, options.get("data_options") or {})
    values = np.ascontiguousarray(data.values, dtype=np.float32)
    return _Source("series", len(data), lambda rows: values[rows], tuple(values.shape[1:]),
                   "float32", data.labels, data.class_names, {}, data.lengths.astype(np.int64))


def prepare(
    path: str,
    out: str | Path,
    *,
    repeat: int = 1,
    shard_bytes: int = SHARD_BYTES,
    image_size: int | None = None,
    skip_bad: bool = False,
    cache_dir: str | None = None,
    data_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert ``path`` into WebDataset shards in ``out``; returns the manifest.

    ``repeat`` k writes the data k times over (sample i + j*N is sample i), for scale tests.
    ``out`` is written whole in a hidden staging folder beside it and renamed into place at
    the end, so a killed prepare never leaves a folder that looks complete; an existing
    ``out`` must be an earlier prepare's output (it is replaced) or empty.
    """
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise SelfsupError(f"--repeat must be a positive integer, got {repeat!r}")
    if shard_bytes < 1:
        raise SelfsupError(f"the shard size must be positive, got {shard_bytes}")
    out = Path(out).expanduser()
    _check_out(out)
    modality = detect_modality(path)
    if modality == "text":
        raise SelfsupError(
            f"{path}: text corpora cannot be prepared as shards yet (images and series can); "
            "text already streams from its memory-mapped token cache (selfsup pretrain gpt)"
        )
    if modality == "image":
        if data_options:
            raise SelfsupError("image data takes no --data-option; use --image-size/--skip-bad")
        source = _image_source(path, {"image_size": image_size, "skip_bad": skip_bad,
                                      "cache_dir": cache_dir, "progress": progress})
    else:
        if image_size is not None:
            raise SelfsupError("--image-size is for images; this input is a series file")
        source = _series_source(path, {"data_options": data_options})
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        manifest = _write(source, staging, repeat, shard_bytes)
        manifest.update(
            source=str(path), source_fingerprint=fingerprint(path), repeat=repeat,
            prepare_seconds=round(time.monotonic() - started, 3),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        _write_json(staging / MANIFEST, manifest)  # last: its presence marks a whole folder
        atomic.replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("prepared %d %s samples in %d shard(s) into %s", manifest["count"], modality,
             len(manifest["shards"]), out)
    return manifest


def _check_out(out: Path) -> None:
    """Never overwrite unrelated files: ``out`` is absent, empty, or an earlier prepare's."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SelfsupError(f"--out {out} exists and is a file; choose a folder path")
    if not any(out.iterdir()):
        return
    try:
        read_manifest(out)
    except SelfsupError:
        raise SelfsupError(
            f"--out {out} exists and is not a selfsup prepare output; choose another folder "
            "(prepare replaces only its own earlier output)"
        ) from None


def _remove_stale_staging(out: Path) -> None:
    """Staging folders of a prepare that was killed more than an hour ago (never a live one)."""
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _write_json(path: Path, payload: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                 "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


def _blocks(n: int, size: int = 4096) -> Iterator[np.ndarray]:
    for a in range(0, n, size):
        yield np.arange(a, min(a + size, n))


def _write(source: _Source, folder: Path, repeat: int, shard_bytes: int) -> dict[str, Any]:
    """Write shards, offsets, labels (and lengths) into ``folder``; return the manifest so far."""
    header = _npy_header(source.shape, source.dtype)
    row_bytes = int(np.prod(source.shape)) * np.dtype(source.dtype).itemsize
    total = source.count * repeat
    offsets = np.empty(total, dtype=np.int64)
    shards: list[dict[str, Any]] = []
    tar: tarfile.TarFile | None = None
    written = 0
    index = 0

    def close() -> None:
        nonlocal tar
        if tar is not None:
            tar.close()
            name = shards[-1]["name"]
            with open(folder / name, "rb+") as f:
                os.fsync(f.fileno())
            shards[-1]["bytes"] = (folder / name).stat().st_size
            tar = None

    def member(name: str, payload: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(payload), 0, 0o444
        assert tar is not None
        # addfile writes the header at tar.offset, then the data (it copies ``info``, whose own
        # offsets are therefore never set)
        start = tar.offset + len(info.tobuf(tarfile.USTAR_FORMAT, tar.encoding, tar.errors))
        tar.addfile(info, io.BytesIO(payload))
        return start

    try:
        for _ in range(repeat):
            for rows in _blocks(source.count):
                block = np.ascontiguousarray(source.get(rows), dtype=source.dtype)
                for j, row in enumerate(rows.tolist()):
                    if tar is None or written >= shard_bytes:
                        close()
                        name = f"shard-{len(shards):06d}.tar"
                        shards.append({"name": name, "first": index, "count": 0, "bytes": 0})
                        # closed by close(), or with the staging folder on an error
                        tar = tarfile.open(  # noqa: SIM115
                            folder / name, "w", format=tarfile.USTAR_FORMAT
                        )
                        written = 0
                    key = f"{index:09d}"
                    start = member(f"{key}.npy", header + block[j].tobytes())
                    offsets[index] = start + len(header)
                    if source.labels is not None:
                        member(f"{key}.cls", str(int(source.labels[row])).encode())
                    shards[-1]["count"] += 1
                    written += len(header) + row_bytes + 1024
                    index += 1
        close()
    except OSError as e:
        raise SelfsupError(f"could not write shards into {folder.parent}: {e}") from None
    np.save(folder / "offsets.npy", offsets)
    if source.labels is not None:
        np.save(folder / "labels.npy", np.tile(source.labels.astype(np.int64), repeat))
    if source.lengths is not None:
        np.save(folder / "lengths.npy", np.tile(source.lengths, repeat))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "layout": "webdataset",
        "modality": source.modality,
        "count": total,
        "sample": {"key": "npy", "shape": list(source.shape), "dtype": source.dtype},
        "labels": source.labels is not None,
        "class_names": source.class_names,
        "num_classes": len(source.class_names) if source.class_names else None,
        "shards": shards,
        **source.extra,
    }
