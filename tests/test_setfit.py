"""The SetFit-style protocol (pairs, CosineSimilarityLoss, the contrastive fine-tuning, the CLI
end to end on a tiny random BERT, its sweep and verdict, bad input) and the text probes'
recipe: the model's own sentence pipeline, and cross-validation over a small labelled subset."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from test_text_eval import (  # one_thread: the same autouse fixture, one thread per module
    labelled_files,
    make_run,
    one_thread,  # noqa: F401
    tiny_text_model,
    toy_texts,
    write_jsonl,
)

from selfsup.errors import SelfsupError
from selfsup.evaluate import setfit as setfit_module
from selfsup.evaluate.scores import probe_subset
from selfsup.evaluate.setfit import (
    SetFitConfig,
    contrastive_finetune,
    cosine_similarity_loss,
    make_pairs,
    setfit_text,
)
from selfsup.evaluate.text import TextModel, TextSplit, text_features, tokenize_texts
from selfsup.evaluate.text_protocol import TEXT_PROBES
from selfsup.models.hf_text import (
    save_hf_folder,
)
from selfsup.report import verdict
from selfsup.text_models import load_folder_model


@pytest.fixture(scope="module")
def tiny_model() -> TextModel:
    return tiny_text_model(["x y z", "held out words only"], dropout=0.1)


@pytest.fixture(scope="module")
def hf_folder(tiny_model: TextModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "tiny-bert"
    save_hf_folder(tiny_model.encoder.model, tiny_model.tokenizer, folder)
    return folder


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return labelled_files(tmp_path_factory.mktemp("labelled"), 40, 20)


def split_of(model: TextModel, texts: list[str], labels: list[int]) -> TextSplit:
    return TextSplit(tokenize_texts(model, texts), np.asarray(labels), model.pad_id)


# ------------------------------------------------------------------------------ pairs


def test_pairs_are_balanced_counted_and_deterministic() -> None:
    labels = np.array([0] * 5 + [1] * 4 + [2] * 3)
    first, second, target = make_pairs(labels, iterations=20, seed=3)
    n = len(labels)
    assert len(target) == 2 * 20 * n  # one positive and one negative per text and round
    positive = target == 1.0
    assert positive.sum() == (~positive).sum() == 20 * n
    assert np.all(labels[first[positive]] == labels[second[positive]])
    assert np.all(first[positive] != second[positive])  # never a text with itself
    assert np.all(labels[first[~positive]] != labels[second[~positive]])
    # Every text opens exactly R positives and R negatives: the same share each.
    assert np.all(np.bincount(first[positive], minlength=n) == 20)
    assert np.all(np.bincount(first[~positive], minlength=n) == 20)
    assert min(first.min(), second.min()) >= 0 and max(first.max(), second.max()) < n
    again = make_pairs(labels, iterations=20, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((first, second, target), again,
                                                        strict=True))
    other = make_pairs(labels, iterations=20, seed=4)
    assert not np.array_equal(second, other[1])
    # The cap keeps whole early rounds, half of each kind.
    capped = make_pairs(labels, iterations=20, seed=3, max_pairs=50)
    assert len(capped[2]) == 50 and capped[2].sum() == 25
    assert np.array_equal(capped[1][:25], second[:25])


def test_pairs_single_example_class_and_refusals() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])  # class 2 has one text: no positive partner
    first, second, target = make_pairs(labels, iterations=4, seed=0)
    positive = target == 1.0
    assert positive.sum() == 4 * 5 and (~positive).sum() == 4 * 6
    assert 5 not in first[positive] and 5 not in second[positive]
    assert np.sum(first[~positive] == 5) == 4  # it is still paired against the others
    with pytest.raises(SelfsupError, match="two classes"):
        make_pairs(np.array([1, 1, 1]))
    with pytest.raises(SelfsupError, match="a class with two labelled texts"):
        make_pairs(np.array([0, 1, 2]))


def test_cosine_similarity_loss_against_a_direct_computation() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(6, 5, generator=generator, requires_grad=True)
    b = torch.randn(6, 5, generator=generator)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    loss = cosine_similarity_loss(a, b, target)
    x, y = a.detach().numpy().astype(np.float64), b.numpy().astype(np.float64)
    cosine = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    assert float(loss.detach()) == pytest.approx(np.mean((cosine - target.numpy()) ** 2), rel=1e-5)
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    # Identical pairs with target 1 cost nothing; orthogonal ones with target 0 neither.
    e = torch.eye(3)
    assert float(cosine_similarity_loss(e, e, torch.ones(3))) == pytest.approx(0.0, abs=1e-7)
    assert float(cosine_similarity_loss(e, e.roll(1, 0), torch.zeros(3))) == pytest.approx(0.0)


# ------------------------------------------------------------------------------ fine-tuning


def test_contrastive_finetuning_pairs_only_labelled_texts_and_lowers_the_loss(
        tiny_model: TextModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every text a training step encodes is one of the labelled subset's (test texts are
    made of other words, so a leak would show), and the contrastive loss falls."""
    texts, labels = toy_texts(12, 5)
    test_texts = ["held out words only"] * 4
    train = split_of(tiny_model, texts, labels)
    test = split_of(tiny_model, test_texts, [0, 1, 0, 1])
    allowed = {tuple(ids.tolist()) for ids in train.tokens.ids}
    held = {tuple(ids.tolist()) for ids in test.tokens.ids}
    assert not allowed & held
    seen: list[tuple[int, ...]] = []
    original = setfit_module.sentence_vectors

    def spy(encoder, ids, mask):
        assert encoder.training  # a contrastive step (dropout on)
        seen.extend(tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True))
        return original(encoder, ids, mask)

    monkeypatch.setattr(setfit_module, "sentence_vectors", spy)
    encoder = tiny_model.fresh(seed=1).encoder
    config = SetFitConfig(iterations=8, batch_size=8, lr=1e-3, minutes=1.0, seed=0)
    result = setfit_text(encoder, train, test, config)
    assert result["steps"] == result["steps_planned"] == 24 and result["stopped_by"] == "pairs"
    assert result["pairs"] == {"positive": 96, "negative": 96, "per_text": 16.0}
    assert len(seen) == 2 * 8 * 24 and set(seen) <= allowed
    assert result["loss_last"] < result["loss_first"]
    assert 0.0 <= result["accuracy"] <= 1.0 and result["num_train"] == 12
    assert result["head"]["C"] == 1.0
    # Deterministic under a seed: the same run again gives the same fine-tuned encoder.
    twin = tiny_model.fresh(seed=1).encoder
    contrastive_finetune(twin, train, config)
    x = text_features(encoder, train.tokens, train.pad_id)
    assert np.allclose(x, text_features(twin, train.tokens, train.pad_id), atol=1e-6)


