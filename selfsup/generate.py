"""Sampling from a trained GPT run: temperature, top-k and nucleus (top-p), seeded, streamed.

Top-k keeps the k most likely tokens (Fan et al. 2018); top-p keeps the smallest set whose
probability reaches p (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration").
Temperature 0 is greedy decoding. The context is cropped to the model's ``block_size``. Sampling
runs in float32 with its own seeded generator, so the same seed gives the same text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from selfsup.data.tokens import EOS, encode, load_tokenizer
from selfsup.errors import SelfsupError
from selfsup.models.gpt import GPT
from selfsup.run import as_run, load_encoder


def next_token_distribution(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """Probabilities (V,) from last-position ``logits`` (V,) after temperature, top-k, top-p."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the better tokens
        sorted_probs[before >= top_p] = 0.0  # the first token always stays (before = 0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        probs = probs / probs.sum()
    return probs


@torch.no_grad()
def sample(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> Iterator[int]:
    """Yield ``max_new_tokens`` sampled token ids continuing ``prompt``."""
    if not prompt:
        raise SelfsupError("the prompt encodes to no tokens")
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    context = list(prompt)
    block = model.config.block_size
    for _ in range(max_new_tokens):
        window = torch.tensor([context[-block:]], dtype=torch.long)
        logits = model.logits(window)[0, -1]
        if temperature == 0:
            token = int(torch.argmax(logits))
        else:
            probs = next_token_distribution(logits, temperature, top_k, top_p)
            token = int(torch.multinomial(probs, 1, generator=generator))
        context.append(token)
        yield token


def check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None
) -> None:
    """Refuse settings that would sample from NaN probabilities (NaN compares false to all)."""
    if max_new_tokens < 0:
        raise SelfsupError(f"max_new_tokens must not be negative, not {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise SelfsupError(
            f"--temperature must be a finite number >= 0 (0: greedy), not {temperature}"
        )
    if top_k is not None and top_k < 1:
        raise SelfsupError(f"top_k must be at least 1, not {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise SelfsupError(f"top_p must be in (0, 1], not {top_p}")


def load_language_model(run_path: str | Path):
    """The run's GPT (eval mode) and its tokenizer; a clear error for any other run."""

    run = as_run(run_path)
    model, spec = load_encoder(run)
    if not isinstance(model, GPT):
        raise SelfsupError(f"{run.path} holds a {spec.get('name')} encoder, not a language model")
    tokenizer_file = run.path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise SelfsupError(f"{run.path} has no tokenizer.json; was it trained with method gpt?")
    return model, load_tokenizer(tokenizer_file)


def generate(
    run_path: str | Path,
    prompt: str = "\n",
    max_new_tokens: int = 500,
    *,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stream: Callable[[str], None] | None = None,
    echo: bool = False,
) -> str:
    """Sample text from the run's model; ``stream`` receives each new piece of text as it comes.

    Byte-level tokens may end inside a multi-byte character: a piece is held back until its
    character is complete, so streamed text is always valid. ``echo`` streams the prompt first
    (once it is known to encode).
    """

    check_sampling(max_new_tokens, temperature, top_k, top_p)  # before loading or echoing
    model, tokenizer = load_language_model(run_path)
    start = prompt or ("\n" if tokenizer.token_to_id("\n") is not None else EOS)
    ids = encode(tokenizer, start)
    if stream is not None and echo:
        stream(prompt)
    new: list[int] = []
    shown = 0
    text = ""
    for token in sample(model, ids, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed):
        new.append(token)
        text = tokenizer.decode(new, skip_special_tokens=False)
        if stream is not None and not text.endswith("\ufffd"):
            stream(text[shown:])
            shown = len(text)
    if stream is not None and shown < len(text):
        stream(text[shown:])
    return text
