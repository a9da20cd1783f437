"""`selfsup prepare`: data far larger than RAM as WebDataset shards, read back with flat memory.

Layout of a prepared folder (format version 1)::

    shards/
      manifest.json          what is inside: modality, count, sample shape and dtype, classes,
                             the source's fingerprint, image statistics (text: the reading
                             options and total characters and bytes), the shard list
      shard-000000.tar ...   WebDataset shards: sample i is ``{i:09d}.npy`` (the array: uint8
                             H x W x C for images, float32 C x L for series) and, when labelled,
                             ``{i:09d}.cls`` (the class index as text); for a text corpus it is
                             ``{i:09d}.txt``, document i of the corpus as UTF-8
      offsets.npy            int64 (N,): where sample i's array (or text) bytes start in its shard
      labels.npy             int64 (N,), when labelled
      lengths.npy            int64 (N,): series, each series' length; text, each document's bytes

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
like the uint8 memmap it replaces), the series reader a :class:`SeriesData` over shards, and
the text readers (``data/text.py`` :func:`~selfsup.data.text.iter_documents`, so gpt, mlm and
span alike) stream the documents in order through :class:`TextShards`, one document in memory
at a time. A text "document" is what the text reader yields for the source: a whole .txt/.md
file (alone or in a folder), one jsonl line's ``text_field``, or one parquet row's
``text_column``.
"""

from __future__ import annotations

import array
import codecs
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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
_TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".ndjson", ".gz", ".json")
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


class _ShardFiles:
    """The shard files of a prepared folder, opened lazily per process (DataLoader workers, fork
    or spawn, each get their own descriptors), and which shard holds which sample."""

    def __init__(self, folder: Path, shards: list[dict[str, Any]], offsets: np.ndarray) -> None:
        self.folder, self.names = folder, [s["name"] for s in shards]
        self.starts = np.array([s["first"] for s in shards], dtype=np.int64)
        self.offsets = offsets
        self._fds: dict[int, int] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}, "_pid": -1}

    def shard_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, rows, side="right") - 1

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

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


class ShardArray(_ShardFiles):
    """A read-only (N, *shape) array whose rows live in tar shards; each row is one pread.

    Indexing follows numpy on the first axis (an int, a slice, an integer array or list; a
    tuple applies the rest to the rows read), which is all ImageData and SeriesData ask of
    their arrays.
    """

    def __init__(
        self, folder: Path, shards: list[dict[str, Any]], offsets: np.ndarray,
        shape: tuple[int, ...], dtype: str,
    ) -> None:
        super().__init__(folder, shards, offsets)
        self.sample_shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.sample_shape)) * self.dtype.itemsize

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.offsets), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as one new array; reads in file order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(rows) and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"index out of range for {n} samples")
        rows = np.where(rows < 0, rows + n, rows)
        out = np.empty((len(rows), *self.sample_shape), dtype=self.dtype)
        shard_of = self.shard_of(rows)
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


