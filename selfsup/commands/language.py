"""`selfsup generate`'s body (its options: selfsup/cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from selfsup.generate import generate as run_generate


def generate(run: Path, prompt: str, max_new_tokens: int, temperature: float,
             top_k: int | None, top_p: float | None, seed: int) -> None:
    """`selfsup generate`: the sampled text, printed as it comes."""

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    run_generate(run, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                 top_p=top_p, seed=seed, stream=stream, echo=True)
    stream("\n")

