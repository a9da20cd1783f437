"""Image readers: digits, npz and folders; bad input gives one SelfsupError naming the culprit."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.data import ImageData, image_stats, load_images
from selfsup.data import images as images_mod
from selfsup.errors import SelfsupError

CIFAR_TEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "test"
CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def rgb(h: int, w: int, value: tuple[int, int, int] = (10, 120, 230)) -> Image.Image:
    return Image.new("RGB", (w, h), value)


def save(img: Image.Image, path: Path, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def load(path: Path | str, tmp_path: Path, **kw: object) -> ImageData:
    return load_images(path, cache_dir=tmp_path / "cache", progress=False, **kw)


@pytest.fixture(params=["serial", "threads"])
def pool(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test both serially and on the thread pool (tiny chunks, so several run at once)."""
    if request.param == "threads":
        monkeypatch.setattr(images_mod, "_CHUNK", 2)
        monkeypatch.setattr(images_mod, "_workers", lambda mean_bytes: 3)
    return request.param


# --------------------------------------------------------------------------------- digits ----


def test_digits_shape_labels_and_scaling() -> None:
    d = load_images("digits")
    assert d.images.shape == (1797, 8, 8, 1)
    assert d.images.dtype == np.uint8
    assert d.images.max() == 255 and d.images.min() == 0  # 16 -> 255, 0 -> 0
    assert d.labels is not None and d.labels.dtype == np.int64
    assert sorted(set(d.labels.tolist())) == list(range(10))
    assert d.class_names == [str(i) for i in range(10)]
    assert d.num_classes == 10 and len(d) == 1797 and d.source == "digits"
    assert d.skipped == []
    assert load_images("digits", image_size=16).images.shape == (1797, 16, 16, 1)


# ------------------------------------------------------------------------------------ npz ----


def test_npz_hwc_with_labels(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    y = np.array([0, 2, 1, 2, 0], dtype=np.int32)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    d = load(tmp_path / "d.npz", tmp_path)
    np.testing.assert_array_equal(d.images, x)
    assert d.labels is not None and d.labels.dtype == np.int64
    np.testing.assert_array_equal(d.labels, y)
    assert d.class_names == ["0", "1", "2"] and d.num_classes == 3


def test_npz_hw_alias_keys_and_class_names(tmp_path: Path) -> None:
    x = np.arange(4 * 5 * 5, dtype=np.uint8).reshape(4, 5, 5)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 0, 1, 1]), class_names=np.array(["a", "b"]))
    d = load(tmp_path / "d.npz", tmp_path)
    assert d.images.shape == (4, 5, 5, 1)
    np.testing.assert_array_equal(d.images[..., 0], x)
    assert d.class_names == ["a", "b"]


def test_npz_without_labels_and_resize(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((3, 8, 12, 3), dtype=np.uint8))
    d = load(tmp_path / "d.npz", tmp_path, image_size=4)
    assert d.images.shape == (3, 4, 4, 3)
    assert d.labels is None and d.class_names is None and d.num_classes is None


GOOD = np.zeros((4, 3, 3, 3), dtype=np.uint8)