def test_setfit_budget_caps_steps_and_refuses_identical_texts(tiny_model: TextModel) -> None:
    texts, labels = toy_texts(10, 6)
    train = split_of(tiny_model, texts, labels)
    capped = contrastive_finetune(tiny_model.fresh(0).encoder, train,
                                  SetFitConfig(iterations=20, max_steps=3, minutes=1.0))
    assert capped["steps"] == 3 and capped["stopped_by"] == "max_steps"
    same = split_of(tiny_model, ["the film was good"] * 6, [0, 1, 0, 1, 0, 1])
    with pytest.raises(SelfsupError, match="identical"):
        setfit_text(tiny_model.fresh(0).encoder, same, same, SetFitConfig())
    with pytest.raises(SelfsupError, match="iterations must be positive"):
        SetFitConfig(iterations=0)


# ------------------------------------------------------------------------------ end to end


def test_setfit_in_eval_json_sweep_report_and_verdict(
        tiny_model: TextModel, hf_folder: Path, labelled: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from selfsup.report import build_report

    train, test = labelled
    out = tmp_path / "folder-eval"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "evaluate", str(hf_folder), "--data", str(train), "--test",
        str(test), "--protocol", "setfit", "--no-baseline", "--out", str(out),
        "--labels-per-class", "4", "--seeds", "1", "--setfit-iterations", "2", "--no-progress")
    assert code == 0, err
    saved = json.loads((out / "eval.json").read_text())
    entry = saved["budgets"][0]["model"]["setfit"]
    assert saved["protocol"] == "setfit" and saved["setfit"] == entry
    assert entry["pairs"] == {"positive": 16, "negative": 16, "per_text": 4.0}
    assert entry["steps"] == 2 and saved["setfit_config"]["iterations"] == 2
    assert "SetFit-style" in stdout  # the verdict, printed without a baseline

    run = make_run(tmp_path / "run", tiny_model, init=hf_folder)
    code, stdout, err = run_cli(
        monkeypatch, capsys, "evaluate", str(run), "--data", str(train), "--test", str(test),
        "--protocol", "finetune,setfit", "--labels-per-class", "4,8", "--seeds", "2",
        "--setfit-iterations", "2", "--finetune-minutes", "0.1", "--finetune-epochs", "1",
        "--no-progress")
    assert code == 0, err
    saved = json.loads((run / "eval.json").read_text())
    sweep = json.loads((run / "sweep.json").read_text())
    assert saved["protocol"] == "finetune,setfit"
    assert [p["budget"] for p in sweep["points"]] == ["4/class", "8/class"]
    for point in sweep["points"]:
        runs = point["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        values = [r["setfit"]["accuracy"] for r in runs]
        assert point["summary"]["setfit"]["accuracy"]["mean"] == pytest.approx(np.mean(values))
        gaps = [r["setfit"]["accuracy"] - r["linear"]["accuracy"] for r in runs]
        assert point["summary"]["setfit_minus_linear"]["mean"] == pytest.approx(np.mean(gaps))
        assert all("setfit" in r["start"] and "finetune" in r for r in runs)
    row = saved["budgets"][0]
    assert "setfit_over_linear" in row["gains"] and "setfit_over_start" in row["gains"]
    said = verdict(sweep)
    assert "SetFit-style fine-tuning" in said and "4 labels per class" in said
    assert "SetFit-style" in stdout
    html = build_report(run, embedding_map=False).read_text()
    assert "SetFit-style acc %" in html and "model setfit" in html


def test_bad_input_one_class_identical_texts_and_protocols(
        hf_folder: Path, labelled: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    _, test = labelled
    one_class = write_jsonl(tmp_path / "one.jsonl", ["good film", "great plot", "fine actor"],
                            ["pos"] * 3)
    cases = {
        "one class": (one_class, one_class, "single class"),
        "identical": (write_jsonl(tmp_path / "same.jsonl", ["the film"] * 6,
                                  ["pos", "neg"] * 3), test, "identical"),
    }
    for name, (data, test_data, message) in cases.items():
        out = tmp_path / f"out-{name}"
        code, _, err = run_cli(monkeypatch, capsys, "evaluate", str(hf_folder), "--data",
                               str(data), "--test", str(test_data), "--protocol", "setfit",
                               "--no-baseline", "--out", str(out), "--no-progress")
        assert code == 2 and message in err and "Traceback" not in err, (name, err)
        assert not (out / "eval.json").exists()
    train, _ = labelled
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", str(hf_folder), "--data",
                           str(train), "--test", str(test), "--protocol", "setfit,tune")
    assert code == 2 and "--protocol must be probes, finetune, setfit" in err
    image_run = tmp_path / "image-run"
    image_run.mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", str(image_run), "--data", "digits",
                           "--protocol", "setfit")
    assert code == 2 and "setfit is for text models" in err


