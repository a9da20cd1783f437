"""The command line: help for every verb, and bad input -> one message, exit code 2."""


import numpy as np
import pytest
from helpers import run_cli


@pytest.mark.parametrize("verb", ["pretrain", "evaluate", "demo"])
def test_help_explains_every_verb(monkeypatch, capsys, verb):
    code, out, _ = run_cli(monkeypatch, capsys, verb, "--help")
    assert code == 0 and "Usage" in out


def test_pretrain_help_lists_the_budget_options(monkeypatch, capsys):
    _, out, _ = run_cli(monkeypatch, capsys, "pretrain", "--help")
    for option in ("--minutes", "--epochs", "--steps", "--resume", "--config", "--precision",
                   "--checkpoint-steps"):
        assert option in out


def test_unknown_option_is_a_usage_error_not_a_traceback(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--no-such-option", "1")
    assert code == 2 and "Traceback" not in err and "--no-such-option" in err


def bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    wrong_keys = tmp_path / "wrong.npz"
    np.savez(wrong_keys, pictures=np.zeros((4, 8, 8, 3), np.uint8))
    counts = tmp_path / "counts.npz"
    np.savez(counts, images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.zeros(3, np.int64))
    return {
        "missing": (str(tmp_path / "nope"), "nope"),
        "empty folder": (str(empty), "empty"),
        "corrupt image": (str(broken), "a.jpg"),
        "npz keys": (str(wrong_keys), "wrong.npz"),
        "label count": (str(counts), "counts.npz"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "empty folder", "corrupt image", "npz keys", "label count"]
)
def test_bad_data_is_one_clear_message_and_exit_2(monkeypatch, capsys, tmp_path, case):
    path, named = bad_inputs(tmp_path)[case]
    code, _, err = run_cli(
        monkeypatch, capsys, "pretrain", "simclr", "--data", path, "--steps", "1",
        "--out", str(tmp_path / "run"), "--no-progress",
    )
    assert code == 2
    assert "Traceback" not in err and named in err
    assert len([line for line in err.strip().splitlines() if line.strip()]) <= 3


def test_unknown_method_and_encoder(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclrr", "--steps", "1",
                           "--out", str(tmp_path / "r"))
    assert code == 2 and "simclr" in err
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--encoder", "vgg",
                           "--data", "digits", "--steps", "1", "--out", str(tmp_path / "r2"),
                           "--no-progress")
    assert code == 2 and "resnet18" in err


def test_evaluate_a_directory_that_is_not_a_run(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", str(tmp_path), "--data", "digits")
    assert code == 2 and "encoder" in err


def test_a_misspelt_nested_option_lists_the_valid_ones(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--steps", "1",
                           "--data", "digits", "--method-option", "temprature=0.2",
                           "--out", str(tmp_path / "r"))
    assert code == 2 and "Traceback" not in err
    assert "temprature" in err and "temperature" in err and "projection_dim" in err


def test_every_config_field_is_an_option_with_its_help(monkeypatch, capsys):
    """Options are declared once, in the config: --help lists each field with its help."""
    import dataclasses

    from selfsup.config import PretrainConfig
    from selfsup.options import flag

    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = run_cli(monkeypatch, capsys, "pretrain", "--help")
    for field in dataclasses.fields(PretrainConfig):
        if field.name == "method":
            continue
        assert flag(field.name, field.type if "dict" not in str(field.type) else dict[str, int]
                    ) in out, field.name
        assert field.metadata["help"].split()[0] in out, field.name
    # Per-method defaults are shown where a method changes one (gpt's batch of 8).
    assert "gpt 8" in out


def test_config_only_options_reach_the_run(monkeypatch, capsys, tmp_path):
    out = tmp_path / "r"
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "simclr", "--data", "digits",
                           "--steps", "2", "--batch-size", "64", "--encoder-option", "width=8",
                           "--no-progress", "--log-every-steps", "1", "--weight-decay", "0.01",
                           "--warmup-fraction", "0.2", "--no-channels-last", "--out", str(out))
    assert code == 0, err
    saved = (out / "config.yaml").read_text()
    for line in ("log_every_steps: 1", "weight_decay: 0.01", "warmup_fraction: 0.2",
                 "channels_last: false"):
        assert line in saved, line


def test_every_evaluate_option_is_declared_once(monkeypatch, capsys):
    """`selfsup evaluate`'s options come from EvaluateOptions: each field, with its help."""
    import dataclasses

    from selfsup.options import EvaluateOptions

    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = run_cli(monkeypatch, capsys, "evaluate", "--help")
    for field in dataclasses.fields(EvaluateOptions):
        spelled = "--" + field.name.removesuffix("s").replace("_", "-") if field.name.endswith(
            "_options") else "--" + field.name.replace("_", "-")
        assert spelled in out, field.name
        assert field.metadata["help"].split()[0] in out, field.name
