"""`selfsup prepare`: shards hold exactly the reader's samples, split and resumed exactly.

The reference is always the ordinary reader of the same source (the folder cache, digits or
the series .npz): pixels, labels and series must come back bit for bit, every sample once per
epoch, the two ranks of a world of 2 disjoint and covering, and a resumed loader must hand out
exactly the rest of the epoch that an uninterrupted one would.
"""

import json
import sys

import numpy as np
import pytest
from PIL import Image

import selfsup
from selfsup import distributed
from selfsup.cli import main
from selfsup.config import build_config
from selfsup.data.base import load_data
from selfsup.data.datasets import ResumableLoader, keep_batch
from selfsup.data.images import load_images
from selfsup.data.prepare import prepare
from selfsup.data.shards import MANIFEST, ShardArray, is_prepared
from selfsup.errors import SelfsupError

SHARD = 40_000  # bytes: digits (1797 x 64 B) spread over several shards


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("p") / "digits"
    prepare("digits", out, shard_bytes=SHARD, progress=False)
    return out


def _folder(root, n=24):
    """A labelled folder of n small PNGs in 3 classes, with distinct pixels."""
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = root / f"class{i % 3}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(cls / f"{i}.png")
    return root


def _images_of(loader):
    """Every batch's images as rows (bytes) and labels, in order."""
    rows, labels = [], []
    for batch in loader:
        rows += [x.numpy().tobytes() for x in batch["images"]]
        labels += batch["labels"].tolist()
    return rows, labels


def test_folder_shards_equal_the_folder_reader(tmp_path):
    src = _folder(tmp_path / "imgs")
    manifest = prepare(str(src), tmp_path / "s", shard_bytes=500, progress=False,
                       cache_dir=str(tmp_path / "cache"))
    ref = load_images(src, cache_dir=tmp_path / "cache", progress=False)
    got = load_images(tmp_path / "s")
    assert isinstance(got.images, ShardArray) and len(manifest["shards"]) > 1
    assert got.images.shape == ref.images.shape and got.images.dtype == np.uint8
    assert np.array_equal(np.asarray(got.images[np.arange(len(ref))]), ref.images)
    assert np.array_equal(got.labels, ref.labels) and got.class_names == ref.class_names
    assert manifest["count"] == 24 and manifest["labels"] and manifest["modality"] == "image"
    assert manifest["sample"] == {"key": "npy", "shape": [6, 5, 3], "dtype": "uint8"}
    assert len(manifest["source_fingerprint"]) == 64
    # the manifest path itself is accepted too, and the encoder sees the same statistics
    assert is_prepared(tmp_path / "s" / MANIFEST)
    assert got.encoder_inputs() == ref.encoder_inputs()


def test_every_sample_once_per_epoch_with_the_readers_pixels(digit_shards):
    ref = load_images("digits")
    data = load_data("image", str(digit_shards), build_config({}))
    loader = ResumableLoader(data.batch_dataset(with_labels=True), batch_size=100, seed=3,
                             collate_fn=keep_batch)
    rows, labels = _images_of(loader)
    expected = [x.tobytes() for x in ref.images]
    assert sorted(rows) == sorted(expected)  # every image exactly once (digits repeat: multiset)
    lookup = {}
    for x, y in zip(expected, ref.labels.tolist(), strict=True):
        lookup.setdefault(x, set()).add(y)
    assert all(y in lookup[x] for x, y in zip(rows, labels, strict=True))
    # and in the same order as the in-memory reader under the same seed
    ref_loader = ResumableLoader(ref.batch_dataset(with_labels=True), batch_size=100, seed=3,
                                 collate_fn=keep_batch)
    assert _images_of(ref_loader) == (rows, labels)


def test_two_ranks_see_disjoint_halves_covering_the_epoch(digit_shards, monkeypatch):
    data = load_images(digit_shards)
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
        loader = ResumableLoader(_Indexed(data), batch_size=64, seed=0, replicas=2,
                                 drop_last=True, collate_fn=keep_batch)
        seen.append([i for batch in loader for i in batch["index"].tolist()])
    usable = len(data) // 128 * 128  # whole global batches (drop_last)
    assert len(seen[0]) == len(seen[1]) == usable // 2
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == usable


