"""Property-based fuzzing of everything that reads user input: bad input must be a SelfsupError.

For random image files, random .npz archives and random config mappings the only acceptable
outcomes are a clean result (checked for consistency) or a `SelfsupError`; any other exception,
from PIL, numpy or our own code, is a bug the user would see as a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from selfsup.augment import BatchedImageAugment, ImageAugmentConfig
from selfsup.config import PretrainConfig, build_config, config_fields
from selfsup.data import ImageData, load_images
from selfsup.errors import SelfsupError
from selfsup.methods.simclr import SimCLROptions

# A few dozen examples per test keep CI fast; SELFSUP_FUZZ_EXAMPLES=2000 searches harder.
FUZZ = settings(
    max_examples=int(os.environ.get("SELFSUP_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (pytest's tmp_path is shared by all of a test's examples)."""
    with tempfile.TemporaryDirectory(prefix="selfsup-fuzz-") as name:
        yield Path(name)


@contextlib.contextmanager
def small_bomb_limit() -> Iterator[None]:
    """Mutated headers can claim huge sizes; a low limit makes PIL refuse them before it
    allocates, so the fuzzer stays fast and small. The code path (a DecompressionBombError
    for that one file) is the same one a real oversized image takes."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1 << 16
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_images(data: ImageData) -> None:
    """A clean result is internally consistent."""
    assert data.images.dtype == np.uint8 and data.images.ndim == 4
    assert len(data) > 0 and data.images.shape[-1] in (1, 3)
    assert min(data.images.shape[1:3]) > 0
    if data.labels is not None:
        assert data.labels.dtype == np.int64 and data.labels.shape == (len(data),)
        assert data.labels.min() >= 0
        assert data.class_names is not None and data.labels.max() < len(data.class_names)


# ------------------------------------------------------------------------- image files ----


def _encoded(fmt: str, mode: str, size: tuple[int, int], **kw: Any) -> bytes:
    rng = np.random.default_rng(len(fmt) + size[0])
    shape = (size[1], size[0], len(mode)) if len(mode) > 1 else (size[1], size[0])
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, fmt, **kw)
    return buffer.getvalue()


# Small valid files whose mutations reach deep into each decoder (headers, chunks, palettes).
SEEDS = [
    _encoded("PNG", "RGB", (6, 5)),
    _encoded("PNG", "RGBA", (4, 4)),
    _encoded("PNG", "L", (5, 7)),
    _encoded("JPEG", "RGB", (8, 8), quality=90),
    _encoded("JPEG", "L", (9, 6)),
    _encoded("GIF", "L", (5, 5)),
    _encoded("BMP", "RGB", (3, 4)),
    _encoded("WEBP", "RGB", (6, 6), lossless=True),
]
EXTENSIONS = [".jpg", ".jpeg", ".png", ".PNG", ".gif", ".bmp", ".webp"]


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid image with some bytes replaced, cut off or inserted."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["replace", "truncate", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "replace" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@st.composite
def image_files(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """1-4 files, either all in class folders (labelled) or not (some loose at the top)."""
    count = draw(st.integers(1, 4))
    labelled = draw(st.booleans())
    files = []
    for i in range(count):
        folder = f"{draw(st.sampled_from(['cat', 'dog']))}/" if labelled else ""
        files.append((f"{folder}{i}{draw(st.sampled_from(EXTENSIONS))}", draw(image_bytes())))
    return files


@FUZZ
@given(
    files=image_files(),
    skip_bad=st.booleans(),
    image_size=st.sampled_from([None, None, 4, 7]),
)
def test_random_image_files_are_read_or_refused(files, skip_bad, image_size):
    with scratch() as tmp, small_bomb_limit():
        root = tmp / "data"
        for name, payload in files:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(payload)
        try:
            data = load_images(
                root, skip_bad=skip_bad, image_size=image_size, cache_dir=tmp / "c", progress=False
            )
        except SelfsupError as error:
            assert str(root) in str(error)  # names the folder or the file
            event("refused")
            return
        event(f"read {len(data)}, skipped {len(data.skipped)}")
        check_images(data)
        assert len(data) + len(data.skipped) == len(files)
        assert data.images.shape[-1] == 3
        if image_size is not None:
            assert data.images.shape[1:3] == (image_size, image_size)


# ---------------------------------------------------------------------------------- npz ----

NPZ_KEYS = ["images", "x", "X", "labels", "y", "class_names", "data", "imgs", "pictures"]
DTYPES = [
    np.uint8, np.uint8, np.int8, np.int32, np.int64, np.uint16, np.uint64, np.float32,
    np.float64, np.bool_, np.complex64, "U3", "S2", "datetime64[s]",
]


def arrays(shape: st.SearchStrategy[tuple[int, ...]]) -> st.SearchStrategy[np.ndarray]:
    return st.sampled_from(DTYPES).flatmap(lambda dtype: hnp.arrays(np.dtype(dtype), shape))


@st.composite
def label_arrays(draw: st.DrawFn, n: int) -> np.ndarray:
    """Integer labels over each dtype's whole range (edges included), or any array at all."""
    if draw(st.integers(0, 3)) == 0:
        return draw(arrays(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5)))
    dtype = np.dtype(draw(st.sampled_from([np.int64, np.int8, np.uint8, np.uint64])))
    info = np.iinfo(dtype)
    length = draw(st.sampled_from([n, n, n, n + 1, max(0, n - 1)]))
    lo, hi = int(info.min), int(info.max)
    edges = st.sampled_from([lo, -1 if lo else 0, hi, hi // 2 + 1, min(hi, 10**9)])
    items = st.one_of(st.integers(0, 3), st.integers(lo, hi), edges)  # hypothesis favours small
    return np.array(draw(st.lists(items, min_size=length, max_size=length)), dtype=dtype)


@st.composite
def npz_members(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Mostly a plausible image array, labels and class names, each possibly wrong; plus junk."""
    members: dict[str, np.ndarray] = {}
    if draw(st.integers(0, 9)):
        side = st.sampled_from([1, 2, 3, 4, 1, 2, 3, 0])  # zero sometimes, not often
        n = draw(side)
        if draw(st.integers(0, 4)):
            channels = draw(st.sampled_from([(), (1,), (3,), (3,), (2,)]))
            shape = (n, draw(side), draw(side), *channels)
        else:
            shape = (n, *(draw(st.integers(0, 4)) for _ in range(draw(st.integers(0, 4)))))
        uint8 = draw(st.integers(0, 3)) > 0
        images = hnp.arrays(np.uint8, shape) if uint8 else arrays(st.just(shape))
        members[draw(st.sampled_from(["images", "x", "X"]))] = draw(images)
        if draw(st.integers(0, 3)):
            members[draw(st.sampled_from(["labels", "y"]))] = draw(label_arrays(n))
        if draw(st.integers(0, 2)) == 0:
            names = st.lists(st.text(max_size=3), max_size=5).map(lambda v: np.array(v, dtype="U3"))
            members["class_names"] = draw(
                st.one_of(names, arrays(hnp.array_shapes(max_dims=2, max_side=4)))
            )
    if draw(st.integers(0, 2)) == 0:
        junk = st.dictionaries(
            st.one_of(st.sampled_from(NPZ_KEYS), st.text(min_size=1, max_size=6)),
            arrays(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)),
            max_size=2,
        )
        for key, value in draw(junk).items():
            members.setdefault(key, value)
    return members


damages = st.one_of(
    st.just([]), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=2)
)


@FUZZ
@given(
    members=npz_members(),
    compressed=st.booleans(),
    damage=damages,
    image_size=st.sampled_from([None, None, 3]),
)
def test_random_npz_is_read_or_refused(members, compressed, damage, image_size):
    with scratch() as tmp:
        path = tmp / "data.npz"
        try:
            (np.savez_compressed if compressed else np.savez)(path, **members)
        except (ValueError, OSError, zipfile.BadZipFile):  # a key numpy itself cannot store
            return
        if damage:
            raw = bytearray(path.read_bytes())
            for at, value in damage:
                raw[at % len(raw)] = value
            path.write_bytes(bytes(raw))
        try:
            data = load_images(path, image_size=image_size, progress=False)
        except SelfsupError as error:
            assert str(path) in str(error)
            event(f"refused: {str(error).split(': ', 1)[-1][:28]}")
            return
        event("read, labelled" if data.labels is not None else "read")
        check_images(data)
        if image_size is not None:
            assert data.images.shape[1:3] == (image_size, image_size)


@pytest.mark.parametrize(
    ("labels", "found"),
    [
        (np.array([0, 2**63], np.uint64), "found 9223372036854775808 at index 1"),  # was accepted
        (np.array([0, 10**12]), "found 1000000000000 at index 1"),  # hung making 10**12 names
    ],
)
def test_npz_labels_too_large_to_be_classes_are_refused(tmp_path, labels, found):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 3, 3, 1), np.uint8), labels=labels)
    with pytest.raises(SelfsupError, match=found) as error:
        load_images(tmp_path / "d.npz")
    assert "d.npz key 'labels'" in str(error.value)


# ------------------------------------------------------------------------------- config ----

edges = st.sampled_from(
    [0, -1, 1, 2**32, 2**64, 10**400, 0.0, -0.5, 1.0, float("nan"), float("inf"), -float("inf")]
)
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), edges, edges
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def typed(hint: Any) -> st.SearchStrategy[Any]:
    """Values of roughly the right type for a field, edges included, so checks past the type
    test are reached; or anything at all."""
    text = repr(hint)
    if "float" in text or "int" in text:
        return st.one_of(edges, st.integers(-3, 50), st.floats(-2, 5), values)
    if "bool" in text:
        return st.one_of(st.booleans(), values)
    return values


@st.composite
def mappings(draw: st.DrawFn, cls: type) -> dict[Any, Any]:
    """Some of ``cls``'s options (spelt with _ or -) with typed values, and a few foreign keys."""
    fields = config_fields(cls)
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), max_size=5, unique=True))
    mapping: dict[Any, Any] = {}
    for name in chosen:
        key = name.replace("_", "-") if draw(st.integers(0, 4)) == 0 else name
        mapping[key] = draw(typed(fields[name]))
    if draw(st.integers(0, 3)) == 0:
        foreign = st.one_of(st.text(max_size=10), st.integers())
        mapping.update(draw(st.dictionaries(foreign, values, max_size=2)))
    return mapping


