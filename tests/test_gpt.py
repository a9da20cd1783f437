"""The GPT: causal mask, rotary layout, training through the engine, generation, HF export."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.errors import SelfsupError
from selfsup.evaluate.language import validation_loss
from selfsup.generate import next_token_distribution, sample
from selfsup.models.gpt import GPT, GPTConfig, causal_attention


def tiny(vocab=11, block=16) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, d_model=32))


def test_no_future_leakage():
    model = tiny().eval()
    tokens = torch.randint(0, 11, (2, 16))
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 11
    with torch.no_grad():
        before, after = model.logits(tokens), model.logits(changed)
    assert torch.equal(before[:, :9], after[:, :9])  # positions before t+1 are untouched
    assert not torch.allclose(before[:, 9:], after[:, 9:])


def test_training_attention_is_causal_softmax_attention_with_the_fused_kernels_gradients():
    """Training on a CPU writes attention out as matmuls instead of the fused kernel; both must
    be softmax(q k^T / sqrt(d)) v over positions up to and including the query's."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, requires_grad=True) for _ in range(3))
    explicit = causal_attention(q, k, v)
    reference = torch.stack(
        [(q[..., [t], :] @ k[..., : t + 1, :].transpose(-1, -2) / 8**0.5).softmax(-1)
         @ v[..., : t + 1, :] for t in range(7)], dim=2,
    ).squeeze(-2)
    assert torch.allclose(explicit, reference, atol=1e-6)
    grads = torch.autograd.grad(explicit.square().sum(), (q, k, v))
    fused = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    fused_grads = torch.autograd.grad(fused.square().sum(), (q, k, v))
    for grad, fused_grad in zip(grads, fused_grads, strict=True):
        assert torch.allclose(grad, fused_grad, atol=1e-5)
    # The model in training takes this path and still sees no future token.
    model = tiny()
    tokens = torch.randint(0, 11, (2, 16))
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 11
    before, after = model.logits(tokens), model.logits(changed)
    assert before.requires_grad
    assert torch.allclose(before[:, :9], after[:, :9], atol=1e-6)
    assert not torch.allclose(before[:, 9:], after[:, 9:])
    with torch.no_grad():  # the fused kernel, at inference
        assert torch.allclose(model.logits(tokens), before, atol=1e-5)


def test_encoder_contract_and_context_limit():
    model = tiny()
    assert model(torch.randint(0, 11, (3, 10))).shape == (3, model.embed_dim)
    with pytest.raises(ValueError, match="exceed the context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_validation_loss_scores_every_token_once():
    model = tiny()
    tokens = np.random.default_rng(0).integers(0, 11, size=50)
    result = validation_loss(model, tokens, block_size=16, precision="32",
                             unit_lengths=np.full(11, 2), unit="byte")
    assert result["tokens"] == 49
    # The same figure by hand: consecutive windows, the last one shorter.
    total = 0.0
    ids = torch.from_numpy(tokens)
    with torch.no_grad():
        for start in range(0, 49, 16):
            window = ids[start : start + 17]
            logits = model.logits(window[None, :-1])[0]
            total += torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum").item()
    assert result["loss"] == pytest.approx(total / 49, rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(result["bits_per_token"] / 2, rel=1e-6)


def test_sampling_filters():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert (next_token_distribution(logits, 1.0, 2, None)[2:] == 0).all()
    probs = next_token_distribution(logits, 1.0, None, 0.5)  # the top token alone has p > 0.5
    assert probs[0] == 1.0
    assert next_token_distribution(logits, 1.0, None, 0.9)[3] == 0
    assert torch.isclose(next_token_distribution(logits, 1.0, None, None).sum(), torch.tensor(1.0))


def test_generation_is_deterministic_under_a_seed():
    model = tiny()
    draw = lambda seed: list(sample(model, [1, 2, 3], 30, temperature=1.0, top_k=5, seed=seed))  # noqa: E731
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    greedy = list(sample(model, [1, 2, 3], 5, temperature=0))
    assert greedy == list(sample(model, [1, 2, 3], 5, temperature=0, seed=99))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    import selfsup.api as api

    root = tmp_path_factory.mktemp("gpt")
    corpus = root / "corpus.txt"
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question"]
    corpus.write_text(" ".join(rng.choice(words, size=3000)) + "\n", encoding="utf-8")
    run = api.pretrain(
        "gpt", str(corpus), out=str(root / "run"), steps=60, batch_size=16, lr=3e-3,
        encoder="gpt_tiny", progress=False, cache_dir=str(root / "cache"),
        data_options={"block_size": 32},
    )
    return run


def test_pretrain_writes_tokenizer_and_whole_split_loss(trained_run):
    language = json.loads((trained_run.path / "language.json").read_text())
    assert (trained_run.path / "tokenizer.json").is_file()
    assert language["split"] == "validation"
    assert language["tokens"] > 1000  # the whole last 10%, not a sample
    # Random words from 8: far below the uniform loss over the vocabulary after 60 steps.
    assert language["loss"] < 0.8 * np.log(len(set("tobeornotthatisquestion \n")) + 1)


def test_the_gpt_optimiser_defaults_apply_under_the_users_options(trained_run):
    import yaml

    config = yaml.safe_load((trained_run.path / "config.yaml").read_text())
    assert config["batch_size"] == 16 and config["lr"] == 3e-3  # the user's
    assert (config["adam_beta2"], config["grad_clip"], config["weight_decay"]) == (0.99, 1.0, 0.1)
    assert config["optimizer"] == "muon"  # the method's, as the user chose none
    checkpoint = torch.load(trained_run.last_checkpoint, weights_only=False)
    muon, *adamw = checkpoint["optimizer_states"][0]["param_groups"]
    # Muon's group holds the linear layers' weights; AdamW's the embedding, then norms.
    assert muon["adjust_lr_fn"] == "match_rms_adamw" and muon["weight_decay"] == 0.1
    assert [group["betas"] for group in adamw] == [(0.9, 0.99)] * 2
    assert [group["weight_decay"] for group in adamw] == [0.1, 0.0]


def test_generate_cli_is_seeded_and_streams(trained_run, monkeypatch, capsys):
    from selfsup.cli import main

    def generate(seed):
        monkeypatch.setattr(sys, "argv", ["selfsup", "generate", str(trained_run.path),
                                          "--prompt", "to be", "--max-new-tokens", "40",
                                          "--seed", str(seed), "--top-p", "0.9"])
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 0
        return capsys.readouterr().out

    first = generate(1)
    assert first.startswith("to be") and len(first) == len("to be") + 40 + 1
    assert generate(1) == first
    assert generate(2) != first


def test_generate_refuses_unknown_characters(trained_run):
    from selfsup.generate import generate

    with pytest.raises(SelfsupError, match="not in the vocabulary"):
        generate(trained_run.path, "Zebra", 5)


def test_hf_export_round_trip(trained_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfsup.export import export_hf
    from selfsup.generate import load_language_model

    out = export_hf(trained_run.path, tmp_path / "hf")
    model, tokenizer = load_language_model(trained_run.path)
    hf_model = AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    text = "to be or not that is the"  # within the 32-token context
    ids = hf_tokenizer(text)["input_ids"]
    assert ids == tokenizer.encode(text).ids
    assert hf_tokenizer.decode(ids) == text
    tokens = torch.tensor([ids])
    with torch.no_grad():
        ours, theirs = model.logits(tokens), hf_model(tokens).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