def test_a_class_with_one_example_is_kept_out_of_positive_pairs(
        hf_folder: Path, labelled: tuple[Path, Path], tmp_path: Path) -> None:
    """The documented behaviour: a class with a single labelled text has no positive partner;
    it is paired as a negative, and the head still sees it."""
    from selfsup.evaluate.text import evaluate_text_model

    texts, labels = toy_texts(12, 7)
    names = ["pos" if y == 0 else "neg" for y in labels]
    data = write_jsonl(tmp_path / "rare.jsonl", [*texts, "a rare and odd plot"],
                       [*names, "rare"])
    _, test = labelled
    result = evaluate_text_model(hf_folder, str(data), str(test), protocol="setfit",
                                 baseline=False, setfit_options={"iterations": 2})
    pairs = result["setfit"]["pairs"]
    assert pairs == {"positive": 2 * 12, "negative": 2 * 13, "per_text": 50 / 13}


# ------------------------------------------------------------------------------ the probes


def test_small_subsets_choose_by_cross_validation_over_all_of_them() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 8)  # 24 texts: 8 per class
    x = rng.normal(size=(24, 6)).astype(np.float32) + y[:, None]
    test_x = rng.normal(size=(30, 6)).astype(np.float32) + np.repeat([0, 1, 2], 10)[:, None]
    test_y = np.repeat([0, 1, 2], 10)
    small = probe_subset(x, y, test_x, test_y, 0, 0.2, **TEXT_PROBES)
    assert small["linear"]["chosen"]["cv_folds"] == 5 and small["knn"]["chosen"]["cv_folds"] == 5
    assert small["linear"]["num_fit"] == 24 and small["linear"]["num_val"] == 0
    # The same subset with cross-validation switched off: a carve of a few texts instead.
    carved = probe_subset(x, y, test_x, test_y, 0, 0.2, **{**TEXT_PROBES, "cv_below": 10})
    assert "cv_folds" not in carved["linear"]["chosen"]
    assert carved["linear"]["num_val"] == 5 and carved["linear"]["num_fit"] == 19
    # The plain recipe on the features as they are: LogisticRegressionCV's own choice.
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's notes on its defaults
        reference = LogisticRegressionCV(Cs=10, max_iter=1000, scoring="accuracy",
                                         cv=StratifiedKFold(5, shuffle=True, random_state=0)
                                         ).fit(x, y)
    assert small["linear"]["chosen"]["C"] == pytest.approx(float(reference.C_[0]))