def _write_bad_npz(case: str, path: Path) -> None:
    if case == "not_zip":
        path.write_text("hello, I am not an archive")
    elif case == "npy_named_npz":
        with open(path, "wb") as f:
            np.save(f, GOOD)
    elif case == "no_image_key":
        np.savez(path, pictures=GOOD, labels=np.zeros(4, dtype=np.int64))
    elif case == "float_images":
        np.savez(path, images=GOOD.astype(np.float32))
    elif case == "ndim_2":
        np.savez(path, images=np.zeros((4, 3), dtype=np.uint8))
    elif case == "ndim_5":
        np.savez(path, images=np.zeros((4, 3, 3, 3, 1), dtype=np.uint8))
    elif case == "channels_2":
        np.savez(path, images=np.zeros((4, 3, 3, 2), dtype=np.uint8))
    elif case == "channels_first":
        np.savez(path, images=np.zeros((4, 3, 8, 8), dtype=np.uint8))
    elif case == "zero_images":
        np.savez(path, images=np.zeros((0, 3, 3, 3), dtype=np.uint8))
    elif case == "label_count":
        np.savez(path, images=GOOD, labels=np.zeros(7, dtype=np.int64))
    elif case == "float_labels":
        np.savez(path, images=GOOD, labels=np.zeros(4, dtype=np.float32))
    elif case == "negative_labels":
        np.savez(path, images=GOOD, labels=np.array([0, 1, -1, 0]))
    elif case == "labels_2d":
        np.savez(path, images=GOOD, labels=np.zeros((4, 1), dtype=np.int64))
    elif case == "object_array":
        np.savez(path, images=np.array([GOOD[0], None], dtype=object))
    elif case == "label_without_name":
        np.savez(path, images=GOOD, labels=np.array([0, 1, 2, 0]), class_names=np.array(["a"]))
    else:  # pragma: no cover
        raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("not_zip", "not an .npz archive"),
        ("npy_named_npz", "single .npy array"),
        ("no_image_key", "found keys: pictures, labels"),
        ("float_images", "key 'images': images must be uint8"),
        ("ndim_2", "key 'images': images must have shape"),
        ("ndim_5", "key 'images': images must have shape"),
        ("channels_2", "must be 1 or 3 channels"),
        ("channels_first", "channels-first"),
        ("zero_images", "key 'images': contains zero images"),
        ("label_count", "7 labels but 4 images"),
        ("float_labels", "key 'labels': labels must be integers"),
        ("negative_labels", "found -1 at index 2"),
        ("labels_2d", "labels must be 1-D"),
        ("object_array", "key 'images': cannot be read"),
        ("label_without_name", "label 2 has no name"),
    ],
)
def test_npz_bad_input_names_file_and_problem(tmp_path: Path, case: str, expected: str) -> None:
    path = tmp_path / f"bad_{case}.npz"
    _write_bad_npz(case, path)
    with pytest.raises(SelfsupError) as err:
        load(path, tmp_path)
    msg = str(err.value)
    assert str(path) in msg and expected in msg
    if case == "no_image_key":
        assert "images, x, X" in msg


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SelfsupError, match="nope.npz: no such file"):
        load(tmp_path / "nope.npz", tmp_path)


# -------------------------------------------------------------------------------- folders ----


def test_folder_with_class_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "data"
    save(rgb(6, 6, (255, 0, 0)), root / "zebra" / "a.png")
    save(rgb(6, 6, (0, 255, 0)), root / "apple" / "nested" / "b.PNG")  # deeper, upper-case ext
    save(rgb(6, 6, (0, 0, 255)), root / "apple" / "c.bmp")
    save(rgb(6, 6), root / "mango" / "d.gif")
    save(rgb(6, 6), root / "mango" / "e.webp", lossless=True)
    save(rgb(6, 6), root / "mango" / ".hidden.png")  # hidden: ignored
    save(rgb(6, 6), root / ".git" / "f.png")  # hidden folder: ignored
    (root / "mango" / "notes.txt").write_text("not an image")
    d = load(root, tmp_path)
    assert d.class_names == ["apple", "mango", "zebra"]
    assert d.images.shape == (5, 6, 6, 3) and d.images.dtype == np.uint8
    # files sorted by relative path: apple/c.bmp, apple/nested/b.PNG, mango/d.gif, mango/e.webp,
    # zebra/a.png
    assert d.labels is not None
    assert d.labels.tolist() == [0, 0, 1, 1, 2]
    assert d.images[0, 0, 0].tolist() == [0, 0, 255]
    assert d.images[1, 0, 0].tolist() == [0, 255, 0]
    assert d.images[4, 0, 0].tolist() == [255, 0, 0]
    assert d.num_classes == 3 and d.source == str(root)