@FUZZ
@given(mappings(PretrainConfig))
def test_random_config_mappings_build_or_are_refused(mapping):
    try:
        config = build_config(mapping)
    except SelfsupError:
        return
    assert isinstance(config, PretrainConfig)
    assert config.minutes or config.epochs or config.steps
    for name in ("lr", "minutes", "weight_decay", "warmup_fraction", "checkpoint_minutes"):
        value = getattr(config, name)
        assert value is None or np.isfinite(value), name
    assert 0 <= config.seed < 2**32 and config.num_workers >= 0


@FUZZ
@given(mappings(ImageAugmentConfig), st.integers(0, 2**32 - 1))
def test_random_augment_options_are_refused_or_work(options, seed):
    try:
        augment = BatchedImageAugment(build_config(options, ImageAugmentConfig))
    except SelfsupError:
        return
    images = torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(seed))
    size = augment.config.output_size or 8
    assert out.shape == (3, 3, size, size) and torch.isfinite(out).all()


@FUZZ
@given(mappings(SimCLROptions))
def test_random_method_options_build_or_are_refused(options):
    try:
        built = build_config(options, SimCLROptions)
    except SelfsupError:
        return
    assert isinstance(built, SimCLROptions)


# ------------------------------------------------------------------ text and series readers ----

