"""One engine: every Lightning Trainer is built by selfsup.engine.build_trainer (issue 27)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch import nn

import selfsup
import selfsup.evaluate.finetune
from selfsup import checkpoint_io, engine
from selfsup.data.images import ImageData
from selfsup.evaluate.finetune import FinetuneConfig, finetune
from selfsup.evaluate.text import TextSplit, Tokenized, finetune_text, text_finetune_config

PACKAGE = Path(selfsup.__file__).parent


def _sources() -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text(encoding="utf-8")
            for p in sorted(PACKAGE.rglob("*.py"))}


def test_pl_trainer_is_built_in_one_place() -> None:
    where = {name: text.count("pl.Trainer(") for name, text in _sources().items()}
    assert sum(where.values()) == 1, {name: n for name, n in where.items() if n}
    assert where["engine.py"] == 1


def test_no_module_imports_a_private_name_from_the_engine() -> None:
    private = re.compile(r"from selfsup\.engine import [^\n]*\b_\w+")
    offenders = [name for name, text in _sources().items() if private.search(text)]
    assert offenders == []


def test_build_trainer_owns_the_shared_settings() -> None:
    trainer = engine.build_trainer(precision="bf16", max_epochs=None)
    assert trainer.precision == "bf16-mixed"
    assert trainer.max_epochs == -1 and trainer.max_steps == -1
    assert trainer.num_sanity_val_steps == 0 and trainer.checkpoint_callback is None
    assert not isinstance(trainer.strategy.checkpoint_io, checkpoint_io.AtomicCheckpointIO)

    trainer = engine.build_trainer(precision="32", max_steps=7, checkpoints=True)
    assert trainer.precision == "32-true" and trainer.max_steps == 7
    assert isinstance(trainer.strategy.checkpoint_io, checkpoint_io.AtomicCheckpointIO)


class _Built(Exception):
    """Raised by the fake build_trainer: the arguments are recorded, nothing is trained."""


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    calls: dict[str, Any] = {}

    def fake(**kwargs: Any) -> None:
        calls.update(kwargs)
        raise _Built

    # Where image and text fine-tuning look it up (finetune.finetune_trainer builds both).
    monkeypatch.setattr(selfsup.evaluate.finetune, "build_trainer", fake)
    return calls


class _Encoder(nn.Module):
    embed_dim = 4


def test_image_finetuning_passes_its_accelerator_and_devices(recorded: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    data = ImageData(images=rng.integers(0, 255, (40, 8, 8, 3)).astype(np.uint8),
                     labels=labels.astype(np.int64), class_names=["a", "b"], source="toy")
    config = FinetuneConfig(minutes=1.0, precision="32", accelerator="gpu", devices=3)
    with pytest.raises(_Built):
        finetune(_Encoder(), data, data, config)
    assert recorded["accelerator"] == "gpu" and recorded["devices"] == 3
    assert recorded["precision"] == "32"


def test_text_finetuning_passes_its_accelerator_and_devices(recorded: dict[str, Any]) -> None:
    ids = [np.array([1, 2 + i % 5, 3]) for i in range(40)]
    split = TextSplit(Tokenized(ids, 8, 0), np.arange(40) % 2, 0)
    config = text_finetune_config(minutes=1.0, precision="32", accelerator="auto", devices=2)
    with pytest.raises(_Built):
        finetune_text(_Encoder(), split, split, 2, config)
    assert recorded["accelerator"] == "auto" and recorded["devices"] == 2


def test_finetuning_defaults_to_one_cpu() -> None:
    config = FinetuneConfig()
    assert (config.accelerator, config.devices) == ("cpu", 1)
