"""Text downstream evaluation: labelled reader, sentence features, fine-tuning, `selfsup evaluate`
on an hf_text run and on a plain Hugging Face folder. Tiny random BERTs, fp32, seconds each."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.data.labelled_text import read_labelled_text
from selfsup.errors import SelfsupError
from selfsup.evaluate.text import (
    TextClassifier,
    TextModel,
    TextSplit,
    evaluate_text_model,
    finetune_text,
    is_text_target,
    load_text_model,
    parse_text_budgets,
    probe_head,
    text_features,
    text_finetune_config,
    tokenize_texts,
)
from selfsup.models.hf_text import (
    HFTextEncoder,
    save_hf_folder,
    small_bert_config,
    wordpiece_tokenizer,
)
from selfsup.run import RunDir, save_encoder

GOOD = ["good", "great", "fine", "lovely", "superb"]
BAD = ["bad", "awful", "poor", "dire", "dreadful"]
FILLER = ["the", "film", "was", "a", "plot", "actor", "scene", "movie", "it", "and", "story"]


def toy_texts(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Sentiment-like toy task: a class word among filler words; balanced labels."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 9))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(BAD if label else GOOD))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def write_jsonl(path: Path, texts: list[str], labels: list, text_key: str = "text",
                label_key: str = "label") -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for text, label in zip(texts, labels, strict=True):
            handle.write(json.dumps({text_key: text, label_key: label}) + "\n")
    return path


def tiny_text_model(extra_texts: list[str], dropout: float) -> TextModel:
    """A one-layer random BERT with a WordPiece vocabulary of the toy task (seed 0)."""
    texts, _ = toy_texts(200, 0)
    tokenizer = wordpiece_tokenizer(texts + extra_texts, vocab_size=120)
    config = small_bert_config(tokenizer.get_vocab_size(), dim=32, layers=1, heads=2,
                               max_length=32, dropout=dropout)
    torch.manual_seed(0)
    return TextModel(HFTextEncoder(config).eval(), tokenizer, "tiny")


def labelled_files(root: Path, num_train: int, num_test: int) -> tuple[Path, Path]:
    """train.jsonl and test.jsonl of the toy task, labels named pos/neg."""
    names = {0: "pos", 1: "neg"}
    texts, labels = toy_texts(num_train, 1)
    train = write_jsonl(root / "train.jsonl", texts, [names[y] for y in labels])
    texts, labels = toy_texts(num_test, 2)
    test = write_jsonl(root / "test.jsonl", texts, [names[y] for y in labels])
    return train, test


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP spin contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model() -> TextModel:
    return tiny_text_model(["x y z"], dropout=0.0)


@pytest.fixture(scope="module")
def hf_folder(tiny_model: TextModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "tiny-bert"
    save_hf_folder(tiny_model.encoder.model, tiny_model.tokenizer, folder)
    return folder


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return labelled_files(tmp_path_factory.mktemp("labelled"), 80, 40)


def make_run(root: Path, model: TextModel, init: Path | None) -> Path:
    """A run directory as an hf_text pre-training leaves it (encoder.json, hf/, config.yaml)."""
    run = RunDir(root)
    run.path.mkdir(parents=True)
    run.write_config({"method": "mlm", "encoder": "hf_text", "data": "corpus.jsonl",
                      "precision": "32", "init": str(init) if init else None})
    (run.path / "pretrain.json").write_text(json.dumps({"train_seconds": 3.0, "steps": 5}))
    save_encoder(run, model.encoder, {"name": "hf_text", "options": model.encoder.config_dict(),
                                      "method": "mlm", "modality": "text"})
    save_hf_folder(model.encoder.model, model.tokenizer, run.path / "hf")
    return run.path


# ------------------------------------------------------------------------------ the reader


def test_reader_fields_and_string_labels(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", ["x one", "y two", "z three"], ["b", "a", "b"],
                       text_key="review", label_key="sentiment")
    data = read_labelled_text(path, text_field="review", label_field="sentiment")
    assert data.texts == ["x one", "y two", "z three"]
    assert data.class_names == ["a", "b"] and data.labels.tolist() == [1, 0, 1]
    test = write_jsonl(tmp_path / "t.jsonl", ["q"], ["a"], "review", "sentiment")
    # The test file keeps the training file's mapping, even when it holds one class only.
    assert read_labelled_text(test, text_field="review", label_field="sentiment",
                              class_names=data.class_names).labels.tolist() == [0]
    unknown = write_jsonl(tmp_path / "u.jsonl", ["q"], ["c"], "review", "sentiment")
    with pytest.raises(SelfsupError, match="not among the training"):
        read_labelled_text(unknown, text_field="review", label_field="sentiment",
                           class_names=data.class_names)
    with pytest.raises(SelfsupError, match="no field 'text'"):
        read_labelled_text(path)


def test_reader_int_labels_csv_and_bad_labels(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", ["a", "b", "c"], [2, 0, 1])
    data = read_labelled_text(path)
    assert data.class_names is None and data.labels.tolist() == [2, 0, 1]
    assert data.num_classes == 3
    csv_path = tmp_path / "a.csv"
    csv_path.write_text('sentence,y\n"hello, world",1\nbye,0\n', encoding="utf-8")
    data = read_labelled_text(csv_path, text_field="sentence", label_field="y")
    assert data.texts == ["hello, world", "bye"] and data.labels.tolist() == [1, 0]
    with pytest.raises(SelfsupError, match="negative"):
        read_labelled_text(write_jsonl(tmp_path / "n.jsonl", ["a", "b"], [0, -1]))
    with pytest.raises(SelfsupError, match="line 2"):
        (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 0}\n{"text": 3, "label": 1}\n')
        read_labelled_text(tmp_path / "bad.jsonl")


def test_reader_labels_file_count_mismatch(tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("one\ntwo\nthree\n", encoding="utf-8")
    labels = tmp_path / "labels.txt"
    labels.write_text("pos\nneg\npos\n", encoding="utf-8")
    data = read_labelled_text(texts, labels_file=labels)
    assert data.texts == ["one", "two", "three"] and data.labels.tolist() == [1, 0, 1]
    labels.write_text("pos\nneg\n", encoding="utf-8")
    with pytest.raises(SelfsupError, match="2 labels but .* 3 texts"):
        read_labelled_text(texts, labels_file=labels)
    with pytest.raises(SelfsupError, match="labels_file"):
        read_labelled_text(texts)


# ------------------------------------------------------------------------------ features


def test_mean_pooling_ignores_padding(tiny_model: TextModel) -> None:
    short, long = "good film", "the film was a plot and the actor was superb and it was fine"
    alone = text_features(tiny_model.encoder, tokenize_texts(tiny_model, [short]), 0)
    tokens = tokenize_texts(tiny_model, [short, long])
    together = text_features(tiny_model.encoder, tokens, 0, batch_size=2)
    np.testing.assert_allclose(alone[0], together[0], atol=1e-5)
    # Whatever id sits in the padded positions, the embedding is the same.
    ids, mask = tokens.batch([0, 1], pad_id=0)
    other = ids.clone()
    other[mask == 0] = 7
    with torch.no_grad():
        a = tiny_model.encoder(ids, mask)
        b = tiny_model.encoder(other, mask)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[0], a[1])  # different texts, different vectors


def test_truncation_is_counted_and_logged(tiny_model: TextModel,
                                          caplog: pytest.LogCaptureFixture) -> None:
    texts = ["good " * 100, "bad film", "the plot " * 40]  # 2 longer than the model's 32
    with caplog.at_level(logging.INFO, logger="selfsup"):
        tokens = tokenize_texts(tiny_model, texts, max_length=1000)  # capped at 32 positions
    assert tokens.truncated == 2 and tokens.max_length == 32
    assert max(len(x) for x in tokens.ids) == 32
    assert "2 of 3" in caplog.text and "truncated" in caplog.text
    features = text_features(tiny_model.encoder, tokens, 0)
    assert features.shape == (3, 32) and np.isfinite(features).all()


# ------------------------------------------------------------------------------ fine-tuning


def test_finetune_learns_toy_task(tiny_model: TextModel) -> None:
    texts, labels = toy_texts(160, 3)
    test_texts, test_labels = toy_texts(60, 4)
    train = TextSplit(tokenize_texts(tiny_model, texts), np.asarray(labels), 0)
    test = TextSplit(tokenize_texts(tiny_model, test_texts), np.asarray(test_labels), 0)
    fresh = tiny_model.fresh(seed=1)
    config = text_finetune_config(minutes=1.0, epochs=12, lr=3e-3, precision="32")
    result = finetune_text(fresh.encoder, train, test, 2, config)
    assert result["accuracy"] >= 0.9, result["val_history"]
    assert result["num_val"] >= 2 and result["chosen_epoch"] >= 0


def test_probe_head_starts_fine_tuning_from_a_linear_probe(tiny_model: TextModel) -> None:
    from selfsup.evaluate.probes import linear_head

    texts, labels = toy_texts(80, 5)
    split = TextSplit(tokenize_texts(tiny_model, texts), np.asarray(labels), 0)
    config = text_finetune_config(minutes=1.0, epochs=1, precision="32", head_init="probe")
    model = TextClassifier(tiny_model.fresh(seed=2).encoder, 2).eval()
    chosen = probe_head(model, split, config)
    features = text_features(model.encoder, split.tokens, 0)
    weight, bias, expected = linear_head(features, split.labels, 2, seed=config.seed)
    assert chosen == expected
    with torch.no_grad():
        ids, mask = split.tokens.batch(np.arange(len(texts)), 0)
        logits = model(ids, mask).numpy()
    np.testing.assert_allclose(logits, features @ weight.T + bias, rtol=1e-4, atol=1e-4)

    test = TextSplit(tokenize_texts(tiny_model, texts[:20]), np.asarray(labels[:20]), 0)
    result = finetune_text(tiny_model.fresh(seed=2).encoder, split, test, 2, config)
    assert result["head"]["init"] == "probe" and result["head"]["C"] > 0
    with pytest.raises(SelfsupError, match="head_init must be one of random, probe"):
        text_finetune_config(minutes=1.0, head_init="zeros")


def test_budgets_parse_all_and_counts() -> None:
    names = [b.name for b in parse_text_budgets(None, "10,100,all")]
    assert names == ["10/class", "100/class", "100%"]
    assert [b.fraction for b in parse_text_budgets(None, None)] == [1.0]
    with pytest.raises(SelfsupError):
        parse_text_budgets(None, "ten")


# ------------------------------------------------------------------------------ evaluate


def test_evaluate_hf_run_end_to_end(tiny_model: TextModel, hf_folder: Path,
                                    labelled: tuple[Path, Path], tmp_path: Path) -> None:
    import selfsup

    # The "continued" model: the starting one nudged, so the two differ.
    continued = TextModel(HFTextEncoder(tiny_model.encoder.config), tiny_model.tokenizer, "c")
    continued.encoder.load_state_dict(tiny_model.encoder.state_dict())
    with torch.no_grad():
        for p in continued.encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    run = make_run(tmp_path / "run", continued, init=hf_folder)
    assert is_text_target(run) and is_text_target(hf_folder)
    train, test = labelled
    result = selfsup.evaluate(run, str(train), str(test), finetune_minutes=0.2, progress=False,
                              text_options={"labels_per_class": "5,all", "finetune_epochs": 2})
    saved = json.loads((run / "eval.json").read_text())
    assert saved["budgets"][0]["budget"] == "5/class" and saved["budgets"][0]["num_labels"] == 10
    for key in ("linear", "knn", "supervised"):
        assert 0.0 <= saved[key]["accuracy"] <= 1.0
    assert saved["init"] == str(hf_folder) and saved["start_model"] == str(hf_folder)
    last = saved["budgets"][-1]
    assert {"model", "start", "scratch", "gains"} <= set(last)
    assert last["num_labels"] == 80 and saved["num_test"] == 40
    assert saved["class_names"] == ["neg", "pos"]
    assert result["linear"] == saved["linear"]
    # The report reads it, and the loaded run embeds raw text.
    from selfsup.report import build_report

    assert "linear probe" in build_report(run, embedding_map=False).read_text()
    vectors = selfsup.load(run, precision="32").embed(["good film", "bad film"])
    assert vectors.shape == (2, 32) and np.isfinite(vectors).all()


def test_text_sweep_over_seeds_reaches_the_report(tiny_model: TextModel, hf_folder: Path,
                                                  labelled: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    """`--seeds` works unchanged for a text run: every budget is run per seed, sweep.json has
    the image sweep's form (mean ± std over seeds, the paired gap to from-scratch training), and
    the report draws the curve and states the verdict from it."""
    from typer.testing import CliRunner

    from selfsup.cli import app
    from selfsup.report import build_report

    run = make_run(tmp_path / "run", tiny_model, init=hf_folder)
    train, test = labelled
    outcome = CliRunner().invoke(app, [
        "evaluate", str(run), "--data", str(train), "--test", str(test),
        "--labels-per-class", "5,all", "--seeds", "2", "--finetune-minutes", "0.1",
        "--finetune-epochs", "1", "--no-progress"])
    assert outcome.exit_code == 0, outcome.output
    assert "± " in outcome.output  # the table shows the spread over seeds
    saved = json.loads((run / "eval.json").read_text())
    sweep = json.loads((run / "sweep.json").read_text())
    assert saved["seeds"] == 2 and sweep["seeds"] == 2 and sweep["modality"] == "text"
    assert [p["budget"] for p in sweep["points"]] == ["5/class", "all"]
    for point in sweep["points"]:
        runs = point["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        linear = point["summary"]["linear"]["accuracy"]
        assert linear["n"] == 2
        assert linear["mean"] == pytest.approx(np.mean([r["linear"]["accuracy"] for r in runs]))
        gaps = [r["linear"]["accuracy"] - r["supervised"]["accuracy"] for r in runs]
        assert point["summary"]["linear_minus_supervised"]["mean"] == pytest.approx(
            np.mean(gaps))
        assert all("linear" in r["start"] for r in runs)  # the starting model, per seed
    # Seed 0's row in eval.json is the one that seed's sweep entry came from.
    first = saved["budgets"][0]
    assert first["runs"][0]["linear"] == first["model"]["linear"]
    assert 0 < sweep["quality"]["effective_rank"] <= 32
    with np.load(run / "embeddings_sample.npz") as sample:
        assert sample["features"].shape == (40, 32) and len(sample["labels"]) == 40
    html = build_report(run, embedding_map=False).read_text()
    assert "Label efficiency" in html and "over 2 seeds" in html
    assert "mean ± std over seeds" in html  # the text table, aggregated too


def test_evaluate_hf_folder_with_finetune(hf_folder: Path, labelled: tuple[Path, Path],
                                          tmp_path: Path) -> None:
    train, test = labelled
    out = tmp_path / "minilm-eval"
    result = evaluate_text_model(hf_folder, str(train), str(test), out=out, protocol="finetune",
                                 labels_per_class="10", finetune_minutes=0.2, finetune_epochs=2,
                                 test_size=30)
    saved = json.loads((out / "eval.json").read_text())
    row = saved["budgets"][0]
    assert row["model"]["finetune"]["steps"] > 0 and "finetune_over_scratch" in row["gains"]
    # A pre-trained encoder's head starts as a probe (LP-FT) by default; scratch's at random.
    assert row["model"]["finetune"]["head"]["init"] == "probe"
    assert row["scratch"]["finetune"]["head"]["init"] == "random"
    assert saved["num_test"] == 30 and "random 30 of 40" in saved["test_data"]
    assert saved["method"] == "hf-folder" and result["max_length"] == 32
    assert isinstance(load_text_model(hf_folder).encoder, HFTextEncoder)


def test_evaluate_reads_texts_at_the_models_declared_length(
        tiny_model: TextModel, labelled: tuple[Path, Path], tmp_path: Path) -> None:
    """Without --max-length a sentence-transformers folder is read at its max_seq_length (what
    SentenceTransformer encodes at), not at its positions; an explicit length still wins."""
    folder = tmp_path / "declared"
    save_hf_folder(tiny_model.encoder.model, tiny_model.tokenizer, folder,
                   {"pooling": "mean", "normalize": True, "max_seq_length": 8})
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 8
    assert load_text_model(folder).sentence_length == 8
    train, test = labelled
    declared = evaluate_text_model(folder, str(train), str(test), out=tmp_path / "a",
                                   baseline=False, test_size=30)
    assert declared["max_length"] == 8
    assert declared["truncated"]["model"]["train"] > 0  # the toy texts run past 8 tokens
    given = evaluate_text_model(folder, str(train), str(test), out=tmp_path / "b",
                                baseline=False, test_size=30, max_length=1000)
    assert given["max_length"] == 32  # capped at the positions


def test_evaluate_cli_on_folder_and_bad_input(hf_folder: Path, labelled: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from selfsup.cli import app

    train, test = labelled
    out = tmp_path / "cli-eval"
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(hf_folder), "--data", str(train), "--test",
                                 str(test), "--no-baseline", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "eval.json").read_text())["linear"]["accuracy"] >= 0
    bad_head = runner.invoke(app, ["evaluate", str(hf_folder), "--data", str(train), "--test",
                                   str(test), "--finetune-head", "zeros"])
    assert isinstance(bad_head.exception, SelfsupError), bad_head.output
    not_model = tmp_path / "empty"
    not_model.mkdir()
    (not_model / "config.json").write_text("{}")
    with pytest.raises(SelfsupError, match="not a Hugging Face model folder"):
        evaluate_text_model(not_model, str(train), str(test))
    with pytest.raises(SelfsupError, match="--finetune-head must be one of random, probe"):
        evaluate_text_model(hf_folder, str(train), str(test), finetune_head="zeros")
