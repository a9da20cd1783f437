"""Image readers: a path becomes one uint8 (N, H, W, C) array, plus labels when the data has them.

Three sources, picked by `load_images`:

* ``"digits"``: scikit-learn's 8x8 digits (ships with the library, so tests and demos need no data);
* a ``.npz`` file holding ready-made uint8 arrays;
* a folder of image files, decoded once into a memory-mapped cache so a second run starts at once.

Every problem with the user's input raises `SelfsupError` with a message naming the file (or npz
key, or index) and what was wrong; no PIL or numpy exception escapes for bad input.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from selfsup.augment import to_float_images
from selfsup.data import shards
from selfsup.data.base import PREPARED_READERS, READERS, DataInfo, class_count
from selfsup.data.datasets import ImageBatchDataset
from selfsup.errors import SelfsupError

# A truncated file must be an error, never a silently grey-padded image. PIL's default is already
# False; set it explicitly because any other library in the process could have flipped it.
ImageFile.LOAD_TRUNCATED_IMAGES = False

log = logging.getLogger("selfsup")

#: Bump when decoding changes, so caches written by an older reader are not reused.
READER_VERSION = 1
#: File extensions (lower case) the folder reader treats as images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
#: Keys searched, in order, for the images and the labels of an .npz file.
NPZ_IMAGE_KEYS = ("images", "x", "X")
NPZ_LABEL_KEYS = ("labels", "y")
#: Labels are class indices below this; larger values are ids to renumber, not classes.
MAX_CLASSES = 1_000_000
#: Background that transparent pixels are composited onto before alpha is dropped.
ALPHA_BACKGROUND = (255, 255, 255)

_CHUNK = 256  # files per thread-pool task: large enough to amortise scheduling, small for progress
_THREADS_MIN_BYTES = 16 * 1024  # mean file size above which decoding uses a thread pool
_STALE_TMP_SECONDS = 24 * 3600  # temp cache dirs older than this are leftovers of killed runs


@dataclass
class ImageData:
    """Decoded images with their labels; what every image method and probe consumes."""

    images: np.ndarray  # uint8 (N, H, W, C), possibly a read-only np.memmap
    labels: np.ndarray | None  # int64 (N,), or None when the data has no labels
    class_names: list[str] | None  # index -> name, when labels exist
    source: str  # the path (or "digits") it came from
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) under skip_bad

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or None for unlabelled data."""
        return class_count(self.labels, self.class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    # -- the TrainData protocol (selfsup/data/base.py) --

    modality = "image"

    def data_info(self) -> DataInfo:
        return DataInfo(
            channels=self.images.shape[-1],
            image_size=self.images.shape[1],
            num_classes=self.num_classes,
            num_images=len(self),
        )

    def encoder_inputs(self) -> dict[str, Any]:
        mean, std = image_stats(self)
        return {"in_channels": int(self.images.shape[-1]), "mean": mean, "std": std}

    def encoder_spec(self) -> dict[str, Any]:
        return {"image_size": int(self.images.shape[1]), "channels": int(self.images.shape[-1])}

    def batch_dataset(self, with_labels: bool) -> Any:
        return ImageBatchDataset(self, with_labels=with_labels)

    def inputs(self, indices: np.ndarray) -> Any:
        """Float (B, C, H, W) images in [0, 1] of those rows (read in file order)."""
        rows = np.asarray(indices)
        order = np.argsort(rows)
        chunk = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        chunk[order] = self.images[rows[order]]
        return to_float_images(torch.from_numpy(chunk))

    def subset(self, indices: np.ndarray, source: str) -> ImageData:
        """An in-memory ImageData of the given rows (sorted, for sequential memmap reads)."""
        rows = np.sort(np.asarray(indices))
        labels = self.labels[rows] if self.labels is not None else None
        return replace(self, images=np.asarray(self.images[rows]), labels=labels, source=source)


def load_images(
    path: str | Path,
    *,
    skip_bad: bool = False,
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> ImageData:
    """Dispatch: "digits" -> scikit-learn digits; *.npz -> npz reader; a directory -> folder reader.

    `image_size` S, when given, resizes every image's shorter side to S and centre-crops S x S.
    `skip_bad` (folders only) skips unreadable files instead of failing; they are listed in
    `ImageData.skipped`. `cache_dir` and `progress` only matter for folders.
    """
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
            raise SelfsupError(f"image_size must be a positive integer, got {image_size!r}")
        if image_size < 1:
            raise SelfsupError(f"image_size must be a positive integer, got {image_size}")
        image_size = int(image_size)
    if str(path) == "digits":
        return load_digits(image_size=image_size)
    p = Path(path).expanduser()
    if shards.is_prepared(p):  # `selfsup prepare` output: read from its shards
        return load_image_shards(p, image_size)
    if p.is_dir():
        return load_folder(
            p, skip_bad=skip_bad, image_size=image_size, cache_dir=cache_dir, progress=progress
        )
    if p.suffix.lower() == ".npz":
        return load_npz(p, image_size=image_size)
    if not p.exists():
        raise SelfsupError(f"{path}: no such file or folder")
    raise SelfsupError(
        f"{path}: not a folder of images or an .npz file (expected a folder, a file ending in"
        f" .npz, or the name 'digits')"
    )


# ----------------------------------------------------------------------------------- shards ----


def load_image_shards(path: str | Path, image_size: int | None = None) -> ImageData:
    """A prepared image folder as an :class:`ImageData` over shards (nothing loaded but labels)."""
    folder, manifest = shards.read_manifest(path)
    if manifest["modality"] != "image":
        raise SelfsupError(f"{folder} holds {manifest['modality']} shards, not images")
    shape = manifest["sample"]["shape"]
    if image_size is not None and (shape[0], shape[1]) != (image_size, image_size):
        raise SelfsupError(
            f"{folder}: its images are {shape[0]}x{shape[1]}; shards are not resized when "
            f"read: prepare them with --image-size {image_size}, or leave image_size unset"
        )
    images, labels = shards.read_arrays(folder, manifest)
    return ImageData(images, labels, manifest["class_names"], str(folder), [])  # type: ignore[arg-type]


def prepare_source(path: str, options: dict[str, Any]) -> shards.Source:
    """What `selfsup prepare` writes for images: ``options`` image_size, skip_bad, cache_dir,
    progress."""
    data = load_images(path, image_size=options.get("image_size"),
                       skip_bad=bool(options.get("skip_bad", False)),
                       cache_dir=options.get("cache_dir"), progress=options.get("progress", True))
    mean, std = image_stats(data)  # what ImageData.encoder_inputs computes, recorded once
    shape = tuple(int(s) for s in data.images.shape[1:])
    samples = shards.array_samples(lambda rows: np.asarray(data.images[rows]), len(data),
                                   shape, "uint8", data.labels)
    return shards.Source("image", samples,
                         {"key": "npy", "shape": list(shape), "dtype": "uint8"},
                         data.labels, data.class_names,
                         {"mean": mean, "std": std, "skipped": [list(s) for s in data.skipped]})

# ----------------------------------------------------------------------------------- digits ----


def load_digits(*, image_size: int | None = None) -> ImageData:
    """scikit-learn's 1797 8x8 digits as (N, 8, 8, 1) uint8: the dataset every test can rely on."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    # Values are 0..16; scale to the full 0..255 range so uint8 maths matches real images.
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    if image_size is not None:
        images = resize_array(images, image_size)
    return ImageData(
        images=images,
        labels=d.target.astype(np.int64),
        class_names=[str(i) for i in range(10)],
        source="digits",
        skipped=[],
    )


# -------------------------------------------------------------------------------------- npz ----


def load_npz(path: str | Path, *, image_size: int | None = None) -> ImageData:
    """Read uint8 images (N,H,W[,C]) and optional integer labels from an .npz archive.

    Only uint8 is accepted: guessing whether floats mean [0, 1] or [0, 255] silently goes wrong.
    An optional ``class_names`` string array names the label indices.
    """
    p = Path(path)
    if not p.exists():
        raise SelfsupError(f"{p}: no such file")
    if not p.is_file():
        raise SelfsupError(f"{p}: not a file")
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise SelfsupError(f"{p}: cannot be read ({_reason(e)})") from None
    if magic == b"\x93NUMPY":
        raise SelfsupError(f"{p}: is a single .npy array, not an .npz archive (use np.savez)")
    if not zipfile.is_zipfile(p):
        raise SelfsupError(f"{p}: not an .npz archive (an .npz file is a zip of .npy arrays)")
    try:
        archive = np.load(p, allow_pickle=False)
    except Exception as e:  # any failure here means "not an npz we can read"
        raise SelfsupError(f"{p}: not a readable .npz archive ({_reason(e)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise SelfsupError(f"{p}: is a single .npy array, not an .npz archive (use np.savez)")
    with archive:
        keys = list(archive.files)
        image_key = next((k for k in NPZ_IMAGE_KEYS if k in keys), None)
        if image_key is None:
            raise SelfsupError(
                f"{p}: no image array; expected a key named one of {', '.join(NPZ_IMAGE_KEYS)},"
                f" found keys: {', '.join(keys) if keys else '(none)'}"
            )
        images = _npz_array(archive, p, image_key)
        label_key = next((k for k in NPZ_LABEL_KEYS if k in keys), None)
        labels = _npz_array(archive, p, label_key) if label_key else None
        names = _npz_array(archive, p, "class_names") if "class_names" in keys else None

    where = f"{p} key '{image_key}'"
    if images.dtype != np.uint8:
        raise SelfsupError(
            f"{where}: images must be uint8 (0..255), got {images.dtype}; convert first,"
            f" e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1]"
        )
    if images.ndim == 3:
        images = images[..., None]
    elif images.ndim != 4:
        raise SelfsupError(
            f"{where}: images must have shape (N, H, W) or (N, H, W, C), got {images.shape}"
        )
    n, h, w, c = images.shape
    if c not in (1, 3):
        hint = ""
        if images.shape[1] in (1, 3):
            hint = "; it looks channels-first, transpose to (N, H, W, C)"
        raise SelfsupError(
            f"{where}: the last axis must be 1 or 3 channels, got shape {images.shape}{hint}"
        )
    if n == 0:
        raise SelfsupError(f"{where}: contains zero images")
    if h == 0 or w == 0:
        raise SelfsupError(f"{where}: images have zero height or width, shape {images.shape}")

    class_names: list[str] | None = None
    if labels is not None:
        lwhere = f"{p} key '{label_key}'"
        if labels.ndim != 1:
            raise SelfsupError(f"{lwhere}: labels must be 1-D, got shape {labels.shape}")
        if labels.shape[0] != n:
            raise SelfsupError(
                f"{lwhere}: {labels.shape[0]} labels but {n} images in key '{image_key}'"
            )
        if labels.dtype.kind not in "iu":
            raise SelfsupError(f"{lwhere}: labels must be integers, got dtype {labels.dtype}")
        if labels.dtype.kind == "i" and (labels < 0).any():
            bad = int(np.flatnonzero(labels < 0)[0])
            raise SelfsupError(
                f"{lwhere}: labels must be >= 0, found {int(labels[bad])} at index {bad}"
            )
        top = int(labels.max())  # before the cast: uint64 above 2**63 would turn negative
        if top >= MAX_CLASSES:  # also keeps the default names list (one per class) small
            raise SelfsupError(
                f"{lwhere}: labels must be class indices 0..K-1 with K at most {MAX_CLASSES},"
                f" found {top} at index {int(np.argmax(labels))}; renumber them first"
            )
        labels = labels.astype(np.int64)
        if names is not None:
            if names.ndim != 1 or names.dtype.kind not in "US":
                raise SelfsupError(f"{p} key 'class_names': must be a 1-D array of strings")
            class_names = [
                s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)
                for s in names.tolist()
            ]
            if top >= len(class_names):
                raise SelfsupError(
                    f"{lwhere}: label {top} has no name; key 'class_names' lists only"
                    f" {len(class_names)} classes"
                )
        else:
            class_names = [str(i) for i in range(top + 1)]

    images = np.ascontiguousarray(images)
    if image_size is not None:
        images = resize_array(images, image_size)
    return ImageData(images, labels, class_names, str(p), [])


def _npz_array(archive: np.lib.npyio.NpzFile, p: Path, key: str) -> np.ndarray:
    """One member of an npz, with a broken member reported by name instead of a zip traceback."""
    try:
        return np.asarray(archive[key])
    except Exception as e:  # corrupt member, pickled objects, bad header ...
        raise SelfsupError(f"{p} key '{key}': cannot be read ({_reason(e)})") from None


# ----------------------------------------------------------------------------- resizing ----


def resize_pil(im: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bicubic, antialiased) and centre-crop size x size."""
    w, h = im.size
    if min(w, h) != size:
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
        w, h = nw, nh
    if (w, h) != (size, size):
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return im


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """`resize_pil` over a uint8 (N, H, W, C) array with C in {1, 3}."""
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i in range(n):
        src = images[i, :, :, 0] if c == 1 else images[i]
        out[i] = np.asarray(resize_pil(Image.fromarray(src), size)).reshape(size, size, c)
    return out


# ------------------------------------------------------------------------------- folders ----


def default_cache_dir() -> Path:
    """$SELFSUP_CACHE if set, else ~/.cache/selfsup/images."""
    env = os.environ.get("SELFSUP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "selfsup" / "images"


def list_image_files(root: str | Path) -> list[tuple[str, int, int]]:
    """(relative POSIX path, size, mtime_ns) of every image file under `root`, sorted by path.

    Hidden files and folders (leading dot) are skipped; extensions match in any case. Symlinked
    folders are followed (a common way to assemble a dataset), each real folder once. Plain
    strings and os.scandir keep this fast for 50,000 files.

    An image name that is not a regular file (a dangling symlink, a FIFO, a device such as a
    link to /dev/zero) is listed too, with size -1 when its target is missing, so that the
    decoder reports it as a bad file (or skips and counts it under --skip-bad) instead of it
    vanishing silently; it is never opened.
    """
    found: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    stack = [("", os.fspath(root))]
    while stack:
        rel_dir, dir_path = stack.pop()
        real = os.path.realpath(dir_path)
        if real in seen:  # a symlink loop or a folder linked twice
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(dir_path))
        except OSError as e:
            raise SelfsupError(f"{dir_path}: cannot list this folder ({_reason(e)})") from None
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            try:
                if entry.is_dir():
                    stack.append((rel, entry.path))
                elif name.lower().endswith(IMAGE_EXTENSIONS):
                    try:
                        st = entry.stat()  # follows a symlink to its target
                    except FileNotFoundError:  # a dangling symlink: the decoder names it
                        st = entry.stat(follow_symlinks=False)
                        found.append((rel, -1, st.st_mtime_ns))
                        continue
                    found.append((rel, st.st_size, st.st_mtime_ns))
            except OSError as e:
                raise SelfsupError(f"{entry.path}: cannot be read ({_reason(e)})") from None
    found.sort()
    return found


def load_folder(
    root: str | Path,
    *,
    skip_bad: bool = False,
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> ImageData:
    """Decode a (nested) folder of JPEG/PNG/WebP/BMP/GIF files into a cached uint8 memmap.

    Labels: when every image lies inside a first-level sub-folder, that sub-folder's name is its
    class, and classes are numbered in alphabetical order; otherwise the data is unlabelled.

    Colour: every image becomes 8-bit RGB. Palette, greyscale, CMYK and the like are converted;
    16-bit greyscale is scaled (v * 255 / 65535) rather than clipped; transparent pixels are
    composited onto a WHITE background, then alpha is dropped (most transparent images are drawn
    for a white page); an animated GIF contributes its first frame; EXIF rotation is applied.

    Size: if sizes differ, or `image_size` is given, the shorter side is resized to S and the
    centre S x S is cropped, where S = `image_size` or else the shorter side of the most common
    size. If all images share one size and `image_size` is None they are kept as they are, even
    when not square.

    Cache: the decoded array lives in `cache_dir/<key>/images.u8` with `meta.json`; the key hashes
    the reader version, the folder's absolute path, every file's relative path, size and mtime,
    `image_size` and `skip_bad`, so any change to the files decodes afresh and an unchanged folder
    is never decoded twice. The cache is written in a temporary sibling and renamed into place
    only when complete.
    """
    root_arg = Path(root).expanduser()
    if not root_arg.exists():
        raise SelfsupError(f"{root}: no such folder")
    if not root_arg.is_dir():
        raise SelfsupError(f"{root}: not a folder")
    root_abs = root_arg.resolve()
    stats = list_image_files(root_abs)
    if not stats:
        raise SelfsupError(
            f"{root}: no images found (looked for files ending in"
            f" {', '.join(IMAGE_EXTENSIONS)}, any case, in this folder and its sub-folders;"
            f" hidden files are ignored)"
        )
    files = [rel for rel, _, _ in stats]

    key_src = json.dumps(
        [READER_VERSION, str(root_abs), stats, image_size, bool(skip_bad)], separators=(",", ":")
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = cache_root / key

    data = _read_cache(final, root_arg)
    if data is not None:
        return data

    created = _missing_folders(cache_root)
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SelfsupError(
            f"{cache_root}: cannot create the image cache folder ({_reason(e)}); choose another"
            f" with cache_dir or the SELFSUP_CACHE environment variable"
        ) from None
    _remove_stale_tmp(cache_root)
    tmp = cache_root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        mean_bytes = sum(max(st[1], 0) for st in stats) / len(stats)
        _decode_folder(root_arg, root_abs, files, tmp, image_size, skip_bad, progress, mean_bytes)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").exists():  # not a concurrent twin that won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)  # a failed first decode leaves no cache folder behind either
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise SelfsupError(
                f"{cache_root}: no space left on the device while writing the decoded images;"
                f" nothing was kept; free some space, pass image_size to shrink them, or choose"
                f" another cache_dir / SELFSUP_CACHE"
            ) from None
        raise
    data = _read_cache(final, root_arg)
    if data is None:  # pragma: no cover - only if the cache vanished between rename and read
        raise SelfsupError(f"{final}: the image cache just written cannot be read back")
    return data


def _read_cache(final: Path, root_arg: Path) -> ImageData | None:
    """The cached decode in `final`, or None when it is missing or unusable (then decode again)."""
    meta_path, raw_path = final / "meta.json", final / "images.u8"
    if not meta_path.is_file() or not raw_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        shape = tuple(int(s) for s in meta["shape"])
        if meta.get("version") != READER_VERSION or raw_path.stat().st_size != int(np.prod(shape)):
            raise ValueError("stale or inconsistent cache")
        images = np.memmap(raw_path, dtype=np.uint8, mode="r", shape=shape)
        labels = None if meta["labels"] is None else np.asarray(meta["labels"], dtype=np.int64)
        skipped = [(str(root_arg / rel), reason) for rel, reason in meta["skipped"]]
    except Exception as e:  # a damaged cache is rebuilt, never trusted
        log.warning("ignoring unreadable image cache %s (%s); decoding again", final, _reason(e))
        shutil.rmtree(final, ignore_errors=True)
        return None
    if skipped:
        _warn_skipped(skipped)
    return ImageData(images, labels, meta["class_names"], str(root_arg), skipped)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first: what mkdir creates."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed call created, deepest first, if they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another run's cache) or already gone
            return


def _remove_stale_tmp(cache_root: Path) -> None:
    """Delete temp dirs left by killed runs (a run that fails cleanly removes its own)."""
    now = time.time()
    for d in cache_root.glob(".tmp-*"):
        try:
            if now - d.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def _labels_for(files: Sequence[str]) -> tuple[np.ndarray | None, list[str] | None]:
    """Class sub-folder labels if every file lies in a first-level sub-folder, else none."""
    parts = [f.split("/", 1) for f in files]
    loose = sum(len(p) == 1 for p in parts)
    if loose:
        if loose < len(files):
            log.warning(
                "%d of %d images lie directly in the top folder, so sub-folders are not used as"
                " class labels; the data is read as unlabelled",
                loose,
                len(files),
            )
        return None, None
    class_names = sorted({p[0] for p in parts})
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[p[0]] for p in parts], dtype=np.int64), class_names


def _decode_folder(
    root_arg: Path,
    root_abs: Path,
    files: list[str],
    tmp: Path,
    image_size: int | None,
    skip_bad: bool,
    progress: bool,
    mean_bytes: float,
) -> None:
    """Decode every file into `tmp/images.u8` and write `tmp/meta.json` last.

    Without `image_size` the output size depends on all the files' sizes. Most folders hold one
    size, so decode optimistically at the first file's size; only when another size turns up,
    read every header (about a third of a small JPEG's decode time) and decode again resized.
    """
    base = os.fspath(root_abs)
    job = _Job(root_arg, files, [os.path.join(base, rel) for rel in files], tmp, skip_bad)
    job.workers = _workers(mean_bytes)
    with _Progress(progress) as job.bar:
        if image_size is not None:
            n, out_hw, bad = job.decode(list(range(len(files))), (image_size,) * 2, image_size)
        else:
            first, bad = job.first_size()
            w, h = first
            todo = [i for i in range(len(files)) if i not in bad]
            try:
                n, out_hw, more_bad = job.decode(todo, (h, w), None)
                bad.update(more_bad)
            except _OddSize:
                n, out_hw, bad = job.resize_to_common()

    labels, class_names = _labels_for(files)
    if labels is not None:
        labels = labels[[i for i in range(len(files)) if i not in bad]]
    meta = {
        "version": READER_VERSION,
        "source": str(root_abs),
        "shape": [n, out_hw[0], out_hw[1], 3],
        "labels": None if labels is None else labels.tolist(),
        "class_names": class_names,
        "skipped": [[files[i], bad[i]] for i in sorted(bad)],
        "files": [f for i, f in enumerate(files) if i not in bad],
    }
    _write_meta(tmp / "meta.json", meta)


class _Job:
    """The state one folder decode shares between its passes."""

    def __init__(
        self, root_arg: Path, files: list[str], paths: list[str], tmp: Path, skip_bad: bool
    ) -> None:
        self.root_arg, self.files, self.paths = root_arg, files, paths
        self.tmp, self.skip_bad = tmp, skip_bad
        self.workers = 1
        self.bar = _Progress(False)

    def first_size(self) -> tuple[tuple[int, int], dict[int, str]]:
        """The size of the first readable file, and the unreadable files before it."""
        bad: dict[int, str] = {}
        for i, path in enumerate(self.paths):
            try:
                return _probe_one(path), bad
            except Exception as e:  # any failure: this file is bad
                bad[i] = _reason(e)
                if not self.skip_bad:
                    _raise_bad(self.root_arg, self.files, bad)
        _raise_all_bad(self.root_arg, self.files, bad)
        raise AssertionError("unreachable")  # pragma: no cover

    def resize_to_common(self) -> tuple[int, tuple[int, int], dict[int, str]]:
        """Read every header, then decode resized to the most common size's shorter side."""
        n_files = len(self.files)
        sizes: list[tuple[int, int] | None] = [None] * n_files
        bad: dict[int, str] = {}

        def probe_chunk(idx: range) -> None:
            for i in idx:
                try:
                    sizes[i] = _probe_one(self.paths[i])
                except Exception as e:  # any failure: this file is bad
                    bad[i] = _reason(e)

        _run_chunks(probe_chunk, n_files, self.bar, "Reading image headers", self.workers)
        if bad and not self.skip_bad:
            _raise_bad(self.root_arg, self.files, bad)
        counts = Counter(s for s in sizes if s is not None)
        if not counts:
            _raise_all_bad(self.root_arg, self.files, bad)
        (w, h), _ = counts.most_common(1)[0]
        side = min(w, h)
        log.info("images have %d different sizes; resizing to %dx%d", len(counts), side, side)
        todo = [i for i in range(n_files) if i not in bad]
        n, out_hw, more_bad = self.decode(todo, (side, side), side)
        bad.update(more_bad)
        return n, out_hw, bad

    def decode(
        self, todo: list[int], out_hw: tuple[int, int], target: int | None
    ) -> tuple[int, tuple[int, int], dict[int, str]]:
        """Decode files `todo` into rows of images.u8; bad ones are dropped (skip_bad) or raise.

        With `target` None every image must already be `out_hw`, else `_OddSize` is raised.
        Returns the rows written, their (H, W) and {file index: reason} for the files dropped.
        """
        n = len(todo)
        row_bytes = out_hw[0] * out_hw[1] * 3
        _check_space(self.tmp, n * row_bytes)
        raw = self.tmp / "images.u8"
        _allocate(raw, n * row_bytes)
        mm = np.memmap(raw, dtype=np.uint8, mode="r+", shape=(n, *out_hw, 3))
        bad_rows: dict[int, str] = {}

        def decode_chunk(rows: range) -> None:
            for r in rows:
                try:
                    arr = _decode_one(self.paths[todo[r]], target)
                except Exception as e:  # any failure: this file is bad
                    bad_rows[r] = _reason(e)
                    if not self.skip_bad:
                        raise _BadFile(todo[r], bad_rows[r]) from None
                    continue
                if arr.shape[:2] != out_hw:
                    raise _OddSize()
                mm[r] = arr

        try:
            _run_chunks(decode_chunk, n, self.bar, "Decoding images", self.workers)
        except _BadFile as e:
            _raise_bad(self.root_arg, self.files, {e.index: e.reason})
        good_rows = [r for r in range(n) if r not in bad_rows]
        bad = {todo[r]: reason for r, reason in bad_rows.items()}
        if not good_rows:
            _raise_all_bad(self.root_arg, self.files, bad)
        for dst, src in enumerate(good_rows):  # compact in order: dst <= src always
            if dst != src:
                mm[dst] = mm[src]
        mm.flush()
        if bad_rows:  # the tail is unused and never read through this mapping again
            os.truncate(raw, len(good_rows) * row_bytes)
        return len(good_rows), out_hw, bad


class _OddSize(Exception):
    """Internal: the optimistic one-size decode met an image of another size."""


def _write_meta(path: Path, meta: dict[str, object]) -> None:
    """Write and fsync the metadata; it is the last file, so its presence marks a whole cache."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())


def _allocate(raw: Path, nbytes: int) -> None:
    """Reserve the memmap's disk blocks now: a full disk is then an error, not a SIGBUS later."""
    try:
        with open(raw, "wb") as f:
            if nbytes and hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(f.fileno(), 0, nbytes)
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
            f.truncate(nbytes)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise SelfsupError(
                f"{raw.parent.parent}: no space left for {_size(nbytes)} of decoded"
                f" images; pass image_size to shrink them or choose another cache_dir"
            ) from None
        raise


class _BadFile(Exception):
    """Internal: stops a decode at the first bad file when skip_bad is off."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index, self.reason = index, reason


def _run_chunks(
    fn: Callable[[range], None], n: int, bar: _Progress, what: str, workers: int
) -> None:
    """Run `fn` over chunks of range(n) on a thread pool (PIL decodes outside the GIL).

    The first exception a chunk raises cancels the chunks not yet started and propagates.
    """
    chunks = [range(a, min(a + _CHUNK, n)) for a in range(0, n, _CHUNK)]
    bar.start(what, n)
    if workers == 1 or len(chunks) <= 1:
        for c in chunks:
            fn(c)
            bar.advance(len(c))
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="selfsup-decode") as pool:
        pending: dict[Future[None], int] = {pool.submit(fn, c): len(c) for c in chunks}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    bar.advance(pending.pop(fut))
                    fut.result()  # re-raises the worker's exception here
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def _workers(mean_file_bytes: float) -> int:
    """Threads for decoding. Small files (CIFAR's 1 KB JPEGs) are bound by PIL's Python-level
    header parsing, which holds the GIL, so extra threads only add contention; big files spend
    their time in C decode/resize code that releases it."""
    if mean_file_bytes < _THREADS_MIN_BYTES:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


class NotRegularFile(OSError):
    """An image path that is not (a link to) a regular file; it is never read."""


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def open_regular(path: str | Path):
    """``path`` opened for binary reading, only if it resolves to a regular file.

    A FIFO would block ``open`` until a writer comes and a device such as /dev/zero never ends,
    so the type is checked (os.stat follows symlinks) before opening, and again on the open
    descriptor (O_NONBLOCK: a FIFO swapped in between cannot block either).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise NotRegularFile(
                f"a dangling symlink: its target {os.readlink(path)} does not exist"
            ) from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(f"{_kind(st.st_mode)}, not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{_kind(mode)}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _probe_one(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed, read from the header only."""
    with open_regular(path) as handle, Image.open(handle) as im:
        w, h = im.size
        # EXIF orientations 5-8 rotate by 90 degrees; only parse EXIF when the file has some.
        if "exif" in im.info and im.getexif().get(0x0112) in (5, 6, 7, 8):
            w, h = h, w
    if w < 1 or h < 1:
        raise ValueError(f"image has size {w}x{h}")
    return w, h


def _decode_one(path: str | Path, size: int | None) -> np.ndarray:
    """Decode one file to uint8 (H, W, 3); `size` resizes/crops to size x size. Raises if bad."""
    with open_regular(path) as handle, Image.open(handle) as im:
        if size is not None and im.format == "JPEG":
            im.draft(im.mode, (size, size))  # DCT-domain downscale, never below size x size
        im.load()  # decode now, inside the caller's try, so truncation surfaces here
        if "exif" in im.info:  # exif_transpose copies every image; only pay when there is EXIF
            im = ImageOps.exif_transpose(im) or im
        rgb = to_rgb(im)
    if size is not None:
        rgb = resize_pil(rgb, size)
    return np.asarray(rgb)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: alpha composited onto white, 16-bit greyscale scaled to 8 bits."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im).astype(np.float64)
        # PNG's 16-bit greyscale decodes as I;16 (or I): map 0..65535 onto 0..255.
        scale = 255.0 / 65535.0 if mode != "F" else 1.0
        grey = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _check_space(folder: Path, nbytes: int) -> None:
    """Refuse up front rather than fail half-way with a full disk."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # pragma: no cover
        return
    if nbytes > free:
        raise SelfsupError(
            f"{folder.parent}: the decoded images need {_size(nbytes)} but only"
            f" {_size(free)} is free; pass image_size to shrink them or choose another"
            f" cache_dir / SELFSUP_CACHE"
        )


def _size(nbytes: int) -> str:
    """Bytes in the largest unit that keeps a digit before the point ("0.0 GiB" says nothing)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _raise_bad(root_arg: Path, files: list[str], bad: dict[int, str]) -> None:
    first = min(bad)
    more = f" ({len(bad) - 1} more bad files)" if len(bad) > 1 else ""
    raise SelfsupError(
        f"{root_arg / files[first]}: cannot read image ({bad[first]}){more}; fix or remove it,"
        f" or use --skip-bad (skip_bad=True) to skip unreadable files"
    )


def _raise_all_bad(root_arg: Path, files: list[str], bad: dict[int, str]) -> None:
    first = min(bad)
    raise SelfsupError(
        f"{root_arg}: none of the {len(files)} image files could be read; the first,"
        f" {root_arg / files[first]}, failed with: {bad[first]}"
    )


def _warn_skipped(skipped: list[tuple[str, str]]) -> None:
    names = ", ".join(f for f, _ in skipped[:5])
    more = ", ..." if len(skipped) > 5 else ""
    log.warning("skipped %d unreadable image files: %s%s", len(skipped), names, more)


def _reason(e: BaseException) -> str:
    """A one-line reason from an exception, with its type when the message alone is unclear."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, zipfile.BadZipFile) and msg:
        return f"bad zip archive: {msg}"
    if isinstance(e, NotRegularFile):
        return msg
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# ----------------------------------------------------------------------------- statistics ----


def image_stats(
    data: ImageData, max_samples: int = 10000, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, from a seeded random subset of the images.

    Used to normalise encoder inputs; a subset keeps this fast on big memmaps.
    """
    images = data.images
    n = images.shape[0]
    if n == 0:
        raise SelfsupError(f"{data.source}: no images to compute statistics from")
    if n > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
    else:
        idx = np.arange(n)
    c = images.shape[-1]
    # Exact per-channel histograms: integer counting is fast and has no float round-off.
    hist = np.zeros((c, 256), dtype=np.int64)
    for chunk in _batches(idx, 1024):
        x = np.asarray(images[chunk]).reshape(-1, c)
        for ch in range(c):
            hist[ch] += np.bincount(x[:, ch], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    count = hist.sum(axis=1)
    mean = hist @ values / count
    var = hist @ values**2 / count - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    return [float(v) for v in mean], [float(v) for v in std]


def _batches(idx: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for a in range(0, len(idx), size):
        yield idx[a : a + size]


# ------------------------------------------------------------------------------- progress ----


class _Progress:
    """A rich progress bar when asked for, else nothing; the decode loop calls it the same way."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        self._task = None

    def __enter__(self) -> Self:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def start(self, what: str, total: int) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task(what, total=total)

    def advance(self, k: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, k)


def _read_image_data(
    path: str, options: dict[str, Any], config: Any, method: Any = None
) -> ImageData:
    """The "image" reader of the registry: the config's reader fields; images take no options."""
    if options:
        raise SelfsupError(
            f"image data takes no data_options (got {', '.join(map(str, options))}); use "
            "--image-size, --skip-bad and --cache-dir"
        )
    return load_images(
        path,
        skip_bad=config.skip_bad,
        image_size=config.image_size,
        cache_dir=config.cache_dir,
        progress=config.progress,
    )


def _read_prepared_images(path: str, config: Any, method: Any = None) -> ImageData:
    return load_image_shards(path, getattr(config, "image_size", None))


if "image" not in READERS:
    READERS.register("image")(_read_image_data)
    PREPARED_READERS.register("image")(_read_prepared_images)
