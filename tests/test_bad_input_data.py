"""Bad input to the data readers, embed/index/search, generate and export (issue 28).

Each case ends in one ``error: ...`` line naming the file (row, index) and exit code 2, or in a
bounded, documented behaviour; never a traceback, a hang or a half-written output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.cli import main

LONG_TEXT = " ".join(["the cat sat on the mat and the dog ran"] * 500)  # 5,000 words


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["selfsup", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit code 2 and a single ``error: ...`` line holding every needle."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    """A tiny GPT run trained for 2 steps on a small corpus."""
    import selfsup.api as api

    root = tmp_path_factory.mktemp("gpt")
    corpus = root / "corpus.txt"
    words = np.random.default_rng(0).choice(["the", "cat", "sat", "on", "a", "mat"], 2000)
    corpus.write_text(" ".join(words) + "\n", encoding="utf-8")
    return api.pretrain(
        "gpt", str(corpus), out=str(root / "run"), steps=2, batch_size=4, encoder="gpt_tiny",
        progress=False, cache_dir=str(root / "cache"), data_options={"block_size": 32},
    )


# ------------------------------------------------------- (4) exported tokenizers' max length


def _long_text_through_auto_classes(folder: Path, model_class: str = "AutoModel") -> int:
    """Tokenize LONG_TEXT with truncation and run the model on it; the sequence length."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = getattr(transformers, model_class).from_pretrained(folder).eval()
    batch = tokenizer(LONG_TEXT, truncation=True, return_tensors="pt")
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return int(batch["input_ids"].shape[1])


def test_saved_hf_folder_tokenizer_truncates_to_the_models_positions(tmp_path):
    from selfsup.models.hf_text import (
        HFTextEncoder,
        save_hf_folder,
        small_bert_config,
        wordpiece_tokenizer,
    )

    tokenizer = wordpiece_tokenizer([LONG_TEXT] * 4, vocab_size=60)
    torch.manual_seed(0)
    config = small_bert_config(tokenizer.get_vocab_size(), dim=32, layers=1, heads=2,
                               max_length=24)
    save_hf_folder(HFTextEncoder(config).model, tokenizer, tmp_path / "hf")
    saved = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 24
    assert _long_text_through_auto_classes(tmp_path / "hf") == 24


def test_max_positions_leaves_out_robertas_padding_offset():
    from transformers import RobertaConfig, T5Config

    from selfsup.models.hf_text import max_positions

    assert max_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert max_positions(T5Config()) == 512


def test_exported_gpt_tokenizer_truncates_to_the_block_size(gpt_run, tmp_path):
    from selfsup.export import export_hf

    out = export_hf(gpt_run.path, tmp_path / "hf")
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 32
    assert _long_text_through_auto_classes(out) == 32
    assert _long_text_through_auto_classes(out, "AutoModelForCausalLM") == 32
