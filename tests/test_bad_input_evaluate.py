"""Issue 28, the evaluate / report side: an honest verdict (both budgets as measured, a baseline
at chance called out), `selfsup.evaluate.anomaly` reachable, a plan and one bar before long
work, and bad input (a damaged export, a read-only run, ragged CSV rows, compare's --out and
non-runs) ending in one `error:` line with exit code 2."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli

import selfsup
from selfsup.errors import SelfsupError
from selfsup.evaluate import checks, dispatch, plan, protocol
from selfsup.evaluate.sweep import sweep, sweep_plan
from selfsup.evaluate.text import text_plan
from selfsup.report import build_report, verdict
from selfsup.report.html import budget_sentence


def one_error_line(err: str) -> str:
    """The one line a refused input prints; no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def flat(text: str) -> str:
    """Rich wraps long lines at the terminal width: compare texts with whitespace collapsed."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A digits run of two steps with a narrow encoder: seconds, and every file a run has."""
    out = tmp_path_factory.mktemp("bad-input-eval") / "run"
    selfsup.pretrain("simclr", "digits", out=str(out), steps=2, batch_size=64, progress=False,
                     encoder_options={"width": 8}, monitor_size=0)
    return out


def copy_run(run: Path, tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("eval.json", "baseline*",
                                                               "sweep*"))
    return target


# ---------------------------------------------------------------------------------------------
# (2) The verdict: both budgets as measured; a baseline at chance has not learned


def evaluation(linear: float, supervised: float, *, pretrain_seconds: float = 62.0,
               baseline_seconds: float | None = 18.0, chance: float = 0.1) -> dict:
    sup = {"accuracy": supervised, "minutes": 0.3}
    if baseline_seconds is not None:
        sup["train_seconds"] = baseline_seconds
    return {"linear": {"accuracy": linear}, "knn": {"accuracy": linear}, "num_train": 1437,
            "chance_accuracy": chance, "pretrain_seconds": pretrain_seconds, "supervised": sup}


def test_verdict_states_both_budgets_and_says_same_only_within_5_percent() -> None:
    unequal = verdict(None, evaluation(0.9, 0.8, pretrain_seconds=62, baseline_seconds=18))
    assert "pre-training 62 s, the supervised baseline 18 s (29% of it): not the same budget" \
        in unequal
    assert "the same budget (within" not in unequal and "CPU-time" not in unequal
    close = verdict(None, evaluation(0.9, 0.8, pretrain_seconds=60, baseline_seconds=58))
    assert "pre-training 60 s, the supervised baseline 58 s: the same budget (within 5%)" in close
    apart = verdict(None, evaluation(0.9, 0.8, pretrain_seconds=60, baseline_seconds=56))
    assert "not the same budget" in apart  # 4 s of 60 is 6.7%
    unknown = verdict(None, evaluation(0.9, 0.8, baseline_seconds=None))
    assert "time was not recorded" in unknown and "same budget" not in unknown


def test_a_sweep_with_fine_tuning_compares_its_baselines_with_the_sum() -> None:
    # Its baselines were given 20 + 5 minutes: measured against the pre-training alone they
    # would read 125% and "not the same budget".
    said = budget_sentence(1200.0, [1490.0, 1510.0], finetune_seconds=300.0)
    assert said == ("Budgets as measured: pre-training 20.0 min + fine-tuning 5.0 min, each of "
                    "the 2 supervised baselines 25.0 min: the same budget (within 5%)")
    short = budget_sentence(1200.0, [1200.0], finetune_seconds=300.0)
    assert "the supervised baseline 20.0 min (80% of their sum): not the same budget" in short
    # The verdict takes the fine-tunings' mean measured time from the sweep's runs.
    runs = [{"supervised": {"accuracy": 0.7, "train_seconds": 1500.0},
             "finetune": {"accuracy": 0.8, "seconds": seconds}} for seconds in (290.0, 310.0)]
    stat = {"mean": 0.7, "std": 0.0, "n": 2, "values": [0.7, 0.7]}
    summary = {"linear": {"accuracy": {**stat, "mean": 0.6}}, "supervised": {"accuracy": stat}}
    sweep = {"seeds": 2, "num_test": 360, "test_data": "digits", "chance_accuracy": 0.1,
             "pretrain_seconds": 1200.0, "finetune_minutes": 5.0, "points": [
                 {"budget": "10%", "fraction": 0.1, "labels_per_class": None, "num_labels": 140,
                  "runs": runs, "summary": summary}]}
    assert ("pre-training 20.0 min + fine-tuning 5.0 min, each of the 2 supervised baselines "
            "25.0 min: the same budget (within 5%)") in verdict(sweep)


