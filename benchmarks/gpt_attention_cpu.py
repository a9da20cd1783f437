"""Attention on a CPU: PyTorch's fused kernel against the scores written out as matmuls.

selfsup's GPT computes causal attention with ``F.scaled_dot_product_attention`` except when it
trains on a CPU, where it writes softmax(q k^T / sqrt(d) + mask) v out as matmuls
(selfsup/models/gpt.py, ``causal_attention``): the fused kernel's backward pass is slow there.
This measures that choice, with bf16 autocast where the CPU has native bf16 (as training runs):

- attention alone, forward and backward, at the shape of the default recipe's training;
- a whole training step of the default GPT (4 layers x 128, block 128) at batch 8 and 32,
  with the model's own attention and with the fused kernel forced.

Writes benchmarks/results/gpt_attention_cpu.{json,md}. About a minute.

    .venv/bin/python benchmarks/gpt_attention_cpu.py
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import selfsup.models.gpt as gpt  # noqa: E402
from selfsup.evaluate.language import cpu_has_native_bf16  # noqa: E402

REPEATS = 3  # alternating rounds; the median of each is reported


def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def time_ms(step, warmup: int = 3, iterations: int = 10) -> float:
    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - started) / iterations * 1000


def attention_ms(implementation, bf16: bool, batch: int, length: int) -> float:
    """Forward and backward of attention alone, (batch, 4 heads, length, 32)."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, 4, length, 32, generator=generator, requires_grad=True)
               for _ in range(3))

    def step() -> None:
        with autocast(bf16):
            out = implementation(q, k, v)
        out.float().sum().backward()

    return time_ms(step)


def training_step_ms(implementation, bf16: bool, batch: int, block: int = 128) -> float:
    """One AdamW step of the default GPT (forward, cross-entropy, backward, update)."""
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=66, block_size=block))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(66, (batch, block + 1), generator=torch.Generator().manual_seed(0))
    original = gpt.causal_attention
    gpt.causal_attention = implementation
    try:
        def step() -> None:
            with autocast(bf16):
                logits = model.logits(tokens[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

        return time_ms(step)
    finally:
        gpt.causal_attention = original


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    bf16 = cpu_has_native_bf16()
    cases = {
        "attention alone, batch 32 x 4 heads x 128 x 32": lambda impl: attention_ms(
            impl, bf16, 32, 128),
        "GPT training step, batch 8 x 128 tokens": lambda impl: training_step_ms(impl, bf16, 8),
        "GPT training step, batch 32 x 128 tokens": lambda impl: training_step_ms(impl, bf16, 32),
    }
    implementations = {"fused kernel": fused, "written out (selfsup)": gpt.causal_attention}
    times: dict[str, dict[str, list[float]]] = {c: {i: [] for i in implementations}
                                                 for c in cases}
    for _ in range(REPEATS):  # alternate, so drifting machine speed hits both alike
        for case, measure in cases.items():
            for name, implementation in implementations.items():
                times[case][name].append(measure(implementation))
    rows = []
    for case in cases:
        fused_ms = median(times[case]["fused kernel"])
        written_ms = median(times[case]["written out (selfsup)"])
        rows.append({"case": case, "fused_ms": round(fused_ms, 2),
                     "written_out_ms": round(written_ms, 2),
                     "speed_up": round(fused_ms / written_ms, 2),
                     "all_fused_ms": [round(t, 2) for t in times[case]["fused kernel"]],
                     "all_written_out_ms": [round(t, 2)
                                            for t in times[case]["written out (selfsup)"]]})
        print(f"{case}: fused {fused_ms:.1f} ms, written out {written_ms:.1f} ms "
              f"({fused_ms / written_ms:.2f}x)", flush=True)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "rows": rows,
        "reproduce": ".venv/bin/python benchmarks/gpt_attention_cpu.py",
    }
    lines = [
        "# Causal attention on a CPU: fused kernel vs written out",
        "",
        f"Machine: {result['machine']}; torch {result['torch']}, {result['precision']}, "
        f"{result['threads']} threads. Forward + backward (+ AdamW update for a training "
        f"step); median of {REPEATS} alternating rounds of 10 timed iterations.",
        "",
        "| case | fused kernel (ms) | written out (ms) | speed-up |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {r['case']} | {r['fused_ms']} | {r['written_out_ms']} | {r['speed_up']}x |"
          for r in rows),
        "",
        f"Reproduce: `{result['reproduce']}`",
        "",
    ]
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "gpt_attention_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (results / "gpt_attention_cpu.md").write_text("\n".join(lines))
    print(f"written to {results / 'gpt_attention_cpu'}.{{json,md}}")


if __name__ == "__main__":
    main()