def test_probes_read_the_models_own_sentence_pipeline(tiny_model: TextModel, tmp_path: Path
                                                      ) -> None:
    """A Hugging Face folder evaluated directly pools as its modules.json says: MiniLM's layout
    (mean pooling + Normalize) gives unit vectors, CLS pooling reads the first token, and the
    eval.json records it; without modules.json, mean pooling as before."""
    folder = tmp_path / "st"
    save_hf_folder(tiny_model.encoder.model, tiny_model.tokenizer, folder)
    plain = load_folder_model(folder)
    assert plain.pooling == {"pooling": "mean", "normalize": False, "max_seq_length": None}
    tokens = tokenize_texts(plain, ["good film", "a bad and dull plot"])
    raw = text_features(plain.encoder, tokens, plain.pad_id)
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    flags = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
             "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    model = load_folder_model(folder)
    assert model.pooling == {"pooling": "mean", "normalize": True, "max_seq_length": None}
    vectors = text_features(model.encoder, tokens, model.pad_id)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    assert model.fresh(0).pooling == model.pooling  # from scratch: the same pipeline
    flags.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    cls = load_folder_model(folder)
    ids, mask = tokens.batch([0, 1], cls.pad_id)
    with torch.no_grad():
        first = torch.nn.functional.normalize(cls.encoder.tokens(ids, mask)[:, 0], dim=-1)
    assert np.allclose(text_features(cls.encoder, tokens, cls.pad_id), first.numpy(), atol=1e-5)


# ------------------------------------------------------------------------------ LP-FT bound


def test_lp_ft_start_is_kept_unless_beaten_and_training_stops_early(tiny_model: TextModel
                                                                     ) -> None:
    """With the head started as a probe, a fine-tuning that only gets worse (a learning rate
    that wrecks the encoder) returns the probe start (epoch -1), and stops after ``patience``
    epochs past the warm-up instead of spending its 50."""
    from selfsup.evaluate.text import finetune_text, text_finetune_config

    texts, labels = toy_texts(40, 8)
    split = split_of(tiny_model, texts, labels)
    config = text_finetune_config(minutes=1.0, epochs=50, precision="32", head_init="probe",
                                  lr=5.0, warmup_fraction=0.02, val_fraction=0.25)
    result = finetune_text(tiny_model.fresh(seed=3).encoder, split, split, 2, config,
                           patience=2)
    assert result["chosen_epoch"] == -1 and result["start_kept"]
    assert result["val_accuracy"] == result["val_history"][0] == max(result["val_history"])
    assert result["stopped_early_at_epoch"] is not None and result["epochs"] < 10
    assert result["head"]["init"] == "probe"


def test_the_options_help_states_setfits_own_defaults() -> None:
    """--setfit-iterations / --setfit-max-pairs default to "not given" (SetFitConfig's values);
    their help names those values, and must follow them if they change."""
    import dataclasses

    from selfsup.options import EvaluateOptions

    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(EvaluateOptions)}
    assert f"default {SetFitConfig().iterations}," in helps["setfit_iterations"]
    assert f"default {SetFitConfig().max_pairs}:" in helps["setfit_max_pairs"]