def test_a_baseline_at_or_below_chance_is_called_out_not_beaten() -> None:
    text = verdict(None, evaluation(0.908, 0.095, chance=0.100))
    assert "the supervised baseline did not learn (9.5%, at or below chance 10.0%)" in text
    assert "beats" not in text
    # A sweep whose baselines sit at chance: no gap in points is claimed either.
    runs = [{"supervised": {"accuracy": 0.1, "train_seconds": 20.0}}] * 2
    stat = {"mean": 0.1, "std": 0.0, "n": 2, "values": [0.1, 0.1]}
    summary = {"linear": {"accuracy": {**stat, "mean": 0.6}},
               "supervised": {"accuracy": stat},
               "linear_minus_supervised": {**stat, "mean": 0.5}}
    sweep = {"seeds": 2, "num_test": 360, "test_data": "digits", "chance_accuracy": 0.103,
             "pretrain_seconds": 20.5, "points": [
                 {"budget": "10%", "fraction": 0.1, "labels_per_class": None, "num_labels": 140,
                  "runs": runs, "summary": summary}]}
    text = verdict(sweep)
    assert "did not learn (10.0%, at or below chance 10.3%)" in text and "beats" not in text
    assert ("pre-training 20 s, each of the 2 supervised baselines 20 s: the same budget "
            "(within 5%)") in text


def test_the_cli_and_the_report_print_the_same_verdict(tiny_run, tmp_path, monkeypatch,
                                                       capsys) -> None:
    """One function words the verdict: what `evaluate` prints is what report.html shows."""
    run = copy_run(tiny_run, tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", str(run), "--data", "digits",
                             "--baseline-minutes", "0.02", "--no-progress")
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())
    assert result["supervised"]["train_seconds"] > 0  # measured, for the verdict
    said = verdict(None, result)
    assert flat(f"Verdict: {said}") in flat(out)
    assert "Budgets as measured: pre-training" in said and "CPU-time" not in out
    page = build_report(run, embedding_map=False).read_text()
    assert said.replace("'", "&#x27;") in page


# ---------------------------------------------------------------------------------------------
# (9) selfsup.evaluate: the API call, and the package with its subpackages


