"""`selfsup embed` and `selfsup.load`: Parquet schema, resume without duplicates, flat memory."""

import json
import sys

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import selfsup
import selfsup.embed as embed_mod
from selfsup.cli import main
from selfsup.data import load_digits
from selfsup.embed import RowReader, embed, parts_dir
from selfsup.errors import SelfsupError
from selfsup.loading import Embedder
from selfsup.models import build_encoder
from selfsup.run import RunDir, save_encoder


def make_run(path, channels=1, size=8, seed=0):
    """An exported (untrained) encoder in a run folder: all `embed` needs, in a second."""
    torch.manual_seed(seed)
    options = {"in_channels": channels, "width": 8}
    encoder = build_encoder("resnet_small", **options)
    run = RunDir(path)
    run.path.mkdir(parents=True)
    spec = {"image_size": size, "channels": channels, "name": "resnet_small",
            "options": options, "method": "simclr", "modality": "image"}
    save_encoder(run, encoder, spec)
    return run.path


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture
def grey_run(tmp_path):
    return make_run(tmp_path / "run")


def read(path):
    return pq.read_table(path)


def test_parquet_schema_metadata_and_values(tmp_path, grey_run, digits):
    out = tmp_path / "emb.parquet"
    result = embed(grey_run, "digits", out, batch_size=100, progress=False, precision="32",
                   rows_per_part=500)
    assert result["rows"] == 1797 and result["dim"] == 64 and result["embedded_now"] == 1797
    table = read(out)
    assert table.column_names == ["index", "id", "label", "label_name", "embedding"]
    assert table.column("label_name").to_pylist()[:3] == [str(v) for v in digits.labels[:3]]
    kind = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 64
    assert kind.value_type == pa.float32()
    assert table.schema.field("index").type == pa.int64()
    assert table.schema.field("label").type == pa.int64()
    meta = table.schema.metadata
    assert meta[b"run"] == str(grey_run).encode() and meta[b"encoder"] == b"resnet_small"
    assert meta[b"dim"] == b"64" and meta[b"modality"] == b"image"
    record = json.loads(meta[b"selfsup"])
    assert len(record["encoder_sha256"]) == 64 and record["rows"] == 1797
    np.testing.assert_array_equal(table.column("index").to_numpy(), np.arange(1797))
    np.testing.assert_array_equal(table.column("label").to_numpy(), digits.labels)
    assert table.column("id").to_pylist()[:3] == ["0", "1", "2"]
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert vectors.dtype == np.float32 and vectors.shape == (1797, 64)
    # The same vectors as the Python API gives for the raw images.
    direct = selfsup.load(grey_run, precision="32").embed(digits.images)
    np.testing.assert_allclose(vectors, direct, rtol=1e-4, atol=1e-5)
    assert not parts_dir(out).exists()  # the parts are gone once the final file is written


