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

This module is the modality-free part: the manifest, the tar layout, reading rows by offset
(:class:`ShardArray`, :class:`ShardFiles`) and writing a :class:`Source` of samples
(:func:`write_prepared`). Each modality's reader module reads and writes its own shards on top
of it (``data/images.py`` and ``data/series.py``: ``load_*_shards``; ``data/text.py``:
``TextShards``; each: ``prepare_source``), and ``data/prepare.py``
(:func:`~selfsup.data.prepare.prepare`) picks the modality; nothing here imports a reader.

A reader sees a prepared folder (or its ``manifest.json``) through :func:`is_prepared`: the
image reader returns an :class:`ImageData` whose ``images`` is a :class:`ShardArray` (indexed
like the uint8 memmap it replaces), the series reader a :class:`SeriesData` over shards, and
the text readers (``data/text.py`` :func:`~selfsup.data.text.iter_documents`, so gpt, mlm and
span alike) stream the documents in order through :class:`~selfsup.data.text.TextShards`,
one document in memory at a time. A text "document" is what the text reader yields for the
source: a whole .txt/.md file (alone or in a folder), one jsonl line's ``text_field``, or one
parquet row's ``text_column``.
"""

from __future__ import annotations

import array
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
from typing import Any, BinaryIO

import numpy as np

from selfsup import atomic
from selfsup.errors import SelfsupError

log = logging.getLogger("selfsup")

MANIFEST = "manifest.json"
FORMAT = "selfsup-shards"
FORMAT_VERSION = 1
#: Default shard size; WebDataset advises 100 MB to 1 GB so that reads are long and files few.
SHARD_BYTES = 256 * 2**20


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


class ShardFiles:
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


class ShardArray(ShardFiles):
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


def read_arrays(folder: Path, manifest: dict[str, Any]) -> tuple[ShardArray, np.ndarray | None]:
    """The fixed-shape samples of a checked prepared folder as a :class:`ShardArray`, and its
    labels (None when unlabelled)."""
    offsets = np.load(folder / "offsets.npy")
    if len(offsets) != manifest["count"]:
        raise SelfsupError(f"{folder}/offsets.npy: {len(offsets)} rows, the manifest says "
                           f"{manifest['count']}; run selfsup prepare again")
    sample = manifest["sample"]
    array = ShardArray(folder, manifest["shards"], offsets, tuple(sample["shape"]),
                       sample["dtype"])
    labels = np.load(folder / "labels.npy") if manifest["labels"] else None
    return array, labels



# --------------------------------------------------------------------------------- writing ----


def fingerprint(path: str | Path) -> str:
    """sha256 over the source's file names, sizes and modification times (not its bytes)."""
    h = hashlib.sha256()
    if str(path) == "digits":
        import sklearn

        h.update(f"digits sklearn {sklearn.__version__}".encode())
        return h.hexdigest()
    if "," in str(path) and not Path(path).exists():  # pooled series files: each of them
        for part in str(path).split(","):
            h.update(fingerprint(part.strip()).encode())
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
class Sample:
    """One sample as prepare writes it: its payload member, where the data starts, its class."""

    ext: str  # the member's extension: "npy" (an array) or "txt" (a UTF-8 document)
    payload: bytes | BinaryIO
    size: int  # bytes of the payload
    skip: int = 0  # bytes ahead of the data inside the payload (the .npy header)
    label: int | None = None


@dataclass
class Source:
    """What prepare writes: a stream of samples (read again for each repeat), plus extras.

    Images, series and text differ only here; the tar loop, offsets, manifest and the atomic
    replace in :func:`write_prepared` are the same for all of them.
    """

    modality: str
    samples: Callable[[Path], Iterator[Sample]]  # scratch folder -> every sample, in order
    sample: dict[str, Any]  # the manifest's description of one sample
    labels: np.ndarray | None
    class_names: list[str] | None
    extra: dict[str, Any]  # manifest fields (statistics, ...), read after the samples
    lengths: np.ndarray | None = None  # lengths.npy (series)
    byte_lengths: bool = False  # lengths.npy holds each sample's data bytes instead (text)


def array_samples(
    get: Callable[[np.ndarray], np.ndarray], count: int, shape: tuple[int, ...], dtype: str,
    labels: np.ndarray | None,
) -> Callable[[Path], Iterator[Sample]]:
    """Rows of one fixed-shape array as ``.npy`` samples, read 4096 rows at a time."""
    header = _npy_header(shape, dtype)

    def samples(_scratch: Path) -> Iterator[Sample]:
        for rows in _blocks(count):
            block = np.ascontiguousarray(get(rows), dtype=dtype)
            for j, row in enumerate(rows.tolist()):
                payload = header + block[j].tobytes()
                label = None if labels is None else int(labels[row])
                yield Sample("npy", payload, len(payload), len(header), label)

    return samples


def write_prepared(
    source: Source, path: str | Path, out: Path, repeat: int, shard_bytes: int
) -> dict[str, Any]:
    """Write ``source`` (read from ``path``) as shards into ``out``; returns the manifest.

    ``out`` is written whole in a hidden staging folder beside it and renamed into place at
    the end, so a killed prepare never leaves a folder that looks complete; :func:`check_out`
    it first.
    """
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
    log.info("prepared %d %s samples in %d shard(s) into %s", manifest["count"], source.modality,
             len(manifest["shards"]), out)
    return manifest


def check_out(out: Path) -> None:
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


def _write(source: Source, folder: Path, repeat: int, shard_bytes: int) -> dict[str, Any]:
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