TEXT_SUFFIXES = [".txt", ".md", ".jsonl", ".jsonl.gz", ".parquet"]


@FUZZ
@given(
    payload=st.one_of(
        st.binary(max_size=400),
        st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.lists(
            st.dictionaries(st.sampled_from(["text", "body", "id"]),
                            st.one_of(st.text(max_size=30), st.integers(), st.none()),
                            max_size=3),
            max_size=6,
        ).map(lambda rows: "\n".join(__import__("json").dumps(r) for r in rows).encode()),
    ),
    suffix=st.sampled_from(TEXT_SUFFIXES),
    options=st.fixed_dictionaries(
        {},
        optional={
            "tokenizer": st.sampled_from(["char", "bpe", "words"]),
            "vocab_size": st.integers(-5, 600),
            "block_size": st.integers(-2, 40),
            "encoding_errors": st.sampled_from(["strict", "replace", "ignore"]),
        },
    ),
)
def test_random_text_files_are_read_or_refused(payload, suffix, options):
    """Random bytes, text and JSON lines under every text suffix: a TokenData or a SelfsupError."""
    from selfsup.data.base import load_data

    with scratch() as folder:
        path = folder / f"corpus{suffix}"
        path.write_bytes(payload)
        config = build_config({"method": "gpt", "cache_dir": str(folder / "cache"),
                               "data_options": options})
        try:
            data = load_data("text", str(path), config)
        except SelfsupError:
            event("refused")
            return
        event("read")
        assert len(data) > 0
        batch = data.batch_dataset(with_labels=False).__getitems__([0])
        assert batch["tokens"].dtype == torch.int64
        assert int(batch["tokens"].max()) < data.data_info().vocab_size


