"""The series methods through the real engine: pretrain, export, reload, probe, anomaly score."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from selfsup.api import pretrain
from selfsup.cli import main
from selfsup.config import build_config
from selfsup.data.series import load_series
from selfsup.engine import fit
from selfsup.errors import SelfsupError
from selfsup.evaluate.features import extract_features
from selfsup.report import verdict
from selfsup.run import RunDir, load_encoder

TINY_CNN = {"hidden": 8, "depth": 2, "embed_dim": 16}


@pytest.fixture
def series_npz(tmp_path):
    """Two classes of variable-length 2-channel series (sine vs square), NaN-padded."""
    rng = np.random.default_rng(0)
    n, width = 24, 32
    x = np.full((n, 2, width), np.nan, dtype=np.float32)
    lengths = rng.integers(20, width + 1, size=n)
    y = np.arange(n) % 2
    for i in range(n):
        t = np.arange(lengths[i]) / 4.0
        wave = np.sin(t) if y[i] == 0 else np.sign(np.sin(t))
        x[i, 0, : lengths[i]] = wave + 0.1 * rng.normal(size=lengths[i])
        x[i, 1, : lengths[i]] = -wave
    path = tmp_path / "waves.npz"
    np.savez(path, X_train=x, y_train=y, len_train=lengths, X_test=x[:8], y_test=y[:8],
             len_test=lengths[:8])
    return path


def test_ts_contrast_through_the_engine(series_npz, tmp_path):
    run = pretrain("ts-contrast", data=str(series_npz), out=str(tmp_path / "run"), steps=3,
                   batch_size=8, encoder_options=TINY_CNN, data_options={"split": "train"},
                   progress=False, monitor_size=0, precision="32")
    encoder, spec = load_encoder(run)
    assert spec["name"] == "dilated_cnn" and spec["modality"] == "series"
    assert spec["channels"] == 2
    test = load_series(series_npz, {"split": "test"})
    feats = extract_features(encoder, test, precision="32")
    assert feats.shape == (8, 16) and np.isfinite(feats).all()
    # `selfsup evaluate` reads the test half of the same file through --test-option split=test.
    import selfsup

    result = selfsup.evaluate(run.path, str(series_npz), str(series_npz), baseline=False,
                              test_options={"split": "test"}, progress=False)
    assert result["num_test"] == 8 and result["num_train"] == 24


def test_ts_mask_and_supervised_series_fit(series_npz, tmp_path):
    data = load_series(series_npz, {"split": "train"})
    options = {"steps": 2, "batch_size": 8, "progress": False, "monitor_size": 0,
               "precision": "32", "data": str(series_npz)}
    mask_config = build_config({**options, "method": "ts-mask",
                                "encoder": "patch_transformer",
                                "encoder_options": {"patch_size": 4, "embed_dim": 16,
                                                    "depth": 1, "heads": 2}})
    run = RunDir(tmp_path / "mask")
    run.path.mkdir()
    method, summary = fit(mask_config, data, run)
    assert summary["steps"] == 2
    errors = method.reconstruction_error(data.inputs(np.arange(4)))
    assert errors.shape == (4,) and torch.isfinite(errors).all()

    sup_config = build_config({**options, "method": "supervised-series",
                               "encoder": "dilated_cnn", "encoder_options": TINY_CNN})
    run = RunDir(tmp_path / "sup")
    run.path.mkdir()
    method, _ = fit(sup_config, data, run)
    assert method.predict(data.inputs(np.arange(5))).shape == (5,)


def test_too_short_series_for_the_patch_is_refused(series_npz, tmp_path):
    refusal = r"waves\.npz \(train\): series \d+ has .* steps, fewer than the 64"
    with pytest.raises(SelfsupError, match=refusal):
        pretrain("ts-mask", data=str(series_npz), out=str(tmp_path / "short"), steps=1,
                 batch_size=8, encoder_options={"patch_size": 64, "embed_dim": 16, "depth": 1,
                                                "heads": 2},
                 data_options={"split": "train"}, progress=False, monitor_size=0)
    assert not (tmp_path / "short").exists()  # the failed run leaves no empty folder behind


def test_bad_data_leaves_no_run_folder_but_keeps_one_that_was_there(tmp_path):
    x = np.random.default_rng(0).normal(size=(8, 1, 16)).astype(np.float32)
    x[3, 0, 5] = np.nan
    np.savez(tmp_path / "gap.npz", X=x)
    for out in (tmp_path / "new", tmp_path / "mine"):
        if out.name == "mine":
            out.mkdir()  # the user's own folder, empty: never removed
        with pytest.raises(SelfsupError, match="series 3 has a missing value"):
            pretrain("ts-contrast", data=str(tmp_path / "gap.npz"), out=str(out), steps=1,
                     batch_size=4, progress=False, monitor_size=0)
    assert not (tmp_path / "new").exists() and (tmp_path / "mine").is_dir()


def test_the_label_efficiency_sweep_and_report_work_unchanged_on_a_series_run(
    series_npz, tmp_path, monkeypatch, capsys
):
    """The same `selfsup evaluate --fractions` and `selfsup report` as for images: per-seed
    probes and the supervised-series baseline, the curve and the verdict in the page."""
    run = pretrain("ts-contrast", data=str(series_npz), out=str(tmp_path / "run"), steps=3,
                   batch_size=8, encoder_options=TINY_CNN, data_options={"split": "train"},
                   progress=False, monitor_size=0, precision="32", log_every_steps=1)
    commands = (
        ["evaluate", str(run.path), "--data", str(series_npz), "--test", str(series_npz),
         "--test-option", "split=test", "--fractions", "0.5,1", "--seeds", "2",
         "--baseline-steps", "2", "--no-progress"],
        ["report", str(run.path)],
    )
    for args in commands:
        monkeypatch.setattr(sys, "argv", ["selfsup", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 0, capsys.readouterr().err
    sweep = json.loads((run.path / "sweep.json").read_text())
    assert [p["budget"] for p in sweep["points"]] == ["50%", "100%"]
    assert sweep["num_test"] == 8 and sweep["seeds"] == 2
    for point in sweep["points"]:
        assert [r["seed"] for r in point["runs"]] == [0, 1]
        for r in point["runs"]:
            for protocol in ("linear", "knn", "supervised"):
                assert 0 <= r[protocol]["accuracy"] <= 1
        assert point["summary"]["supervised"]["accuracy"]["n"] == 2
    full = sweep["points"][1]["runs"]
    assert all(r["num_labels"] == 24 for r in full)  # 100%: every training series
    assert all(r["num_labels"] == 12 for r in sweep["points"][0]["runs"])
    page = (run.path / "report.html").read_text().replace("&#x27;", "'")
    assert verdict(sweep, quality=sweep.get("quality")) in page
    assert "data:image/png;base64," in page
