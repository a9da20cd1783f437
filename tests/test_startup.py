"""Start-up (issue 25): `selfsup --help`, each verb's --help and the argument errors load none
of torch, Lightning or transformers; what --help shows of the methods is their registry's.

The command line runs in a fresh interpreter (helpers.run_in_fresh_interpreter), which
reports what it loaded.
No timing is asserted here: benchmarks/startup.py measures the wall time.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from helpers import HEAVY, run_in_fresh_interpreter

from selfsup import cli
from selfsup.catalog import ENCODER_NAMES, METHOD_CARDS, MethodCard, method_defaults
from selfsup.lazy import resolve
from selfsup.methods import METHODS, Method
from selfsup.models import ENCODERS
from selfsup.registry import Registry

VERBS = sorted(cli.BODIES)
ARGUMENT_ERRORS = {
    "unknown option": ["pretrain", "simclr", "--bogus"],
    "missing argument": ["pretrain"],
    "missing option": ["evaluate", "runs/x"],
    "bad value": ["pretrain", "simclr", "--steps", "many"],
    "bad flag value": ["search", "runs/x", "--k", "ten"],
    "extra argument": ["report", "runs/x", "runs/y"],
    "unknown verb": ["pretrian"],
}
CASES = {"selfsup --help": ["--help"], "selfsup": [],
         **{f"{verb} --help": [verb, "--help"] for verb in VERBS}, **ARGUMENT_ERRORS}


@pytest.fixture(scope="module")
def reports() -> dict[str, dict]:
    """All cases in one fresh interpreter: each case's report, in the order they ran (what a
    case loads stays loaded, so the first case that loads a module is the one to blame)."""
    return dict(zip(CASES, run_in_fresh_interpreter(*CASES.values()), strict=True))


@pytest.mark.parametrize("case", list(CASES))
def test_help_and_argument_errors_load_no_heavy_module(reports, case):
    report = reports[case]
    assert report["loaded"] == [], f"{case}: loaded {report['loaded']}"
    expected = 2 if case in ARGUMENT_ERRORS else 0
    # `selfsup` alone prints the help (no_args_is_help) and exits 2, as click does.
    assert report["code"] == (2 if case == "selfsup" else expected), case


def test_import_selfsup_is_light_and_the_api_still_resolves():
    code = ("import sys, selfsup, selfsup.cli; light = not any(m in sys.modules for m in "
            f"{HEAVY!r}); from selfsup import PretrainConfig; "
            "print(light, PretrainConfig.__module__, callable(selfsup.pretrain))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.split() == ["True", "selfsup.config", "True"], done.stderr[-2000:]


# ---------------------------------------------------------------- one source of truth ----


def _built_in(registry: Registry) -> set[str]:
    """The names the package itself registers (tests register extra ones of their own)."""
    return {name for name in registry.names()
            if registry.get(name).__module__.startswith("selfsup.")}


def test_every_method_has_its_card_and_every_card_a_method():
    assert _built_in(METHODS) == set(METHOD_CARDS), (
        "selfsup/catalog.py METHOD_CARDS must name exactly the registered methods")


def test_every_encoder_is_listed_for_help():
    assert _built_in(ENCODERS) == set(ENCODER_NAMES), (
        "selfsup/catalog.py ENCODER_NAMES must name exactly the registered encoders")
    assert list(ENCODER_NAMES) == sorted(ENCODER_NAMES)


def test_the_method_classes_carry_their_cards():
    for name, card in METHOD_CARDS.items():
        method = METHODS.get(name)
        assert method.modality == card.modality, name
        assert method.config_defaults == card.config_defaults, name
        assert method.init_config_defaults == card.init_config_defaults, name
    assert method_defaults()["gpt"]["batch_size"] == METHODS.get("gpt").config_defaults[
        "batch_size"]
    assert method_defaults()["mlm --init"] == {"lr": 1e-4}


def test_a_class_may_not_redeclare_what_its_card_declares():
    registry: Registry = Registry("method", {"toy": MethodCard("text").class_attributes()})

    class Toy(Method):
        modality = "image"

    with pytest.raises(ValueError, match="sets modality itself"):
        registry.register("toy")(Toy)

    class Plain(Method):
        pass

    registry.register("toy")(Plain)
    assert Plain.modality == "text" and Method.modality == "image"


def test_each_verb_body_takes_the_verbs_parameters():
    """The deferred bodies (selfsup/commands/) take exactly what their command declares."""
    for verb, body in cli.BODIES.items():
        declared = set(inspect.signature(getattr(cli, verb)).parameters)
        taken = inspect.signature(resolve(body)).parameters
        if any(p.kind is p.VAR_KEYWORD for p in taken.values()):
            continue  # pretrain and evaluate read their options from **values
        assert declared == set(taken), verb
