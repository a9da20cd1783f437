"""Text readers, tokenizers and token shards: round trips, windows, and bad input (exit 2)."""

from __future__ import annotations

import gzip
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from selfsup.cli import main
from selfsup.data.text import TextSource, iter_documents, read_text
from selfsup.data.tokens import (
    EOS,
    CharEncoder,
    TextOptions,
    TokenData,
    build_shards,
    encode,
    load_text,
    split_point,
)
from selfsup.errors import SelfsupError

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
UNICODE = "naïve café — 日本語 🙂\nzwölf Äpfel\n"


def test_char_tokenizer_round_trip_and_fast_path(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(CORPUS * 20 + UNICODE, encoding="utf-8")
    shards = build_shards(str(path), TextOptions(block_size=8), tmp_path / "cache")
    tokenizer = shards.tokenizer()
    text = path.read_text(encoding="utf-8")
    ids = encode(tokenizer, text)
    assert tokenizer.decode(ids) == text
    assert len(ids) == len(text)  # one token per character
    assert np.array_equal(CharEncoder(tokenizer)(text), np.array(ids))  # the fast path agrees
    assert np.array_equal(shards.tokens(), np.array(ids))  # a single .txt has no separators
    assert shards.meta["vocab_size"] == len(set(text)) + 1  # + EOS
    with pytest.raises(SelfsupError, match="not in the vocabulary"):
        encode(tokenizer, "Q§")


def test_bpe_tokenizer_round_trip(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text((CORPUS + UNICODE) * 30, encoding="utf-8")
    shards = build_shards(str(path), TextOptions(tokenizer="bpe", vocab_size=300), tmp_path / "c")
    tokenizer = shards.tokenizer()
    assert tokenizer.get_vocab_size() == 300
    text = "Speak, speak! Ünseen 🙂 bytes\n"  # unseen characters still encode (byte fallback)
    assert tokenizer.decode(encode(tokenizer, text)) == text
    assert len(shards.tokens()) < len(path.read_text(encoding="utf-8"))  # merges compress


def test_shards_are_cached_and_keyed_by_options(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(CORPUS * 5, encoding="utf-8")
    first = build_shards(str(path), TextOptions(), tmp_path / "cache")
    again = build_shards(str(path), TextOptions(), tmp_path / "cache")
    bpe = TextOptions(tokenizer="bpe", vocab_size=260)
    other = build_shards(str(path), bpe, tmp_path / "cache")
    assert first.folder == again.folder != other.folder


def test_readers_folder_jsonl_parquet(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.md").write_text("bee", encoding="utf-8")
    (folder / "sub" / "a.txt").write_text("ay", encoding="utf-8")
    (folder / ".hidden.txt").write_text("no", encoding="utf-8")
    (folder / "skip.csv").write_text("no", encoding="utf-8")
    assert [p.text for p in iter_documents(TextSource(str(folder)))] == ["bee", "ay"]

    jsonl = tmp_path / "d.jsonl.gz"
    with gzip.open(jsonl, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"body": "one"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    assert read_text(TextSource(str(jsonl), text_field="body"), "|") == "one|two"

    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"t": ["x", "yz"], "n": [1, 2]}), parquet)
    assert read_text(TextSource(str(parquet), text_column="t"), "|") == "x|yz"

    # Documents of a multi-document corpus are separated by EOS (none after the last).
    shards = build_shards(str(jsonl), TextOptions(text_field="body"), tmp_path / "cache")
    tokenizer = shards.tokenizer()
    assert tokenizer.decode(shards.tokens().tolist(), skip_special_tokens=False) == (
        f"one{EOS}two"
    )


def test_large_file_streams_in_pieces(tmp_path, monkeypatch):
    import selfsup.data.text as text

    monkeypatch.setattr(text, "PIECE_CHARS", 64)
    monkeypatch.setattr(text, "_READ_BYTES", 7)  # cuts inside multi-byte characters too
    path = tmp_path / "big.txt"
    content = (CORPUS + UNICODE) * 10
    path.write_text(content, encoding="utf-8")
    pieces = list(iter_documents(TextSource(str(path))))
    assert len(pieces) > 5 and [p.last for p in pieces].count(True) == 1
    assert "".join(p.text for p in pieces) == content


def test_invalid_utf8_names_file_and_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes("héllo".encode() + b"\xff tail")
    with pytest.raises(SelfsupError, match=r"bad.txt: invalid UTF-8 at byte offset 6"):
        list(iter_documents(TextSource(str(path))))
    text = read_text(TextSource(str(path), encoding_errors="replace"))
    assert text == "héllo\ufffd tail"
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "\xc3("}\n')
    with pytest.raises(SelfsupError, match=r"bad.jsonl line 2: invalid UTF-8 at byte offset 25"):
        list(iter_documents(TextSource(str(jsonl))))


def make_data(tmp_path, n=1000, block=16, **options) -> TokenData:
    path = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    path.write_text("".join(rng.choice(list("abcdefgh \n"), size=n)), encoding="utf-8")
    return load_text(str(path), {"block_size": block, **options},
                     type("C", (), {"cache_dir": str(tmp_path / "cache")})())


def test_windows_never_cross_the_split_and_follow_the_seed(tmp_path):
    data = make_data(tmp_path, n=1000, block=16)
    assert (data.train_end, data.val_end) == (900, 1000)  # nanoGPT: first 90% trains
    dataset = data.batch_dataset(with_labels=False)
    starts = np.array([dataset.start(i) for i in range(len(dataset))])
    assert starts.min() == 0 and starts.max() + 16 + 1 == 900  # the last window ends at the split
    batch = dataset.__getitems__(list(range(len(dataset))))["tokens"]
    assert batch.shape == (len(dataset), 17) and batch.dtype == torch.int64
    tokens = np.asarray(data.tokens)
    assert np.array_equal(batch[-1].numpy(), tokens[900 - 17 : 900])
    # Same seed, same windows through the engine's loader.
    from selfsup.data.datasets import ResumableLoader, keep_batch

    def first_batch(seed):
        loader = ResumableLoader(dataset, batch_size=4, seed=seed, collate_fn=keep_batch)
        return next(iter(loader))["tokens"]

    assert np.array_equal(first_batch(3), first_batch(3))
    assert not np.array_equal(first_batch(3), first_batch(4))


def test_stride_caps_the_windows_of_a_large_corpus(tmp_path, monkeypatch):
    import selfsup.data.tokens as tokens

    monkeypatch.setattr(tokens, "MAX_WINDOWS", 50)
    data = make_data(tmp_path, n=2000, block=16)
    dataset = data.batch_dataset(False)
    assert len(dataset) <= 50 and dataset.stride > 1
    assert dataset.start(len(dataset) - 1) + 17 <= data.train_end


def test_tuning_split_never_reads_the_reported_validation(tmp_path):
    data = make_data(tmp_path, n=1000, block=16, tuning=True)
    assert split_point(1000, data.options) == (810, 900)
    assert data.val_end == 900  # tokens 900..999 (the reported split) are never read


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["selfsup", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "flags", "message"),
    [
        (b"", [], "the corpus is empty"),
        (b"short text", [], "fewer than one context window"),
        (b"ok \xfe\xff", [], "invalid UTF-8 at byte offset 3"),
        (b"abcdefghij" * 100, ["--vocab-size", "5"], "too small for a character-level"),
        (b"abcdefghij" * 100, ["--tokenizer", "bpe", "--vocab-size", "100"], "too small for byte"),
        (b"abc", ["--tokenizer", "words"], "tokenizer must be one of"),
    ],
)
def test_bad_text_input_exits_2(tmp_path, monkeypatch, capsys, content, flags, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    code, err = run_cli(monkeypatch, capsys, "pretrain", "gpt", "--data", str(path), "--out",
                        str(tmp_path / "run"), "--steps", "1", "--batch-size", "2",
                        "--block-size", "64", *flags)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_jsonl_missing_field_names_the_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "a"}\n{"body": "b"}\n', encoding="utf-8")
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    code, err = run_cli(monkeypatch, capsys, "pretrain", "gpt", "--data", str(path), "--out",
                        str(tmp_path / "run"), "--steps", "1")
    assert code == 2
    assert "docs.jsonl line 2: no field 'text' (keys: body)" in err