def test_flat_folder_has_no_labels(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for i in range(3):
        save(rgb(5, 5), root / f"{i}.jpg")
    d = load(root, tmp_path)
    assert d.labels is None and d.class_names is None and d.num_classes is None
    assert d.images.shape == (3, 5, 5, 3)


def test_images_beside_subfolders_mean_no_labels(tmp_path: Path, caplog) -> None:
    root = tmp_path / "mixed"
    save(rgb(5, 5), root / "loose.png")
    save(rgb(5, 5), root / "cls" / "a.png")
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        d = load(root, tmp_path)
    assert d.labels is None and len(d) == 2
    assert "directly in the top folder" in caplog.text


@pytest.mark.parametrize("odd_names", [("a_big", "z_small"), ("y_big", "z_small")])
def test_mixed_sizes_resized_to_most_common_shorter_side(
    tmp_path: Path, odd_names: tuple[str, str], pool: str
) -> None:
    # The odd sizes come first, or only at the end (after an optimistic decode at one size).
    root = tmp_path / "sizes"
    for i in range(5):  # most common size: 20 wide x 10 high -> S = 10
        save(rgb(10, 20), root / f"common{i}.png")
    save(rgb(40, 40), root / f"{odd_names[0]}.png")
    save(rgb(7, 9), root / f"{odd_names[1]}.png")
    d = load(root, tmp_path)
    assert d.images.shape == (7, 10, 10, 3)
    assert (d.images == np.array([10, 120, 230], dtype=np.uint8)).all()


def test_uniform_nonsquare_kept_and_image_size_crops(tmp_path: Path) -> None:
    root = tmp_path / "rect"
    img = np.zeros((10, 20, 3), dtype=np.uint8)
    img[:, 5:15] = 200  # the centre 10x10 square is bright, the sides dark
    for i in range(2):
        save(Image.fromarray(img), root / f"{i}.png")
    assert load(root, tmp_path).images.shape == (2, 10, 20, 3)
    d = load(root, tmp_path, image_size=10)
    assert d.images.shape == (2, 10, 10, 3)
    assert (d.images == 200).all()  # centre crop, not a squash
    assert load(root, tmp_path, image_size=4).images.shape == (2, 4, 4, 3)


def test_exif_rotation_applied(tmp_path: Path) -> None:
    root = tmp_path / "exif"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    save(rgb(10, 20), root / "a.jpg", exif=exif.tobytes())
    assert load(root, tmp_path).images.shape == (1, 20, 10, 3)


def test_colour_modes_become_rgb_uint8(tmp_path: Path) -> None:
    root = tmp_path / "modes"
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 0  # one fully transparent pixel: becomes the white background
    rgba[1:, :, 3] = 255
    rgba[0, 1:, 3] = 255
    save(Image.fromarray(rgba, "RGBA"), root / "a_alpha.png")
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
    save(pal, root / "b_palette.png")
    save(Image.new("L", (4, 4), 77), root / "c_grey.png")
    save(Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)), root / "d_16bit.png")
    save(Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)), root / "e_16bit_mid.png")
    save(Image.new("LA", (4, 4), (50, 0)), root / "f_grey_alpha.png")
    save(Image.new("CMYK", (4, 4), (0, 0, 0, 0)), root / "g_cmyk.jpg")
    pal_t = Image.new("P", (4, 4), 0)
    pal_t.putpalette([0, 0, 0] * 256)
    save(pal_t, root / "h_palette_transparent.png", transparency=0)
    for name in ["a_alpha", "b_palette", "c_grey", "d_16bit", "f_grey_alpha", "g_cmyk"]:
        assert (root / f"{name}.{'jpg' if name == 'g_cmyk' else 'png'}").exists()
    assert Image.open(root / "d_16bit.png").mode.startswith("I")

    d = load(root, tmp_path)
    assert d.images.dtype == np.uint8 and d.images.shape == (8, 4, 4, 3)
    a, b, c, d16, e16, f, g, h = d.images
    assert a[0, 0].tolist() == [255, 255, 255] and a[2, 2].tolist() == [255, 0, 0]
    assert (b == [0, 128, 255]).all()
    assert (c == 77).all()
    assert (d16 == 255).all()  # scaled, and 32896 -> 128 (clipping would give 255 for both)
    assert (e16 == 128).all()
    assert (f == 255).all()  # fully transparent grey: white background
    assert (np.abs(g.astype(int) - 255) <= 2).all()  # CMYK no ink: white
    assert (h == 255).all()