def test_folder_ids_are_relative_paths_and_labels_come_from_folders(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    run = make_run(tmp_path / "run", channels=3)
    out = tmp_path / "emb.parquet"
    embed(run, str(root), out, progress=False, cache_dir=str(tmp_path / "cache"))
    table = read(out)
    assert table.column("id").to_pylist() == [f"{c}/{i}.png" for c in ("cat", "dog")
                                              for i in range(3)]
    assert table.column("label").to_pylist() == [0, 0, 0, 1, 1, 1]
    assert json.loads(table.schema.metadata[b"selfsup"])["class_names"] == ["cat", "dog"]
    # A file of the folder embedded through selfsup.load gives the same vector as the export.
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    single = selfsup.load(run).embed(str(root / "dog" / "1.png"))
    np.testing.assert_allclose(single[0], vectors[4], rtol=1e-2, atol=1e-2)


class Killed(Exception):
    pass


def test_resume_after_a_crash_writes_every_row_once(tmp_path, grey_run, monkeypatch):
    out = tmp_path / "emb.parquet"
    reference = tmp_path / "ref.parquet"
    embed(grey_run, "digits", reference, progress=False, precision="32", rows_per_part=300)

    real_write = embed_mod._write_part
    written = []

    def crash_on_third(path, table):
        if len(written) == 2:
            raise Killed()
        written.append(path)
        real_write(path, table)

    monkeypatch.setattr(embed_mod, "_write_part", crash_on_third)
    with pytest.raises(Killed):
        embed(grey_run, "digits", out, progress=False, precision="32", rows_per_part=300)
    assert not out.exists()  # never a half-written final file
    assert sorted(p.name for p in parts_dir(out).glob("part-*")) == [
        "part-000000.parquet", "part-000001.parquet"]
    monkeypatch.setattr(embed_mod, "_write_part", real_write)

    seen = []
    real_forward = Embedder.forward

    def counting(self, batch):
        seen.append(len(batch))
        return real_forward(self, batch)

    monkeypatch.setattr(Embedder, "forward", counting)
    result = embed(grey_run, "digits", out, progress=False, precision="32", rows_per_part=300,
                   resume=True)
    assert result["resumed_rows"] == 600 and result["embedded_now"] == 1197
    assert sum(seen) == 1197  # the kept rows were not embedded again
    table, ref = read(out), read(reference)
    np.testing.assert_array_equal(table.column("index").to_numpy(), np.arange(1797))
    assert table.column("id").to_pylist() == ref.column("id").to_pylist()
    np.testing.assert_allclose(
        np.stack(table.column("embedding").to_numpy(zero_copy_only=False)),
        np.stack(ref.column("embedding").to_numpy(zero_copy_only=False)), rtol=1e-5, atol=1e-6)
    assert not parts_dir(out).exists()

    # Resuming a finished file is a no-op; resuming it with another encoder is refused.
    seen.clear()
    again = embed(grey_run, "digits", out, progress=False, resume=True)
    assert again["embedded_now"] == 0 and not seen
    other = make_run(tmp_path / "other", seed=1)
    with pytest.raises(SelfsupError, match="another encoder"):
        embed(other, "digits", out, progress=False, resume=True)


def test_resume_refuses_the_parts_of_another_encoder(tmp_path, grey_run, monkeypatch):
    out = tmp_path / "emb.parquet"

    def crash(path, table):
        raise Killed()

    monkeypatch.setattr(embed_mod, "_write_part", crash)
    with pytest.raises(Killed):
        embed(grey_run, "digits", out, progress=False, rows_per_part=300)
    monkeypatch.undo()
    other = make_run(tmp_path / "other", seed=1)
    with pytest.raises(SelfsupError, match="another encoder or other data"):
        embed(other, "digits", out, progress=False, rows_per_part=300, resume=True)


def test_bad_requests_are_clear_errors(tmp_path, grey_run):
    rgb = make_run(tmp_path / "rgb", channels=3)
    with pytest.raises(SelfsupError, match="1-channel images.*expects 3"):
        embed(rgb, "digits", tmp_path / "a.parquet", progress=False)
    with pytest.raises(SelfsupError, match=r"\.parquet"):
        embed(grey_run, "digits", tmp_path / "a.csv", progress=False)
    with pytest.raises(SelfsupError, match="no exported encoder"):
        (tmp_path / "empty").mkdir()
        embed(tmp_path / "empty", "digits", tmp_path / "a.parquet", progress=False)


def test_load_embeds_paths_pil_images_and_arrays_alike(tmp_path, grey_run, digits):
    encoder = selfsup.load(grey_run, precision="32")
    assert encoder.dim == 64 and encoder.modality == "image"
    pixels = digits.images[7, :, :, 0]
    Image.fromarray(pixels).save(tmp_path / "seven.png")
    from_path = encoder.embed(str(tmp_path / "seven.png"))
    from_pil = encoder.embed(Image.open(tmp_path / "seven.png"))
    from_array = encoder.embed(pixels)
    from_batch = encoder.embed(digits.images[5:9])
    assert from_path.shape == (1, 64) and from_path.dtype == np.float32
    np.testing.assert_allclose(from_path, from_pil, atol=1e-6)
    np.testing.assert_allclose(from_path, from_array, atol=1e-6)
    np.testing.assert_allclose(from_path[0], from_batch[2], rtol=1e-4, atol=1e-5)
    # Another size is resized like the folder reader does; colour is turned to grey.
    big = np.repeat(np.repeat(np.repeat(pixels[..., None], 3, axis=2), 4, axis=0), 4, axis=1)
    assert encoder.embed(big).shape == (1, 64)
    with pytest.raises(SelfsupError, match="uint8"):
        encoder.embed(pixels.astype(np.float32))
    with pytest.raises(SelfsupError, match="no such image file"):
        encoder.embed("a red car")
    with pytest.raises(SelfsupError, match="image run.*cannot embed a text query"):
        encoder.embed_query("a red car", "text")


def test_row_reader_keeps_resident_memory_flat(tmp_path):
    """Reading a memmapped cache through RowReader must not map it in; slicing the map does."""
    rows, row_shape = 4096, (64, 64, 4)  # 64 MiB
    path = tmp_path / "images.u8"
    with open(path, "wb") as handle:
        handle.truncate(rows * int(np.prod(row_shape)))
    array = np.memmap(path, dtype=np.uint8, mode="r", shape=(rows, *row_shape))
    proc = psutil.Process()

    reader = RowReader(array)
    before = proc.memory_info().rss
    total = 0
    for a in range(0, rows, 128):
        total += int(reader.read(a, a + 128)[:, 0, 0, 0].sum())
    grown_reader = proc.memory_info().rss - before
    reader.close()

    before = proc.memory_info().rss
    for a in range(0, rows, 128):
        total += int(np.array(array[a : a + 128])[:, 0, 0, 0].sum())
    grown_slices = proc.memory_info().rss - before
    assert total == 0
    assert grown_reader < 16 * 2**20, grown_reader
    assert grown_slices > 32 * 2**20, grown_slices  # the control: the effect is real here


def test_cli_embed(monkeypatch, capsys, tmp_path, grey_run):
    out = tmp_path / "emb.parquet"
    monkeypatch.setattr(sys, "argv", ["selfsup", "embed", str(grey_run), "--data", "digits",
                                      "--out", str(out), "--no-progress", "--batch-size", "64"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0, capsys.readouterr().err
    assert read(out).num_rows == 1797
    assert "1797 rows x 64 dims" in capsys.readouterr().out