def test_selfsup_evaluate_is_callable_and_reaches_its_subpackages(tiny_run, tmp_path) -> None:
    # A fresh interpreter: nothing imported the subpackage beforehand.
    code = ("import inspect, selfsup; f = selfsup.evaluate.anomaly.roc_auc; "
            "print(f.__module__, callable(selfsup.evaluate), "
            "'baseline_minutes' in inspect.signature(selfsup.evaluate).parameters)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["selfsup.evaluate.anomaly", "True", "True"]
    import selfsup.evaluate.anomaly as anomaly

    assert selfsup.evaluate.anomaly is anomaly
    result = selfsup.evaluate(copy_run(tiny_run, tmp_path), "digits", baseline=False,
                              progress=False)
    assert 0 <= result["linear"]["accuracy"] <= 1


# ---------------------------------------------------------------------------------------------
# (12) The plan before the work, and one progress bar over it


def test_the_plan_line_counts_the_units_and_adds_up_their_budgets() -> None:
    assert sweep_plan(2, 3, minutes=5.0, steps=None, finetune_minutes=5.0).describe() == (
        "plan: 2 budgets x 3 seeds: features, probes, 6 fine-tunings of 5.0 min, "
        "6 from-scratch fine-tunings of 5.0 min, 6 supervised baselines of 5.0 min; "
        "about 90 min in all")
    # The text case of the issue: probes only, yet a from-scratch baseline per budget and seed.
    assert text_plan(2, 3, contenders=1, finetune=False, baseline=True, minutes=5.0,
                     epochs=None).describe() == (
        "plan: 2 budgets x 3 seeds: features, probes, 6 from-scratch baselines of 5.0 min; "
        "about 30 min in all")
    steps = sweep_plan(1, 2, minutes=None, steps=500, finetune_minutes=None).describe()
    assert "2 supervised baselines of up to 500 steps" in steps and "about" not in steps
    # A resumed sweep: what an earlier sitting finished is taken off what is left.
    resumed = sweep_plan(1, 3, minutes=None, steps=500, finetune_minutes=5.0)
    assert resumed.describe_kept([]) is None
    assert resumed.describe_kept([plan.Unit("fine-tuning", 5.0),
                                  plan.Unit("from-scratch fine-tuning", 5.0),
                                  plan.Unit("supervised baseline", None, "500 steps")]) == (
        "3 of the 9 training units were finished by an earlier sitting and are reused; about "
        "20 min left, plus 2 bounded by steps or epochs only")
    single = protocol.evaluation_plan(0.5, 2.0, (0.1, 1.0), True)
    assert single.describe() == ("plan: probes, 1 supervised baseline of 30 s, 2 fine-tunings "
                                 "of 2.0 min, 2 from-scratch fine-tunings of 2.0 min; about "
                                 "8.5 min in all")


@pytest.mark.parametrize("verb, progress", [("sweep", True), ("sweep", False),
                                            ("evaluate", True)])
def test_one_bar_advances_over_every_planned_unit(tiny_run, tmp_path, monkeypatch, caplog,
                                                  verb, progress) -> None:
    seen: list[tuple[bool, int, int]] = []
    exit_ = plan.PlanBar.__exit__

    def spy(self, *exc):
        seen.append((self.enabled, self.completed, len(self.plan.units)))
        return exit_(self, *exc)

    monkeypatch.setattr(plan.PlanBar, "__exit__", spy)
    caplog.set_level(logging.INFO)
    run = copy_run(tiny_run, tmp_path)
    if verb == "evaluate":
        dispatch.evaluate(run, "digits", baseline_minutes=0.02, progress=progress)
        assert seen == [(progress, 2, 2)]  # the probes, the baseline
        assert "plan: probes, 1 supervised baseline of 1 s; about 1 s in all" in caplog.text
        return
    sweep(run, "digits", labels_per_class="3", seeds=2, baseline_steps=1, progress=progress)
    # features, then per seed the probes and the baseline: 5 units, each counted once.
    assert seen == [(progress, 5, 5)]
    assert "plan: 1 budget x 2 seeds: features, probes, 2 supervised baselines of up to 1 " \
           "step" in caplog.text


# ---------------------------------------------------------------------------------------------
# (15) Bad input to evaluate and compare


def damage_weights(run: Path) -> tuple[str, str]:
    weights = run / "encoder.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    return "encoder.safetensors", "is damaged or cut short"


def damage_spec(run: Path) -> tuple[str, str]:
    (run / "encoder.json").write_text('{"name": "resnet_small", "opti')
    return "encoder.json", "is damaged (not valid JSON"


def spec_not_a_mapping(run: Path) -> tuple[str, str]:
    (run / "encoder.json").write_text("[1, 2]")
    return "encoder.json", "is damaged: it needs the encoder's"


def spec_options_misspelt(run: Path) -> tuple[str, str]:
    spec = json.loads((run / "encoder.json").read_text())
    spec["options"] = {"wdth": 8}
    (run / "encoder.json").write_text(json.dumps(spec))
    return "encoder.json", "cannot be built from its options"


def spec_of_another_encoder(run: Path) -> tuple[str, str]:
    spec = json.loads((run / "encoder.json").read_text())
    spec["options"] = {**spec.get("options", {}), "width": 16}
    (run / "encoder.json").write_text(json.dumps(spec))
    return "encoder.safetensors", "does not hold the weights of the encoder"


@pytest.mark.parametrize("damage", [damage_weights, damage_spec, spec_not_a_mapping,
                                    spec_options_misspelt, spec_of_another_encoder])
def test_a_damaged_export_is_one_message(tiny_run, tmp_path, monkeypatch, capsys,
                                         damage) -> None:
    run = copy_run(tiny_run, tmp_path)
    named, words = damage(run)
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", str(run), "--data", "digits",
                           "--no-baseline", "--no-progress")
    line = one_error_line(err)
    assert code == 2 and f"{run / named}" in line and words in line, line
    assert not (run / "eval.json").exists()


