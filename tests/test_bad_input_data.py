"""Bad input to the data readers, embed/index/search, generate and export (issue 28).

Each case ends in one ``error: ...`` line naming the file (row, index) and exit code 2, or in a
bounded, documented behaviour; never a traceback, a hang or a half-written output.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli

from selfsup.errors import SelfsupError

LONG_TEXT = " ".join(["the cat sat on the mat and the dog ran"] * 500)  # 5,000 words



def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit code 2 and a single ``error: ...`` line holding every needle."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    """A tiny GPT run trained for 2 steps on a small corpus."""
    import selfsup.api as api

    root = tmp_path_factory.mktemp("gpt")
    corpus = root / "corpus.txt"
    words = np.random.default_rng(0).choice(["the", "cat", "sat", "on", "a", "mat"], 2000)
    corpus.write_text(" ".join(words) + "\n", encoding="utf-8")
    return api.pretrain(
        "gpt", str(corpus), out=str(root / "run"), steps=2, batch_size=4, encoder="gpt_tiny",
        progress=False, cache_dir=str(root / "cache"), data_options={"block_size": 32},
    )


# ------------------------------------------------------- (4) exported tokenizers' max length


def _long_text_through_auto_classes(folder: Path, model_class: str = "AutoModel") -> int:
    """Tokenize LONG_TEXT with truncation and run the model on it; the sequence length."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = getattr(transformers, model_class).from_pretrained(folder).eval()
    batch = tokenizer(LONG_TEXT, truncation=True, return_tensors="pt")
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return int(batch["input_ids"].shape[1])


def test_saved_hf_folder_tokenizer_truncates_to_the_models_positions(tmp_path):
    from selfsup.models.hf_text import (
        HFTextEncoder,
        save_hf_folder,
        small_bert_config,
        wordpiece_tokenizer,
    )

    tokenizer = wordpiece_tokenizer([LONG_TEXT] * 4, vocab_size=60)
    torch.manual_seed(0)
    config = small_bert_config(tokenizer.get_vocab_size(), dim=32, layers=1, heads=2,
                               max_length=24)
    save_hf_folder(HFTextEncoder(config).model, tokenizer, tmp_path / "hf")
    saved = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 24
    assert _long_text_through_auto_classes(tmp_path / "hf") == 24


def test_max_positions_leaves_out_robertas_padding_offset():
    from transformers import RobertaConfig, T5Config

    from selfsup.models.hf_text import max_positions

    assert max_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert max_positions(T5Config()) == 512


def test_exported_gpt_tokenizer_truncates_to_the_block_size(gpt_run, tmp_path):
    from selfsup.export import export_hf

    out = export_hf(gpt_run.path, tmp_path / "hf")
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 32
    assert _long_text_through_auto_classes(out) == 32
    assert _long_text_through_auto_classes(out, "AutoModelForCausalLM") == 32


# ------------------------------------------------------------- (15) index, generate, export


def _parquet(path: Path, vectors: list[list[float]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"embedding": pa.array(vectors, pa.list_(pa.float32()))}), path)
    return path


@pytest.mark.parametrize("row", [1, 3])
def test_index_refuses_a_ragged_vector_naming_its_row(monkeypatch, capsys, tmp_path, row):
    vectors = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 1.0]]
    vectors[row] = [1.0, 2.0, 3.0]
    bad = _parquet(tmp_path / "bad.parquet", vectors)
    code, _, err = run_cli(monkeypatch, capsys, "index", str(bad), "--out", str(tmp_path / "i"))
    assert_one_line_error(code, err, str(bad), f"row {row} has a 3-dim embedding")
    assert not (tmp_path / "i").exists()


def test_index_refuses_empty_vectors(monkeypatch, capsys, tmp_path):
    bad = _parquet(tmp_path / "empty.parquet", [[], [], []])
    code, _, err = run_cli(monkeypatch, capsys, "index", str(bad), "--out", str(tmp_path / "i"))
    assert_one_line_error(code, err, str(bad), "row 0 has an empty embedding")


@pytest.mark.parametrize("temperature", ["nan", "inf", "-1"])
def test_generate_refuses_a_non_finite_temperature(monkeypatch, capsys, gpt_run, temperature):
    code, out, err = run_cli(monkeypatch, capsys, "generate", str(gpt_run.path), "--prompt",
                             "the", "--max-new-tokens", "3", "--temperature", temperature)
    assert_one_line_error(code, err, "--temperature must be a finite number")
    assert out == ""  # refused before the prompt is echoed


