"""Series pooled across files (issue 29) and the MiniRocket reference row.

Pooled pre-training reads many series files as one unlabelled set (channel by channel when the
channel counts differ); the encoder it leaves reads any length and, when channel-independent,
any channel count. MiniRocket (aeon) is fitted on the same labels and test split as the probes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run_cli

import selfsup
from selfsup.api import pretrain
from selfsup.data.prepare import prepare
from selfsup.data.series import load_series
from selfsup.errors import SelfsupError
from selfsup.evaluate.minirocket import minirocket_reference
from selfsup.evaluate.scores import summarise_point
from selfsup.models import build_encoder
from selfsup.report import verdict
from selfsup.run import load_encoder

TINY_CNN = {"hidden": 8, "depth": 2, "embed_dim": 16}


def waves(n: int, channels: int, width: int, seed: int, variable: bool = False):
    """Two classes (sine vs square wave) of ``channels``-channel series, NaN-padded."""
    rng = np.random.default_rng(seed)
    x = np.full((n, channels, width), np.nan, dtype=np.float32)
    lengths = rng.integers(width // 2, width + 1, size=n) if variable else np.full(n, width)
    y = np.arange(n) % 2
    for i in range(n):
        t = np.arange(lengths[i]) / 3.0 + rng.uniform(0, 6)
        wave = np.sin(t) if y[i] == 0 else np.sign(np.sin(t))
        for c in range(channels):
            x[i, c, : lengths[i]] = (c + 1) * wave + 0.1 * rng.normal(size=lengths[i])
    return x, y, lengths


def ucr_file(path, n, channels, width, seed, variable=False, labels=True):
    x, y, lengths = waves(n, channels, width, seed, variable)
    xt, yt, lt = waves(n // 2, channels, width + (3 if variable else 0), seed + 1, variable)
    arrays = {"X_train": x, "len_train": lengths, "X_test": xt, "len_test": lt}
    if labels:
        arrays.update(y_train=y, y_test=yt)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def three_files(tmp_path):
    return [ucr_file(tmp_path / "a.npz", 20, 1, 40, 0),
            ucr_file(tmp_path / "b.npz", 16, 3, 24, 1, variable=True),
            ucr_file(tmp_path / "c.npz", 12, 1, 60, 2)]


def test_pooled_files_become_one_unlabelled_set_channel_by_channel(three_files):
    data = load_series(",".join(map(str, three_files)))
    assert data.labels is None  # labels are never read
    assert data.channel_independent  # channel counts 1, 3, 1 differ
    assert len(data) == 20 + 16 * 3 + 12 and data.channels == 1
    assert data.values.shape[2] == 60  # padded to the longest
    # b's series are split channel by channel, each keeping its series' length.
    b = load_series(three_files[1])
    start = 20
    assert np.array_equal(data.lengths[start:start + 48], np.repeat(b.lengths, 3))
    assert np.array_equal(data.values[start + 4, 0, :24], b.values[1, 1])
    inputs = data.encoder_inputs()
    assert inputs["channel_independent"] and "instance_norm" not in inputs  # levels kept
    assert inputs["in_channels"] == 1
    spec = data.encoder_spec()
    assert "length" not in spec and "channels" not in spec  # reads any of either


def test_pooled_files_of_one_channel_count_keep_their_channels(three_files, tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    for f in (three_files[0], three_files[2]):
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "notes.txt").write_text("not a series file")
    data = load_series(folder)  # a folder: its series files, sorted
    assert not data.channel_independent and data.channels == 1
    assert len(data) == 32 and data.pooled_from[0].endswith("a.npz (train)")
    assert data.encoder_spec()["channels"] == 1


def test_channel_independent_encoder_concatenates_per_channel_embeddings():
    encoder = build_encoder("dilated_cnn", in_channels=1, channel_independent=True,
                            **TINY_CNN).eval()
    x = torch.randn(4, 3, 30)
    x[1, :, 20:] = float("nan")  # a shorter series: its padding holds for every channel
    out = encoder(x)
    assert out.shape == (4, 3 * 16)
    for c in range(3):
        alone = encoder(x[:, c : c + 1])
        assert torch.allclose(out[:, c * 16 : (c + 1) * 16], alone, atol=1e-5)
    with pytest.raises(SelfsupError, match="in_channels must be 1"):
        build_encoder("dilated_cnn", in_channels=2, channel_independent=True)


def test_instance_norm_makes_the_embedding_ignore_each_series_scale_and_offset():
    torch.manual_seed(0)
    encoder = build_encoder("dilated_cnn", in_channels=1, instance_norm=True,
                            **TINY_CNN).eval()
    x = torch.randn(3, 1, 25)
    scaled = x * torch.tensor([2.0, 10.0, 0.5])[:, None, None] + 7.0
    assert torch.allclose(encoder(x), encoder(scaled), atol=1e-4)
    plain = build_encoder("dilated_cnn", in_channels=1, **TINY_CNN).eval()
    assert not torch.allclose(plain(x), plain(scaled), atol=1e-2)


def test_a_pooled_run_is_evaluated_on_any_one_file_with_minirocket_beside_it(
    three_files, tmp_path
):
    run = pretrain("ts-contrast", data=",".join(map(str, three_files)), out=str(tmp_path / "r"),
                   steps=3, batch_size=8, encoder_options=TINY_CNN, progress=False,
                   monitor_size=0, precision="32")
    encoder, spec = load_encoder(run)
    assert spec["options"]["channel_independent"] and len(spec["pooled_from"]) == 3
    # The three-channel file: embedded channel by channel (3 x 16 features), probed.
    result = selfsup.evaluate(run.path, str(three_files[1]), str(three_files[1]), baseline=False,
                              test_options={"split": "test"}, progress=False)
    assert result["num_train"] == 16 and result["num_test"] == 8
    reference = result["minirocket"]
    assert 0 <= reference["accuracy"] <= 1 and reference["fit_seconds"] > 0
    assert reference["num_train"] == 16
    saved = json.loads(run.eval.read_text())
    assert saved["minirocket"]["accuracy"] == reference["accuracy"]
    assert "MiniRocket" in verdict(None, saved)


def test_minirocket_separates_an_easy_task_and_pads_unequal_train_and_test_lengths(tmp_path):
    path = ucr_file(tmp_path / "v.npz", 40, 2, 30, 5, variable=True)
    train, test = load_series(path, {"split": "train"}), load_series(path, {"split": "test"})
    assert train.values.shape[2] != test.values.shape[2]
    result = minirocket_reference(train, test, seed=0, n_kernels=840)
    assert result["accuracy"] >= 0.9  # sine vs square waves: MiniRocket's features tell them
    again = minirocket_reference(train, test, seed=0, n_kernels=840)
    assert again["accuracy"] == result["accuracy"]  # deterministic under its seed


def test_verdict_says_whether_ssl_beat_minirocket():
    evaluation = {"linear": {"accuracy": 0.90}, "minirocket": {"accuracy": 0.95,
                                                               "fit_seconds": 1.2}}
    text = verdict(None, evaluation)
    assert "trails it by 5.0 points" in text and "MiniRocket is the better model" in text
    evaluation["linear"]["accuracy"] = 0.97
    assert "beats it by 2.0 points" in verdict(None, evaluation)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("mixed_labels", "has no labels but"),
        ("empty", "no series"),
        ("missing", "no such file"),
    ],
)
def test_bad_pooled_input_is_one_message_naming_the_file_and_exit_2(
    make, message, three_files, tmp_path, monkeypatch, capsys
):
    files = list(three_files)
    if make == "mixed_labels":
        files.append(ucr_file(tmp_path / "unlabelled.npz", 8, 1, 40, 9, labels=False))
        odd = "unlabelled.npz"
    elif make == "empty":
        np.savez(tmp_path / "empty.npz", X=np.zeros((0, 1, 10), dtype=np.float32))
        files.append(tmp_path / "empty.npz")
        odd = "empty.npz"
    else:
        files.append(tmp_path / "nowhere.npz")
        odd = "nowhere.npz"
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "ts-contrast", "--data",
                           ",".join(map(str, files)), "--steps", "2", "--out", str(out),
                           "--no-progress")
    assert code == 2, err
    assert message in err and odd in err and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_prepared_pooled_shards_keep_how_the_encoder_is_built(three_files, tmp_path):
    prepare(",".join(map(str, three_files)), tmp_path / "shards", progress=False)
    data = load_series(tmp_path / "shards")
    direct = load_series(",".join(map(str, three_files)))
    assert data.channel_independent and data.pooled_from == direct.pooled_from
    assert np.array_equal(np.asarray(data.values[:]), direct.values)
    assert data.encoder_inputs() == direct.encoder_inputs()


def test_the_sweep_summary_pairs_ssl_with_minirocket_and_the_verdict_says_so():
    runs = [{"linear": {"accuracy": a, "macro_f1": a}, "knn": {"accuracy": a, "macro_f1": a},
             "minirocket": {"accuracy": m, "macro_f1": m}} for a, m in ((0.8, 0.9), (0.9, 0.9))]
    summary = summarise_point(runs)
    assert summary["minirocket"]["accuracy"]["mean"] == pytest.approx(0.9)
    assert summary["linear_minus_minirocket"]["mean"] == pytest.approx(-0.05)
    sweep = {"points": [{"budget": "5/class", "labels_per_class": 5, "fraction": None,
                         "num_labels": 10, "summary": summary}],
             "seeds": 2, "chance_accuracy": 0.5, "num_test": 100, "test_data": "t"}
    assert "SSL + linear probe trails it by 5.0 ± 7.1 points with 5 labels per class" in (
        verdict(sweep))


def test_the_cli_prints_the_minirocket_row_and_the_verdict_names_it(
    three_files, tmp_path, monkeypatch, capsys
):
    run = pretrain("ts-contrast", data=str(three_files[0]), out=str(tmp_path / "r"), steps=2,
                   batch_size=8, encoder_options=TINY_CNN, progress=False, monitor_size=0,
                   precision="32", data_options={"split": "train"})
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", str(run.path), "--data",
                             str(three_files[0]), "--test", str(three_files[0]),
                             "--test-option", "split=test", "--no-baseline", "--no-progress")
    assert code == 0, err
    assert "MiniRocket (reference)" in out
    assert "Verdict: " in out and "MiniRocket (random convolutions" in " ".join(out.split())