class TextShards(_ShardFiles):
    """A prepared text corpus: document i is ``lengths[i]`` UTF-8 bytes at ``offsets[i]``.

    :meth:`document` reads one document with one pread; :meth:`pieces` streams them all in
    order the way ``data/text.py`` yields documents, holding at most about ``_READ_BYTES`` of
    one document at a time (offsets and lengths stay memory-mapped), whatever the corpus size.
    """

    def __init__(self, path: str | Path) -> None:
        folder, manifest = read_manifest(path)
        if manifest["modality"] != "text":
            raise SelfsupError(
                f"{folder} holds {manifest['modality']} shards, not text; text methods read a "
                "text corpus (prepare one with: selfsup prepare CORPUS --out FOLDER)"
            )
        offsets = np.load(folder / "offsets.npy", mmap_mode="r")
        self.lengths = np.load(folder / "lengths.npy", mmap_mode="r")
        if not len(offsets) == len(self.lengths) == manifest["count"]:
            raise SelfsupError(f"{folder}: offsets.npy / lengths.npy do not match the manifest's "
                               f"{manifest['count']} documents; run selfsup prepare again")
        super().__init__(folder, manifest["shards"], offsets)
        self.manifest = manifest

    def document(self, index: int) -> str:
        """Document ``index`` (negative counts from the end), whole."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"document {index} out of range for {n} documents")
        index %= n
        shard = int(self.shard_of(np.array([index]))[0])
        size = int(self.lengths[index])
        data = os.pread(self._fd(shard), size, int(self.offsets[index]))
        if len(data) != size:
            raise self._truncated(self.folder / self.names[shard], index)
        return self._decode(data, index)

    def _decode(self, data: bytes, index: int, decoder: Any = None, final: bool = True) -> str:
        """``data`` as text (through ``decoder`` when a document comes in parts)."""
        try:
            return data.decode("utf-8") if decoder is None else decoder.decode(data, final=final)
        except UnicodeDecodeError:
            raise SelfsupError(f"{self.folder}: document {index} is not valid UTF-8 (a damaged "
                               "shard); run selfsup prepare again") from None

    @staticmethod
    def _truncated(where: Any, index: int) -> SelfsupError:
        return SelfsupError(f"{where}: truncated at document {index}; run selfsup prepare again")

    def pieces(self) -> Iterator[Any]:
        """Every document in order as :class:`selfsup.data.text.Piece` s, cut as the text
        readers cut them; each shard is read front to back through one buffered file."""
        from selfsup.data.text import _READ_BYTES, pieces_of

        for shard, name in enumerate(self.names):
            first = int(self.starts[shard])
            last = int(self.starts[shard + 1]) if shard + 1 < len(self.names) else len(self)
            try:
                handle = open(self.folder / name, "rb", buffering=1 << 20)  # noqa: SIM115
            except OSError as e:
                raise SelfsupError(f"{self.folder / name}: cannot open ({e})") from None
            with handle:
                for index in range(first, last):
                    handle.seek(int(self.offsets[index]))
                    yield from pieces_of(self._parts(handle, int(self.lengths[index]), index,
                                                     _READ_BYTES))

    def _parts(self, handle: Any, size: int, index: int, chunk: int) -> Iterator[str]:
        """One document's text, decoded ``chunk`` bytes at a time."""
        if size <= chunk:  # nearly every document: one read, one decode
            data = handle.read(size)
            if len(data) != size:
                raise self._truncated(handle.name, index)
            yield self._decode(data, index)
            return
        decoder = codecs.getincrementaldecoder("utf-8")()
        left = size
        while left:
            data = handle.read(min(chunk, left))
            if not data:
                raise self._truncated(handle.name, index)
            left -= len(data)
            yield self._decode(data, index, decoder, final=not left)


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
    if modality == "text":  # the text reader streams the documents (TextShards via text.py)
        from selfsup.data.tokens import load_text

        return load_text(str(path), dict(getattr(config, "data_options", None) or {}), config)
    raise SelfsupError(f"{path}: {modality} shards cannot be read yet")  # pragma: no cover


# ------------------------------------------------------------------------------- preparing ----


def detect_modality(path: str | Path, data_options: dict[str, Any] | None = None) -> str:
    """image, series or text, from what ``path`` is; SelfsupError when it is none of them.

    A parquet file is text when ``data_options`` name a ``text_column`` or when it has a
    string column ``text``; otherwise it holds series.
    """
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
    import pyarrow as pa
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
class _Sample:
    """One sample as prepare writes it: its payload member, where the data starts, its class."""

    ext: str  # the member's extension: "npy" (an array) or "txt" (a UTF-8 document)
    payload: bytes | BinaryIO
    size: int  # bytes of the payload
    skip: int = 0  # bytes ahead of the data inside the payload (the .npy header)
    label: int | None = None


@dataclass
class _Source:
    """What prepare writes: a stream of samples (read again for each repeat), plus extras.

    Images, series and text differ only here; the tar loop, offsets, manifest and the atomic
    replace in :func:`prepare` / :func:`_write` are the same for all of them.
    """

    modality: str
    samples: Callable[[Path], Iterator[_Sample]]  # scratch folder -> every sample, in order
    sample: dict[str, Any]  # the manifest's description of one sample
    labels: np.ndarray | None
    class_names: list[str] | None
    extra: dict[str, Any]  # manifest fields (statistics, ...), read after the samples
    lengths: np.ndarray | None = None  # lengths.npy (series)
    byte_lengths: bool = False  # lengths.npy holds each sample's data bytes instead (text)