class _Indexed:
    """The shard dataset's batches plus the sample indices, to check splitting by identity."""

    def __init__(self, data):
        self.inner = data.batch_dataset(with_labels=False)

    def __len__(self):
        return len(self.inner)

    def __getitems__(self, positions):
        import torch

        return {**self.inner.__getitems__(positions), "index": torch.tensor(positions)}


def test_resume_mid_epoch_gives_exactly_the_remaining_samples(digit_shards):
    data = load_images(digit_shards)
    whole = ResumableLoader(_Indexed(data), batch_size=50, seed=1, collate_fn=keep_batch)
    order = [i for batch in whole for i in batch["index"].tolist()]
    first = ResumableLoader(_Indexed(data), batch_size=50, seed=1, collate_fn=keep_batch)
    done = []
    for k, batch in enumerate(first):
        done += batch["index"].tolist()
        if k == 6:
            break
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would keep it
    resumed = ResumableLoader(_Indexed(data), batch_size=50, seed=1, collate_fn=keep_batch)
    resumed.load_state_dict(state)
    rest = [i for batch in resumed for i in batch["index"].tolist()]
    assert done + rest == order and sorted(order) == list(range(len(data)))


def test_series_shards_equal_the_series_reader(tmp_path):
    from selfsup.data.series import load_series

    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 2, 12)).astype(np.float32)
    x[3, :, 8:] = np.nan  # a shorter series: NaN padding after its length
    np.savez(tmp_path / "s.npz", X=x, y=np.arange(10) % 2)
    prepare(str(tmp_path / "s.npz"), tmp_path / "sh", shard_bytes=300, progress=False)
    ref, got = load_series(tmp_path / "s.npz"), load_series(tmp_path / "sh")
    assert np.array_equal(got.lengths, ref.lengths) and np.array_equal(got.labels, ref.labels)
    rows = [7, 3, 0]
    a = got.batch_dataset(True).__getitems__(rows)
    b = ref.batch_dataset(True).__getitems__(rows)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key].numpy(), b[key].numpy(), equal_nan=True), key
    assert np.array_equal(got.inputs(np.array(rows)).numpy(), ref.inputs(np.array(rows)).numpy(),
                          equal_nan=True)


def test_pretrain_runs_from_shards(digit_shards, tmp_path):
    run = selfsup.pretrain(
        "simclr", str(digit_shards), out=str(tmp_path / "run"), steps=2, batch_size=32,
        encoder="resnet_small", encoder_options={"width": 8}, precision="32", progress=False,
        monitor_size=0, log_every_steps=1,
    )
    summary = json.loads(run.summary.read_text())
    assert summary["steps"] == 2 and summary["num_samples"] == 1797


def test_repeat_writes_the_data_k_times(tmp_path):
    prepare("digits", tmp_path / "r", repeat=3, shard_bytes=SHARD, progress=False)
    data, ref = load_images(tmp_path / "r"), load_images("digits")
    assert len(data) == 3 * len(ref)
    rows = np.array([5, 1797 + 5, 2 * 1797 + 5, 3 * 1797 - 1])
    assert np.array_equal(data.images[rows], ref.images[[5, 5, 5, 1796]])
    assert np.array_equal(data.labels, np.tile(ref.labels, 3))