@pytest.mark.parametrize("kind", ["zero_byte", "truncated_jpeg", "truncated_png", "garbage"])
def test_bad_image_names_the_file(tmp_path: Path, kind: str, pool: str) -> None:
    root = tmp_path / "bad"
    save(rgb(16, 16), root / "cls" / "good.png")
    bad = _make_bad(root / "cls", kind)
    with pytest.raises(SelfsupError) as err:
        load(root, tmp_path)
    assert str(bad) in str(err.value) and "skip_bad" in str(err.value)
    # the same with a given image_size: then there is no header pass, the decoder must catch it
    with pytest.raises(SelfsupError, match=bad.name):
        load(root, tmp_path, image_size=8)
    assert not (tmp_path / "cache").exists()  # nothing cached, not even the folder it made


def _make_bad(folder: Path, kind: str) -> Path:
    noise = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "zero_byte":
        path = folder / "empty.jpg"
        path.write_bytes(b"")
    elif kind == "truncated_jpeg":
        path = folder / "cut.jpg"
        save(Image.fromarray(noise), path, quality=95)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "truncated_png":
        path = folder / "cut.png"
        save(Image.fromarray(noise), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path = folder / "garbage.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"nonsense" * 20)
    return path


def test_skip_bad_skips_counts_and_logs(tmp_path: Path, caplog, pool: str) -> None:
    root = tmp_path / "bad"
    for i in range(3):
        save(rgb(16, 16), root / "a" / f"good{i}.png")
    save(rgb(16, 16), root / "b" / "good.png")
    bad = [_make_bad(root / "a", k) for k in ("zero_byte", "truncated_jpeg", "truncated_png")]
    for image_size in (None, 16):
        with caplog.at_level(logging.WARNING, logger="selfsup"):
            d = load(root, tmp_path, skip_bad=True, image_size=image_size)
        assert len(d) == 4 and d.images.shape == (4, 16, 16, 3)
        assert d.labels is not None and d.labels.tolist() == [0, 0, 0, 1]
        assert sorted(f for f, _ in d.skipped) == sorted(str(p) for p in bad)
        assert all(reason for _, reason in d.skipped)
        assert "skipped 3 unreadable image files" in caplog.text
        assert (d.images == np.array([10, 120, 230], dtype=np.uint8)).all()


def test_skip_bad_with_everything_bad_is_still_an_error(tmp_path: Path) -> None:
    root = tmp_path / "allbad"
    _make_bad(root, "zero_byte")
    _make_bad(root, "truncated_jpeg")
    for image_size in (None, 8):
        with pytest.raises(SelfsupError, match="none of the 2 image files could be read"):
            load(root, tmp_path, skip_bad=True, image_size=image_size)


def test_empty_missing_and_wrong_paths(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    save(rgb(4, 4), tmp_path / "texts" / ".hidden.png")
    for folder in ("empty", "texts"):
        with pytest.raises(SelfsupError, match=r"no images found .*\.jpg, \.jpeg, \.png"):
            load(tmp_path / folder, tmp_path)
    with pytest.raises(SelfsupError, match="no such file or folder"):
        load(tmp_path / "missing", tmp_path)
    with pytest.raises(SelfsupError, match="not a folder of images or an .npz"):
        load(tmp_path / "texts" / "a.txt", tmp_path)
    with pytest.raises(SelfsupError, match="image_size must be a positive integer"):
        load(tmp_path / "texts", tmp_path, image_size=0)


# ---------------------------------------------------------------------------------- cache ----


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = images_mod._decode_one

    def counting(path: Path, size: int | None) -> np.ndarray:
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(images_mod, "_decode_one", counting)
    return calls


def test_cache_reused_then_invalidated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: str
) -> None:
    root = tmp_path / "data"
    for i in range(3):
        save(rgb(8, 8, (i, i, i)), root / f"{i}.png")
    calls = _count_decodes(monkeypatch)
    first = load(root, tmp_path)
    assert len(calls) == 3
    assert isinstance(first.images, np.memmap) and not first.images.flags.writeable
    cached = [p for p in (tmp_path / "cache").iterdir()]
    assert len(cached) == 1 and {p.name for p in cached[0].iterdir()} == {"images.u8", "meta.json"}

    second = load(root, tmp_path)
    assert len(calls) == 3  # not decoded again
    np.testing.assert_array_equal(second.images, first.images)

    # Same size, new content and mtime: a new key, a fresh decode with the new pixels.
    save(rgb(8, 8, (99, 99, 99)), root / "1.png")
    st = (root / "1.png").stat()
    os.utime(root / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    third = load(root, tmp_path)
    assert len(calls) == 6
    assert third.images[1, 0, 0].tolist() == [99, 99, 99]

    save(rgb(8, 8), root / "3.png")  # a new file: a new key too
    assert len(load(root, tmp_path)) == 4 and len(calls) == 10
    load(root, tmp_path, image_size=4)  # so does another image_size
    assert len(calls) == 14


def test_damaged_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    save(rgb(8, 8), root / "a.png")
    load(root, tmp_path)
    (entry,) = (tmp_path / "cache").iterdir()
    raw = entry / "images.u8"
    raw.write_bytes(raw.read_bytes()[:10])
    calls = _count_decodes(monkeypatch)
    d = load(root, tmp_path)
    assert len(calls) == 1 and d.images.shape == (1, 8, 8, 3)


@pytest.mark.parametrize("stage", ["decode", "meta"])
def test_interrupted_decode_leaves_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str, pool: str
) -> None:
    root = tmp_path / "data"
    for i in range(8):
        save(rgb(8, 8), root / f"{i}.png")
    real = images_mod._decode_one
    calls: list[Path] = []

    def interrupted(path: Path, size: int | None) -> np.ndarray:
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a Ctrl-C half-way through
        return real(path, size)

    def failing_meta(*args: object, **kwargs: object) -> None:
        raise OSError("disk on fire")

    if stage == "decode":
        monkeypatch.setattr(images_mod, "_decode_one", interrupted)
        with pytest.raises(KeyboardInterrupt):
            load(root, tmp_path)
    else:
        monkeypatch.setattr(images_mod, "_write_meta", failing_meta)
        with pytest.raises(OSError, match="disk on fire"):
            load(root, tmp_path)
    assert not (tmp_path / "cache").exists()  # neither a final nor a temp dir, nor the folder
    monkeypatch.undo()
    calls2 = _count_decodes(monkeypatch)
    assert len(load(root, tmp_path)) == 8 and len(calls2) == 8  # decodes afresh, correctly


# ---------------------------------------------------------------------------------- stats ----


def test_image_stats_known_values() -> None:
    images = np.zeros((6, 2, 2, 3), dtype=np.uint8)
    images[..., 0] = 255
    images[:3, ..., 2] = 255  # channel 2: half 0, half 1 -> mean 0.5, std 0.5
    d = ImageData(images, None, None, "test", [])
    mean, std = image_stats(d)
    np.testing.assert_allclose(mean, [1.0, 0.0, 0.5])
    np.testing.assert_allclose(std, [0.0, 0.0, 0.5])

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(300, 4, 4, 1), dtype=np.uint8)
    mean, std = image_stats(ImageData(x, None, None, "r", []), max_samples=100)
    assert len(mean) == 1
    assert abs(mean[0] - x.mean() / 255) < 0.03 and abs(std[0] - x.std() / 255) < 0.03
    assert image_stats(ImageData(x, None, None, "r", []), max_samples=100) == (mean, std)


# ---------------------------------------------------------------------------- real data ----


@pytest.mark.skipif(not CIFAR_TEST.is_dir(), reason="../shared/data/cifar10 not present")
def test_cifar10_test_folder(tmp_path: Path) -> None:
    d = load(CIFAR_TEST, tmp_path)
    assert d.images.shape == (10000, 32, 32, 3)
    assert d.class_names == CIFAR_CLASSES and d.num_classes == 10
    assert d.labels is not None and np.bincount(d.labels).tolist() == [1000] * 10
    first = CIFAR_TEST / "airplane" / sorted(os.listdir(CIFAR_TEST / "airplane"))[0]
    np.testing.assert_array_equal(d.images[0], np.asarray(Image.open(first).convert("RGB")))
    assert d.skipped == []
