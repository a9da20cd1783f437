"""The method contract is explicit: every hook a caller uses is declared on Method."""

import pathlib
import re

from selfsup.methods import METHODS, Method


def test_every_hook_a_caller_uses_is_declared_with_a_default():
    for name in ("baseline_method", "config_defaults", "supports_init", "init_config_defaults",
                 "prepare_config", "trivial_loss", "needs_labels", "modality",
                 "default_encoder", "on_train_step_start", "on_train_step_end", "callbacks",
                 "on_fit_end"):
        assert hasattr(Method, name), name
    assert Method.prepare_config("config") == "config"  # unchanged by default


def test_no_baseline_is_none_not_a_sentinel():
    for name in ("gpt", "mlm", "span"):
        assert METHODS.get(name).baseline_method is None, name
    for name in METHODS.names():
        baseline = METHODS.get(name).baseline_method
        assert baseline is None or METHODS.get(baseline).needs_labels, name


def test_callers_never_probe_a_method_for_an_attribute():
    hooks = "trivial_loss|supports_init|init_config_defaults|prepare_config|baseline_method"
    probe = re.compile(rf"(getattr|hasattr)\([^,]+,\s*[\"']({hooks})[\"']")
    root = pathlib.Path(__file__).resolve().parents[1] / "selfsup"
    found = [f"{path.relative_to(root)}:{number}"
             for path in root.rglob("*.py")
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if probe.search(line)]
    assert not found, found