def test_the_shards_are_webdataset_shards(digit_shards):
    wds = pytest.importorskip("webdataset")
    ref = load_images("digits")
    manifest = json.loads((digit_shards / MANIFEST).read_text())
    urls = [str(digit_shards / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == len(ref)
    for s in samples[::97]:
        i = int(s["__key__"])
        assert np.array_equal(s["npy"], ref.images[i]) and s["cls"] == ref.labels[i]


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["selfsup", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


def test_bad_inputs_exit_2_and_never_touch_unrelated_files(monkeypatch, capsys, tmp_path):
    out = str(tmp_path / "out")
    code, err = run_cli(monkeypatch, capsys, "prepare", str(tmp_path / "nope"), "--out", out)
    assert code == 2 and "no such file" in err
    (tmp_path / "x.bin").write_bytes(b"1")
    code, err = run_cli(monkeypatch, capsys, "prepare", str(tmp_path / "x.bin"), "--out", out)
    assert code == 2 and "unknown input" in err
    (tmp_path / "c.txt").write_text("")
    code, err = run_cli(monkeypatch, capsys, "prepare", str(tmp_path / "c.txt"), "--out", out)
    assert code == 2 and "the corpus is empty" in err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, err = run_cli(monkeypatch, capsys, "prepare", "digits", "--out", str(mine))
    assert code == 2 and "not a selfsup prepare output" in err
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_an_interrupted_prepare_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from selfsup.data import shards

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "_write_json", killed)  # dies after the shards, before manifest
    with pytest.raises(KeyboardInterrupt):
        prepare("digits", tmp_path / "out", shard_bytes=SHARD, progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    prepare("digits", tmp_path / "out", shard_bytes=SHARD, progress=False)
    prepare("digits", tmp_path / "out", repeat=2, shard_bytes=SHARD, progress=False)  # replaces
    assert len(load_images(tmp_path / "out")) == 2 * 1797


def test_damaged_shards_are_a_clear_error(tmp_path):
    prepare("digits", tmp_path / "s", shard_bytes=SHARD, progress=False)
    with pytest.raises(SelfsupError, match="holds image shards"):
        load_data("series", str(tmp_path / "s"), build_config({}))
    with open(tmp_path / "s" / "shard-000001.tar", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(SelfsupError, match="shard-000001.tar: shard 1000 bytes"):
        load_images(tmp_path / "s")


# ------------------------------------------------------------------------------------ text ----

# Non-ASCII (2-, 3- and 4-byte UTF-8), blank lines, a byte-order mark, an empty document.
DOCS = {
    "a.txt": "First line\n\nthird line after a blank one\n",
    "b/c.md": "naïve café — 日本語 🙂\r\nzwölf Äpfel",
    "b/d.txt": "",
    "e.txt": "\ufeffwith a byte-order mark\n\n\n",
}


def _text_folder(root):
    for name, text in DOCS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text.encode("utf-8"))
    (root / "skip.bin").write_bytes(b"\xff")  # not text: the folder reader skips it
    return root


def _jsonl(path, texts, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n")  # a blank line: the jsonl reader skips it
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": i, field: text}) + "\n")
    return path


def _documents(path, **options):
    """Whole documents as data/text.py yields them (pieces joined), in order."""
    from selfsup.data.text import TextSource, iter_documents

    docs, parts = [], []
    for piece in iter_documents(TextSource(str(path), **options)):
        parts.append(piece.text)
        if piece.last:
            docs.append("".join(parts))
            parts = []
    return docs


def test_text_folder_shards_yield_exactly_the_readers_documents(tmp_path):
    from selfsup.data.text import TextShards, TextSource, fingerprint, iter_documents

    src = _text_folder(tmp_path / "corpus")
    manifest = prepare(str(src), tmp_path / "s", shard_bytes=600, progress=False)
    ref = _documents(src)
    assert ref[0] == DOCS["a.txt"] and ref[-1] == DOCS["e.txt"][1:]  # the reader drops the BOM
    assert _documents(tmp_path / "s") == ref
    assert _documents(tmp_path / "s" / MANIFEST) == ref  # the manifest path reads the same
    pieces = [(p.text, p.last) for p in iter_documents(TextSource(str(src)))]
    assert [(p.text, p.last) for p in iter_documents(TextSource(str(tmp_path / "s")))] == pieces
    assert manifest["modality"] == "text" and manifest["count"] == len(ref) == 4
    assert manifest["characters"] == sum(map(len, ref))
    assert manifest["bytes"] == sum(len(d.encode()) for d in ref)
    assert manifest["sample"]["key"] == "txt" and not manifest["labels"]
    shards = TextShards(tmp_path / "s")
    assert len(shards.names) > 1  # several shards, read across
    assert [shards.document(i) for i in (2, 0, -1, 1)] == [ref[2], ref[0], ref[3], ref[1]]
    assert np.array_equal(np.load(tmp_path / "s" / "lengths.npy"),
                          [len(d.encode()) for d in ref])
    # the token-cache key is the manifest's: stable across reads, new after a new prepare
    key = fingerprint(TextSource(str(tmp_path / "s")))
    assert key == fingerprint(TextSource(str(tmp_path / "s" / MANIFEST)))
    prepare(str(src), tmp_path / "s", shard_bytes=600, progress=False)
    assert fingerprint(TextSource(str(tmp_path / "s"))) != key


def test_text_shards_are_webdataset_txt_samples(tmp_path):
    wds = pytest.importorskip("webdataset")
    src = _text_folder(tmp_path / "corpus")
    manifest = prepare(str(src), tmp_path / "s", progress=False)
    urls = [str(tmp_path / "s" / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(4)]
    assert [s["txt"] for s in samples] == _documents(src)


def test_jsonl_shards_keep_the_text_field_and_repeat_doubles(tmp_path):
    texts = ["plain", "", "línea 1\n\nlínea 3", "emoji 🙂🙂", "tab\there"]
    src = _jsonl(tmp_path / "c.jsonl", texts, field="body")
    with pytest.raises(SelfsupError, match="no field 'text'"):
        prepare(str(src), tmp_path / "bad", progress=False)
    with pytest.raises(SelfsupError, match="unknown --data-option colour"):
        prepare(str(src), tmp_path / "bad", data_options={"colour": 1}, progress=False)
    one = prepare(str(src), tmp_path / "s1", data_options={"text_field": "body"}, progress=False)
    assert _documents(src, text_field="body") == texts  # the reference reader
    assert _documents(tmp_path / "s1") == texts
    assert one["text_options"]["text_field"] == "body"
    two = prepare(str(src), tmp_path / "s2", repeat=2, shard_bytes=100,
                  data_options={"text_field": "body"}, progress=False)
    assert _documents(tmp_path / "s2") == texts + texts
    assert two["count"] == 2 * one["count"] and two["bytes"] == 2 * one["bytes"]


def test_text_prepare_through_the_cli(tmp_path, monkeypatch, capsys):
    src = tmp_path / "c.jsonl"
    _jsonl(src, ["ein Satz", "zwei Sätze"], field="body")
    monkeypatch.setattr(sys, "argv", ["selfsup", "prepare", str(src), "--out",
                                      str(tmp_path / "s"), "--data-option", "text_field=body",
                                      "--no-progress"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code in (0, None)
    assert "2 documents (18 characters)" in capsys.readouterr().out
    assert _documents(tmp_path / "s") == ["ein Satz", "zwei Sätze"]


def test_empty_text_corpora_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    (tmp_path / "empty" / "b.txt").write_text("")
    with pytest.raises(SelfsupError, match="the corpus is empty"):
        prepare(str(tmp_path / "empty"), tmp_path / "s", progress=False)
    _jsonl(tmp_path / "e.jsonl", [])
    with pytest.raises(SelfsupError, match="the corpus is empty"):
        prepare(str(tmp_path / "e.jsonl"), tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_large_document_streams_in_the_readers_pieces(tmp_path, monkeypatch):
    """A document bigger than the piece size and the in-memory limit goes through the scratch
    file when written, and comes back in the same pieces (cut at line ends) as from the file."""
    from selfsup.data import text

    monkeypatch.setattr(text, "PIECE_CHARS", 64)
    monkeypatch.setattr(text, "_READ_BYTES", 50)
    monkeypatch.setattr(text, "_SPILL_BYTES", 100)
    lines = [f"ligne {i} é🙂 " + "x" * (i % 7) + "\n" for i in range(40)]
    (tmp_path / "big.txt").write_text("".join(lines), encoding="utf-8")
    prepare(str(tmp_path / "big.txt"), tmp_path / "s", progress=False)
    ref, got = ([(p.text, p.last) for p in text.iter_documents(text.TextSource(str(path)))]
                for path in (tmp_path / "big.txt", tmp_path / "s"))
    assert len(ref) > 5 and got == ref


def test_gpt_and_mlm_pretrain_from_text_shards(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "film", "was", "a", "wonderful", "surprise", "and", "drags", "naïve", "🙂"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(5, 30)))) for _ in range(60)]
    _jsonl(tmp_path / "c.jsonl", texts)
    prepare(str(tmp_path / "c.jsonl"), tmp_path / "s", progress=False)
    run = selfsup.pretrain(
        "gpt", str(tmp_path / "s"), out=str(tmp_path / "gpt"), steps=2, batch_size=4,
        encoder="gpt_tiny", precision="32", progress=False, cache_dir=str(tmp_path / "cache"),
        data_options={"block_size": 16},
    )
    assert json.loads(run.summary.read_text())["steps"] == 2
    # the same tokens as from the corpus itself (same documents, same EOS between them)
    from selfsup.data.tokens import TextOptions, build_shards

    a = build_shards(str(tmp_path / "c.jsonl"), TextOptions(), tmp_path / "c1")
    b = build_shards(str(tmp_path / "s"), TextOptions(), tmp_path / "c2")
    assert np.array_equal(a.tokens(), b.tokens())
    run = selfsup.pretrain(
        "mlm", str(tmp_path / "s"), out=str(tmp_path / "mlm"), steps=2, batch_size=4,
        precision="32", progress=False, cache_dir=str(tmp_path / "cache"),
        method_options={"dim": 32, "layers": 1, "heads": 2},
        data_options={"block_size": 32, "vocab_size": 150},
    )
    summary = json.loads(run.summary.read_text())
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])


def test_text_methods_refuse_other_shards_and_other_readers_refuse_text(digit_shards, tmp_path):
    with pytest.raises(SelfsupError, match="holds image shards but this method reads text"):
        selfsup.pretrain("gpt", str(digit_shards), out=str(tmp_path / "r"), steps=1,
                         progress=False, cache_dir=str(tmp_path / "cache"))
    from selfsup.data.text import TextSource, iter_documents

    with pytest.raises(SelfsupError, match="holds image shards, not text"):
        list(iter_documents(TextSource(str(digit_shards))))
    _jsonl(tmp_path / "c.jsonl", ["one", "two"])
    prepare(str(tmp_path / "c.jsonl"), tmp_path / "s", progress=False)
    with pytest.raises(SelfsupError, match="holds text shards"):
        load_images(tmp_path / "s")


def test_text_options_on_a_prepared_folder_are_refused_not_ignored(tmp_path):
    from selfsup.data.text import TextSource, iter_documents

    src = _text_folder(tmp_path / "corpus")
    prepare(str(src), tmp_path / "s", progress=False)
    for option in ({"text_field": "body"}, {"text_column": "body"},
                   {"encoding_errors": "replace"}):
        with pytest.raises(SelfsupError, match=f"{next(iter(option))}=.*prepare again"):
            next(iter_documents(TextSource(str(tmp_path / "s"), **option)))
    assert next(iter_documents(TextSource(str(tmp_path / "s")))).text  # defaults read it


def test_one_prepared_txt_file_gives_the_file_s_tokens(tmp_path):
    # a lone .txt is one document with no EOS; its prepared folder must not add one
    from selfsup.data.tokens import TextOptions, build_shards

    (tmp_path / "a.txt").write_text("hello world\nsecond line\n" * 50, encoding="utf-8")
    prepare(str(tmp_path / "a.txt"), tmp_path / "s", progress=False)
    a = build_shards(str(tmp_path / "a.txt"), TextOptions(), tmp_path / "c1")
    b = build_shards(str(tmp_path / "s"), TextOptions(), tmp_path / "c2")
    assert len(a.tokens()) == 1200 and np.array_equal(a.tokens(), b.tokens())