def _array_samples(
    get: Callable[[np.ndarray], np.ndarray], count: int, shape: tuple[int, ...], dtype: str,
    labels: np.ndarray | None,
) -> Callable[[Path], Iterator[_Sample]]:
    """Rows of one fixed-shape array as ``.npy`` samples, read 4096 rows at a time."""
    header = _npy_header(shape, dtype)

    def samples(_scratch: Path) -> Iterator[_Sample]:
        for rows in _blocks(count):
            block = np.ascontiguousarray(get(rows), dtype=dtype)
            for j, row in enumerate(rows.tolist()):
                payload = header + block[j].tobytes()
                label = None if labels is None else int(labels[row])
                yield _Sample("npy", payload, len(payload), len(header), label)

    return samples


def _image_source(path: str, options: dict[str, Any]) -> _Source:
    from selfsup.data.images import image_stats, load_images

    data = load_images(path, image_size=options.get("image_size"),
                       skip_bad=bool(options.get("skip_bad", False)),
                       cache_dir=options.get("cache_dir"), progress=options.get("progress", True))
    mean, std = image_stats(data)  # what ImageData.encoder_inputs computes, recorded once
    shape = tuple(int(s) for s in data.images.shape[1:])
    samples = _array_samples(lambda rows: np.asarray(data.images[rows]), len(data), shape,
                             "uint8", data.labels)
    return _Source("image", samples, {"key": "npy", "shape": list(shape), "dtype": "uint8"},
                   data.labels, data.class_names,
                   {"mean": mean, "std": std, "skipped": [list(s) for s in data.skipped]})


def _series_source(path: str, options: dict[str, Any]) -> _Source:
    from selfsup.data.series import load_series

    data = load_series(path, options.get("data_options") or {})
    values = np.ascontiguousarray(data.values, dtype=np.float32)
    shape = tuple(int(s) for s in values.shape[1:])
    samples = _array_samples(lambda rows: values[rows], len(data), shape, "float32",
                             data.labels)
    return _Source("series", samples, {"key": "npy", "shape": list(shape), "dtype": "float32"},
                   data.labels, data.class_names, {}, data.lengths.astype(np.int64))


#: A document larger than this goes through an unnamed scratch file, not memory, while written.
_SPILL_BYTES = 64 * 2**20


def _text_source(path: str, options: dict[str, Any]) -> _Source:
    from selfsup.data.text import READING_OPTIONS as TEXT_OPTIONS
    from selfsup.data.text import TextSource

    unknown = sorted(set(options) - set(TEXT_OPTIONS))
    if unknown:
        raise SelfsupError(
            f"unknown --data-option {', '.join(unknown)} for a text corpus; it takes "
            f"{', '.join(TEXT_OPTIONS)}"
        )
    text = TextSource(str(path), **{key: str(value) for key, value in options.items()})
    extra: dict[str, Any] = {
        "text_options": {key: getattr(text, key) for key in TEXT_OPTIONS},
        "characters": 0,  # totals over every sample (repeats included), counted while written
        "bytes": 0,
    }
    # "shape" [] and "dtype": a document is one variable-length string, stored as UTF-8
    return _Source("text", lambda scratch: _text_samples(text, extra, scratch),
                   {"key": "txt", "shape": [], "dtype": "utf-8"}, None, None, extra,
                   byte_lengths=True)