def test_export_refuses_an_out_that_is_a_file(monkeypatch, capsys, gpt_run, tmp_path):
    afile = tmp_path / "model.txt"
    afile.write_text("mine")
    for out, what in ((afile, "is a file"), (afile / "hf", "lies inside")):
        code, _, err = run_cli(monkeypatch, capsys, "export", str(gpt_run.path),
                               "--out", str(out))
        assert_one_line_error(code, err, str(out), what)
    assert afile.read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["model.txt"]  # no staging folder left


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tiny masked-LM run (an hf_text encoder, which embeds text queries)."""
    import selfsup.api as api

    root = tmp_path_factory.mktemp("mlm")
    rng = np.random.default_rng(0)
    words = ["the", "film", "was", "a", "wonderful", "surprise", "and", "scene"]
    with open(root / "c.jsonl", "w", encoding="utf-8") as handle:
        for _ in range(40):
            handle.write(json.dumps({"text": " ".join(rng.choice(words, 12))}) + "\n")
    return api.pretrain(
        "mlm", str(root / "c.jsonl"), out=str(root / "run"), steps=1, batch_size=4,
        precision="32", progress=False, cache_dir=str(root / "cache"),
        method_options={"dim": 32, "layers": 1, "heads": 2},
        data_options={"block_size": 16, "vocab_size": 60},
    )


@pytest.mark.parametrize("query", ["", "   \t"])
def test_search_refuses_an_empty_or_blank_query(monkeypatch, capsys, text_run, tmp_path, query):
    from selfsup.index import build_index

    vectors = np.random.default_rng(0).normal(size=(20, 32)).tolist()
    build_index(_parquet(tmp_path / "e.parquet", vectors), tmp_path / "index")
    code, _, _ = run_cli(monkeypatch, capsys, "search", str(text_run.path), "film",
                         "--index", str(tmp_path / "index"))
    assert code == 0  # the set-up answers a real query
    code, _, err = run_cli(monkeypatch, capsys, "search", str(text_run.path), query,
                           "--index", str(tmp_path / "index"))
    assert_one_line_error(code, err, "empty or blank")


# ------------------------------------------------------ (8) class names in the embeddings file


def _image_run(path: Path) -> Path:
    """An exported (untrained) RGB encoder in a run folder: all `embed` needs, in a second."""
    from selfsup.models import build_encoder
    from selfsup.run import RunDir, save_encoder

    torch.manual_seed(0)
    options = {"in_channels": 3, "width": 8}
    run = RunDir(path)
    run.path.mkdir(parents=True)
    spec = {"image_size": 8, "channels": 3, "name": "resnet_small", "options": options,
            "method": "simclr", "modality": "image"}
    save_encoder(run, build_encoder("resnet_small", **options), spec)
    return run.path


def _image_tree(root: Path, classes=("cat", "dog"), per_class: int = 3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_embeddings_of_a_class_folder_tree_carry_the_class_names(
    monkeypatch, capsys, tmp_path
):
    import pyarrow.parquet as pq

    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    root = _image_tree(tmp_path / "photos")
    run = _image_run(tmp_path / "run")
    out = tmp_path / "e.parquet"
    code, _, err = run_cli(monkeypatch, capsys, "embed", str(run), "--data", str(root),
                           "--out", str(out), "--no-progress")
    assert code == 0, err
    table = pq.read_table(out)
    assert table.column("label_name").to_pylist() == ["cat"] * 3 + ["dog"] * 3
    assert json.loads(table.schema.metadata[b"class_names"]) == ["cat", "dog"]
    # End to end: the index keeps the names and `search` prints them.
    code, _, err = run_cli(monkeypatch, capsys, "index", str(out), "--out", str(tmp_path / "i"))
    assert code == 0, err
    code, printed, err = run_cli(monkeypatch, capsys, "search", str(run), "--image",
                                 str(root / "dog" / "1.png"), "--index", str(tmp_path / "i"),
                                 "--k", "6", "--json")
    assert code == 0, err
    hits = json.loads(printed)["hits"]
    assert {hit["id"].split("/")[0] == hit["label_name"] for hit in hits} == {True}


def test_index_takes_label_names_from_a_parquet_file_written_elsewhere(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from selfsup.index import SearchIndex, build_index

    vectors = np.eye(4, dtype=np.float32)
    table = pa.table({"id": ["a", "b", "c", "d"], "label": [0, 1, 0, 1],
                      "label_name": ["red", "blue", "red", None],
                      "embedding": pa.array(vectors.tolist(), pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "mine.parquet")
    build_index(tmp_path / "mine.parquet", tmp_path / "i")
    hits = SearchIndex.open(tmp_path / "i").hits(vectors, k=1)
    assert [h[0].get("label_name") for h in hits] == ["red", "blue", "red", None]
    assert [h[0]["label"] for h in hits] == [0, 1, 0, 1]


def test_resume_redoes_parts_written_without_label_names(monkeypatch, tmp_path):
    """Parts of an older selfsup lack ``label_name``: redone, never cast into a broken file."""
    import pyarrow.parquet as pq

    import selfsup.embed as embed_mod

    root = _image_tree(tmp_path / "photos")
    run = _image_run(tmp_path / "run")
    out = tmp_path / "e.parquet"
    real_write = embed_mod._write_part

    def old_parts_then_crash(path: Path, table) -> None:
        if path.name != "part-000000.parquet":
            raise KeyboardInterrupt
        real_write(path, table.drop_columns(["label_name"]))

    monkeypatch.setattr(embed_mod, "_write_part", old_parts_then_crash)
    options = {"progress": False, "cache_dir": str(tmp_path / "cache"), "rows_per_part": 3}
    with pytest.raises(KeyboardInterrupt):
        embed_mod.embed(run, str(root), out, **options)
    monkeypatch.setattr(embed_mod, "_write_part", real_write)
    result = embed_mod.embed(run, str(root), out, resume=True, **options)
    assert result["resumed_rows"] == 0 and result["embedded_now"] == 6
    assert pq.read_table(out).column("label_name").to_pylist() == ["cat"] * 3 + ["dog"] * 3


# --------------------------------------- (10) image folders: only regular files, disk full


def _special_file(path: Path, kind: str) -> None:
    import os

    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        path.symlink_to(path.parent / "gone.png")


class Blocked(BaseException):
    """Raised by the alarm; a BaseException, so no reader's ``except Exception`` swallows it."""


