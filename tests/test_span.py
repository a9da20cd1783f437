"""T5 span corruption: noise-mask statistics, inputs + targets reassemble the original text, and
a tiny T5 trained through the engine whose hf/ folder transformers loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import selfsup
from selfsup.errors import SelfsupError
from selfsup.methods.span import corrupt, random_spans_noise_mask
from selfsup.run import load_encoder

WORDS = [
    "the", "film", "was", "a", "wonderful", "surprise", "although", "its", "overlong", "middle",
    "drags",
]
SENTINELS = list(range(1000, 1100))
EOS = 3


def corpus(path: Path, docs: int) -> Path:
    rng = np.random.default_rng(0)
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS, size=int(rng.integers(5, 60))))})
             for _ in range(docs)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def reassemble(inputs: list[int], targets: list[int]) -> list[int]:
    """The original sequence from T5's inputs and targets: each sentinel in the inputs is
    replaced by what follows the same sentinel in the targets."""
    assert inputs[-1] == EOS and targets[-1] == EOS
    spans: dict[int, list[int]] = {}
    current = None
    for token in targets[:-1]:
        if token in SENTINELS:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    out: list[int] = []
    for token in inputs[:-1]:
        out.extend(spans.pop(token) if token in SENTINELS else [token])
    assert not spans  # every span was used exactly once
    return out


def test_noise_mask_density_and_span_length():
    rng = np.random.default_rng(0)
    noise = spans = tokens = 0
    for _ in range(400):
        mask = random_spans_noise_mask(128, 0.15, 3.0, rng)
        assert not mask[0] and mask[-1]  # T5: starts with kept tokens, ends with a span
        noise += int(mask.sum())
        spans += int((np.diff(mask.astype(int)) == 1).sum())
        tokens += len(mask)
    assert noise / tokens == pytest.approx(round(128 * 0.15) / 128)
    assert noise / spans == pytest.approx(3.0, abs=0.2)


def test_inputs_and_targets_reassemble_the_original():
    rng = np.random.default_rng(1)
    for length in [1, 2, 3, 7, 50, 127, 300]:
        tokens = rng.integers(5, 900, size=length)
        mask = random_spans_noise_mask(length, 0.15, 3.0, rng)
        inputs, targets = corrupt(tokens, mask, SENTINELS, EOS)
        assert reassemble(inputs, targets) == tokens.tolist()
        spans = sum(1 for t in inputs if t in SENTINELS)
        assert spans >= 1 and len(inputs) == length - int(mask.sum()) + spans + 1
        assert len(targets) == int(mask.sum()) + spans + 1


def test_span_trains_a_tiny_t5_and_exports_it(tmp_path):
    from transformers import T5ForConditionalGeneration

    from selfsup.models.hf_text import load_hf_tokenizer, mean_pool, tokenize

    data = corpus(tmp_path / "c.jsonl", 60)
    run = selfsup.pretrain(
        "span", str(data), out=str(tmp_path / "run"), steps=3, batch_size=8, precision="32",
        progress=False, cache_dir=str(tmp_path / "cache"),
        method_options={"dim": 32, "layers": 1, "heads": 2},
        data_options={"block_size": 32, "vocab_size": 150},
    )
    summary = json.loads(run.summary.read_text())
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
    tokenizer = load_hf_tokenizer(run.path / "tokenizer.json")
    assert tokenizer.token_to_id("<extra_id_0>") is not None
    model = T5ForConditionalGeneration.from_pretrained(run.path / "hf").eval()
    encoder, spec = load_encoder(run)
    assert spec["name"] == "hf_text" and spec["method"] == "span"
    ids, mask, _ = tokenize(tokenizer, [" ".join(WORDS[:6]), "drags"], 32)
    with torch.no_grad():
        expected = mean_pool(model.encoder(input_ids=ids, attention_mask=mask)
                             .last_hidden_state, mask)
        assert torch.allclose(encoder(ids, mask), expected, atol=1e-5)


def test_span_refuses_init(tmp_path):
    data = corpus(tmp_path / "c.jsonl", 10)
    with pytest.raises(SelfsupError, match="cannot start from --init"):
        selfsup.pretrain("span", str(data), init=str(tmp_path), out=str(tmp_path / "r"),
                         steps=1)