def _text_samples(text: Any, totals: dict[str, Any], scratch: Path) -> Iterator[_Sample]:
    """Each document of the corpus, as data/text.py reads it, as one UTF-8 ``.txt`` sample.

    A document arrives in pieces (a large file streams); they are joined in memory up to
    ``_SPILL_BYTES`` and beyond that in an unnamed file in ``scratch``, since a tar member's
    size is written before its data.
    """
    from selfsup.data.text import iter_documents

    parts: list[bytes] = []
    size = characters = documents = 0
    spill: BinaryIO | None = None
    try:
        for piece in iter_documents(text):
            data = _utf8(piece.text, text, documents)
            characters += len(piece.text)
            if spill is None and size + len(data) > _SPILL_BYTES:
                spill = tempfile.TemporaryFile(dir=scratch)  # noqa: SIM115  (closed below)
                spill.writelines(parts)
                parts = []
            if spill is None:
                parts.append(data)
            else:
                spill.write(data)
            size += len(data)
            if not piece.last:
                continue
            if spill is None:
                yield _Sample("txt", b"".join(parts), size)
            else:
                spill.seek(0)
                yield _Sample("txt", spill, size)
                spill.close()
                spill = None
            totals["bytes"] += size
            parts, size, documents = [], 0, documents + 1
    finally:
        if spill is not None:
            spill.close()
    if not characters:
        raise SelfsupError(f"{text.path}: the corpus is empty (no text); nothing to prepare")
    totals["characters"] += characters


def _utf8(value: str, text: Any, document: int) -> bytes:
    """``value`` as UTF-8; a lone surrogate (from a JSON ``\\ud800`` escape) cannot be stored."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as error:
        if text.encoding_errors == "replace":
            return value.encode("utf-8", errors="replace")
        raise SelfsupError(
            f"{text.path}: document {document} holds {value[error.start]!r}, a lone surrogate "
            "that UTF-8 cannot store; fix the corpus or pass --data-option "
            "encoding_errors=replace"
        ) from None


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
    _check_out(out)
    modality = detect_modality(path, data_options)
    if modality == "image":
        if data_options:
            raise SelfsupError("image data takes no --data-option; use --image-size/--skip-bad")
        source = _image_source(path, {"image_size": image_size, "skip_bad": skip_bad,
                                      "cache_dir": cache_dir, "progress": progress})
    elif modality == "text":
        if image_size is not None:
            raise SelfsupError("--image-size is for images; this input is a text corpus")
        source = _text_source(path, data_options or {})
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
            prepare_id=uuid.uuid4().hex,  # unique per prepare, even two within one second
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
    offsets = array.array("q")  # grows with the samples: a text corpus's count is not known
    sizes = array.array("q")
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

    def member(name: str, payload: bytes | BinaryIO, size: int) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o444
        assert tar is not None
        # addfile writes the header at tar.offset, then the data (it copies ``info``, whose own
        # offsets are therefore never set); a USTAR header is one block (no extended headers:
        # a name that does not fit is an error), checked after the write
        start = tar.offset + tarfile.BLOCKSIZE
        tar.addfile(info, io.BytesIO(payload) if isinstance(payload, bytes) else payload)
        if tar.offset != start + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE:
            raise SelfsupError(f"{name}: unexpected tar header size")  # pragma: no cover
        return start

    try:
        for _ in range(repeat):
            for sample in source.samples(folder):
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
                start = member(f"{key}.{sample.ext}", sample.payload, sample.size)
                offsets.append(start + sample.skip)
                if source.byte_lengths:
                    sizes.append(sample.size - sample.skip)
                if sample.label is not None:
                    member(f"{key}.cls", str(sample.label).encode(), len(str(sample.label)))
                shards[-1]["count"] += 1
                written += sample.size + 1024  # + the tar headers (512 bytes a member)
                index += 1
        close()
    except OSError as e:
        raise SelfsupError(f"could not write shards into {folder.parent}: {e}") from None
    np.save(folder / "offsets.npy", np.frombuffer(offsets, dtype=np.int64))
    if source.labels is not None:
        np.save(folder / "labels.npy", np.tile(source.labels.astype(np.int64), repeat))
    if source.lengths is not None:
        np.save(folder / "lengths.npy", np.tile(source.lengths, repeat))
    elif source.byte_lengths:
        np.save(folder / "lengths.npy", np.frombuffer(sizes, dtype=np.int64))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "layout": "webdataset",
        "modality": source.modality,
        "count": index,
        "sample": source.sample,
        "labels": source.labels is not None,
        "class_names": source.class_names,
        "num_classes": len(source.class_names) if source.class_names else None,
        "shards": shards,
        **source.extra,
    }
