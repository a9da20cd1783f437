"""Issue 28, the evaluate / report side: an honest verdict (both budgets as measured, a baseline
at chance called out), `selfsup.evaluate.anomaly` reachable, a plan and one bar before long
work, and bad input (a damaged export, a read-only run, ragged CSV rows, compare's --out and
non-runs) ending in one `error:` line with exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import selfsup
from selfsup.cli import main


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["selfsup", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The one line a refused input prints; no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


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