@pytest.fixture()
def alarm():
    """Fail a test that blocks (a FIFO opened for reading waits for a writer) within 30 s."""
    import signal

    def blocked(*_):
        raise Blocked("the reader blocked (opened a FIFO or read a device)")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(("kind", "reason"), [
    ("fifo", "a FIFO (named pipe), not a regular file"),
    ("device", "a character device, not a regular file"),
    ("dangling", "a dangling symlink"),
])
def test_image_folder_reads_only_regular_files(monkeypatch, capsys, caplog, tmp_path, alarm,
                                               kind, reason):
    import pyarrow.parquet as pq

    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    root = _image_tree(tmp_path / "photos")
    _special_file(root / "cat" / "x.jpg", kind)
    run = _image_run(tmp_path / "run")
    out = tmp_path / "e.parquet"
    args = ("embed", str(run), "--data", str(root), "--out", str(out), "--no-progress")
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, str(root / "cat" / "x.jpg"), reason, "--skip-bad")
    assert not out.exists()
    code, _, err = run_cli(monkeypatch, capsys, *args, "--skip-bad")
    assert code == 0, err
    assert "skipped 1 unreadable image files" in caplog.text and "x.jpg" in caplog.text
    assert pq.read_table(out).column("id").to_pylist() == [
        f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]


def test_open_regular_never_blocks_on_a_fifo(tmp_path, alarm):
    import os

    from selfsup.data.images import NotRegularFile, open_regular

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(NotRegularFile, match="FIFO"):
        open_regular(tmp_path / "pipe.png")
    (tmp_path / "real.png").write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    with open_regular(tmp_path / "link.png") as handle:  # a link to a regular file is fine
        assert handle.read() == b"x"


@pytest.mark.parametrize("cache_existed", [False, True])
def test_decode_cache_out_of_disk_leaves_nothing_behind(monkeypatch, capsys, tmp_path,
                                                        cache_existed):
    import errno

    import selfsup.data.images as images

    cache = tmp_path / "cache" / "nested"
    if cache_existed:
        (cache / "another-runs-cache").mkdir(parents=True)
    monkeypatch.setenv("SELFSUP_CACHE", str(cache))
    root = _image_tree(tmp_path / "photos")
    run = _image_run(tmp_path / "run")

    def disk_full(path, meta):
        Path(path).write_text("{")  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(images, "_write_meta", disk_full)
    code, _, err = run_cli(monkeypatch, capsys, "embed", str(run), "--data", str(root),
                           "--out", str(tmp_path / "e.parquet"), "--no-progress")
    assert_one_line_error(code, err, str(cache), "no space left")
    if cache_existed:
        assert [p.name for p in cache.iterdir()] == ["another-runs-cache"]
    else:
        assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "e.parquet").exists()