@pytest.mark.parametrize("sweep_args", [[], ["--labels-per-class", "3"]])
def test_a_read_only_run_is_refused_before_the_long_work(tiny_run, tmp_path, monkeypatch,
                                                         capsys, sweep_args) -> None:
    run = copy_run(tiny_run, tmp_path)
    run.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: report the folder as a read-only mount would
        real = os.access
        monkeypatch.setattr(checks.os, "access", lambda path, mode: (
            False if Path(path) == run and mode & os.W_OK else real(path, mode)))

    def no_reading(*args, **kwargs):
        raise AssertionError("the data was read before the folder was checked")

    monkeypatch.setattr(protocol, "load_labelled", no_reading)
    monkeypatch.setattr("selfsup.evaluate.sweep.load_labelled", no_reading)
    try:
        code, _, err = run_cli(monkeypatch, capsys, "evaluate", str(run), "--data", "digits",
                               "--baseline-minutes", "0.02", "--no-progress", *sweep_args)
    finally:
        run.chmod(0o755)
    line = one_error_line(err)
    assert code == 2 and f"{run} cannot be written" in line and "cp -r" in line
    assert not (run / "eval.json").exists() and not (run / "baseline").exists()
    assert not (run / "sweep.json").exists()


def test_compare_out_a_folder_and_folders_that_are_not_runs(tiny_run, tmp_path, monkeypatch,
                                                             capsys) -> None:
    folder = tmp_path / "pages"
    folder.mkdir()
    code, out, err = run_cli(monkeypatch, capsys, "compare", str(tiny_run), "--out", str(folder))
    line = one_error_line(err)
    assert code == 2 and f"--out {folder} is a folder" in line and "compare.html" in line
    assert out == "" and list(folder.iterdir()) == []  # no table shown, nothing written
    stray = tmp_path / "photos"
    stray.mkdir()
    (stray / "cat.jpg").write_bytes(b"jpeg")
    code, _, err = run_cli(monkeypatch, capsys, "compare", str(tiny_run), str(stray),
                           "--out", str(tmp_path / "c.html"))
    line = one_error_line(err)
    assert code == 2 and f"{stray} is not a selfsup run" in line
    assert not (tmp_path / "c.html").exists()
    code, _, err = run_cli(monkeypatch, capsys, "compare", str(tiny_run),
                           "--out", str(tmp_path / "c.html"))
    assert code == 0, err
    assert (tmp_path / "c.html").is_file()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A tiny Hugging Face BERT folder: a text model to evaluate labelled CSVs with."""
    import torch

    from selfsup.models.hf_text import (
        HFTextEncoder,
        save_hf_folder,
        small_bert_config,
        wordpiece_tokenizer,
    )

    tokenizer = wordpiece_tokenizer(["good film", "bad plot", "the actor was fine"],
                                    vocab_size=60)
    config = small_bert_config(tokenizer.get_vocab_size(), dim=16, layers=1, heads=2,
                               max_length=16, dropout=0.0)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "tiny-bert"
    save_hf_folder(HFTextEncoder(config).model, tokenizer, folder)
    return folder


@pytest.mark.parametrize("row, fields", [("the plot, it was bad,neg", 3), ("awful", 1)])
def test_a_csv_with_ragged_rows_is_refused_naming_the_line(hf_folder, tmp_path, monkeypatch,
                                                           capsys, row, fields) -> None:
    rows = ["text,label"] + [f"good film {i},pos" if i % 2 else f"bad plot {i},neg"
                             for i in range(20)]
    rows.insert(3, row)
    data = tmp_path / "labelled.csv"
    data.write_text("\n".join(rows) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", str(hf_folder), "--data", str(data),
                           "--no-baseline", "--no-progress")
    line = one_error_line(err)
    assert code == 2
    assert re.search(rf"{re.escape(str(data))} line 4: {fields} fields?, but the header has 2",
                     line), line


def test_ragged_clip_pairs_are_refused_before_evaluating(tiny_run, tmp_path,
                                                         monkeypatch) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image,caption\na.png,a cat\nb.png,a dog, sitting\n")
    monkeypatch.setattr(dispatch, "run_modality", lambda run: "image_text")
    monkeypatch.setattr(dispatch, "evaluate_clip", lambda *a, **k: {})
    with pytest.raises(SelfsupError, match=r"pairs.csv line 3: 3 fields, but the header has 2"):
        dispatch.evaluate(tiny_run, "digits", clip_options={"pairs": str(pairs)})