@FUZZ
@given(
    x=hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.int16, np.uint8]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
        elements={"allow_nan": True, "allow_infinity": True},
    ),
    key=st.sampled_from(["X", "X_train", "images", "x"]),
    with_y=st.booleans(),
    with_lengths=st.booleans(),
    split=st.sampled_from([None, "train", "test", "all"]),
    fill=st.sampled_from(["none", "zero", "ffill", "linear"]),
)
def test_random_series_npz_is_read_or_refused(x, key, with_y, with_lengths, split, fill):
    """Random arrays (NaN, inf, odd shapes and dtypes) as series: SeriesData or SelfsupError."""
    from selfsup.data.series import load_series

    with scratch() as folder:
        path = folder / "series.npz"
        arrays = {key: x}
        n = x.shape[0] if x.ndim else 0
        if with_y:
            arrays[key.replace("X", "y") if key.startswith("X") else "y"] = np.arange(n) % 3
        if with_lengths:
            arrays["lengths" if key == "X" else "len_train"] = np.full(n, 3, dtype=np.int32)
        np.savez(path, **arrays)
        options = {"fill": fill} if split is None else {"fill": fill, "split": split}
        try:
            data = load_series(path, options)
        except SelfsupError:
            event("refused")
            return
        event("read")
        inputs = data.inputs(np.arange(min(len(data), 4)))
        assert inputs.ndim == 3 and inputs.shape[0] == min(len(data), 4)


@FUZZ
@given(
    rows=st.lists(
        st.lists(st.one_of(st.floats(allow_nan=True), st.text(max_size=4), st.none()),
                 min_size=0, max_size=6),
        min_size=0, max_size=6,
    ),
    header=st.booleans(),
)
def test_random_series_csv_is_read_or_refused(rows, header):
    """Random wide-form CSV cells (ragged, text, empty, NaN): SeriesData or SelfsupError."""
    from selfsup.data.series import load_series

    with scratch() as folder:
        path = folder / "series.csv"
        lines = [",".join(f"c{i}" for i in range(6))] if header else []
        lines += [",".join("" if v is None else str(v) for v in row) for row in rows]
        path.write_text("\n".join(lines), encoding="utf-8")
        try:
            data = load_series(path, {})
        except SelfsupError:
            event("refused")
            return
        event("read")
        assert len(data) >= 1