def test_pairs_table_naming_a_fifo_is_a_bad_row_not_a_hang(tmp_path, alarm):
    import os

    from selfsup.data.pairs import load_pairs

    root = _image_tree(tmp_path / "photos", classes=("cat",))
    os.mkfifo(root / "cat" / "pipe.png")
    table = root / "captions.csv"
    table.write_text("image,caption\ncat/0.png,a cat\ncat/pipe.png,a pipe\n", encoding="utf-8")
    with pytest.raises(SelfsupError, match=r"line 3: image .*pipe.png.*a FIFO \(named pipe\)"):
        load_pairs(root, cache_dir=tmp_path / "cache")


# ------------------------------------------- (10) a huge single-line corpus: bounded validation


def _tiny_gpt(vocab: int = 11, block: int = 16):
    from selfsup.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, d_model=16))


def test_validation_loss_scores_at_most_max_tokens_in_evenly_spaced_windows():
    import torch.nn.functional as F

    from selfsup.evaluate.language import validation_loss

    model = _tiny_gpt()
    tokens = np.random.default_rng(0).integers(0, 11, size=1601)  # 1600 targets, 100 windows
    whole = validation_loss(model, tokens, block_size=16, precision="32", max_tokens=0)
    assert whole["tokens"] == 1600 and not whole["sampled"]
    assert validation_loss(model, tokens, block_size=16, precision="32",
                           max_tokens=1600)["loss"] == pytest.approx(whole["loss"])
    capped = validation_loss(model, tokens, block_size=16, precision="32", max_tokens=160,
                             unit_lengths=np.full(11, 2), unit="byte")
    assert capped["sampled"] and capped["tokens"] == 160 and capped["split_tokens"] == 1600
    assert capped["bytes"] == 320
    # The ten windows are spread over the whole split, first to last.
    total = 0.0
    with torch.no_grad():
        for start in np.linspace(0, 99, 10).round().astype(int) * 16:
            window = torch.from_numpy(tokens[start : start + 17])
            logits = model.logits(window[None, :-1])[0]
            total += F.cross_entropy(logits, window[1:], reduction="sum").item()
    assert capped["loss"] == pytest.approx(total / 160, rel=1e-5)


def test_pretrain_gpt_bounds_the_validation_tokens_it_scores(monkeypatch, capsys, caplog,
                                                             tmp_path):
    """A corpus of one huge line must not spend many minutes on the whole-split loss."""
    import selfsup.evaluate.language as language

    caplog.set_level(logging.INFO, logger="selfsup")
    # stands in for 2**18 on 50 MB (raising=False: without the bound the test fails below)
    monkeypatch.setattr(language, "MAX_EVAL_TOKENS", 256, raising=False)
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "one_line.txt"
    words = np.random.default_rng(0).choice(["the", "cat", "sat", "on", "a", "mat"], 3000)
    corpus.write_text(" ".join(words), encoding="utf-8")  # no line end at all
    common = ("--data", str(corpus), "--steps", "1", "--encoder", "gpt_tiny", "--block-size",
              "32", "--no-progress")
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "gpt", *common,
                           "--out", str(tmp_path / "run"))
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "language.json").read_text())
    assert result["tokens"] == 256 and result["sampled"]
    assert result["split_tokens"] > 1000 and result["characters"] == 256
    assert "256 of the split's" in caplog.text and "eval_token_limit=0" in caplog.text
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "gpt", *common,
                           "--out", str(tmp_path / "all"), "--method-option",
                           "eval_token_limit=0")
    assert code == 0, err
    everything = json.loads((tmp_path / "all" / "language.json").read_text())
    assert everything["tokens"] == result["split_tokens"] and not everything["sampled"]


# ------------------------------------------------------ (10) a too-short series names the file


@pytest.mark.parametrize("method", ["ts-mask", "ts-contrast"])
def test_a_length_one_series_is_an_error_naming_the_file_and_series(monkeypatch, capsys,
                                                                    tmp_path, method):
    values = np.random.default_rng(0).normal(size=(12, 40)).astype(np.float32)
    values[3, 1:] = np.nan  # series 3 has one step
    data = tmp_path / "short.npz"
    np.savez(data, X=values)
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", method, "--data", str(data),
                           "--steps", "1", "--out", str(tmp_path / "run"), "--no-progress")
    assert_one_line_error(code, err, f"{data}: series 3 has 1 steps")
    assert not (tmp_path / "run").exists()
