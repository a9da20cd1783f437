"""Eager against compiled training steps, side by side (issue 25, items 1, 3 and 6).

Each workload is one method's real training step (``Method.training_step``: batched
augmentation, encoder, head, loss) with the engine's optimiser (AdamW), bf16 autocast and
channels-last, run eagerly and through ``selfsup.compiling.CompiledStep`` (what
``--compile on`` wraps the step in). The two alternate in rounds, so both see the same machine
load; the report gives each round's ratio, their median, and the load average before and after.
Compilation (the first compiled step, forward and backward) is timed apart and left out of the
throughput.

- SimCLR, resnet_small and ResNet-18, batch 256 of 32x32 images: images/s, each image counted
  once with its two views.
- MAE, vit_tiny, batch 256: images/s.
- GPT, the Shakespeare recipe's model (3 layers, 4 heads, 128 wide, block 128, batch 8):
  tokens/s and GFLOP/s (6 per weight per token + causal attention), against the bf16 matmul
  peak measured in this script (2048 x 2048 x 2048); also with fused AdamW.

    .venv/bin/python benchmarks/compiled_steps.py            # ~10 min
    .venv/bin/python benchmarks/compiled_steps.py --quick    # ~2 min: resnet_small and GPT only

Writes benchmarks/results/compiled_steps.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfsup.compiling import CompiledStep  # noqa: E402
from selfsup.data.base import DataInfo  # noqa: E402
from selfsup.methods import METHODS  # noqa: E402
from selfsup.models import build_encoder  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def matmul_peak(size: int = 2048, seconds: float = 2.0) -> float:
    """bf16 GFLOP/s of one large square matmul: the hardware's practical peak here."""
    a, b = torch.randn(size, size, dtype=torch.bfloat16), torch.randn(size, size,
                                                                     dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


class Workload:
    """One method's training step and its optimiser, eager or compiled."""

    def __init__(self, method: str, encoder: str, batch: dict[str, torch.Tensor],
                 info: DataInfo, encoder_options: dict, *, compiled: bool, fused: bool = False,
                 channels_last: bool = True) -> None:
        torch.manual_seed(0)
        model = build_encoder(encoder, **encoder_options)
        self.method = METHODS.get(method)(model, info, channels_last=channels_last)
        if channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.method.parameters(), lr=1e-4,
                                           fused=True if fused else None)
        self.step_fn = (CompiledStep(self.method.training_step, method, strict=True)
                        if compiled else self.method.training_step)
        self.batch = batch
        self.generator = torch.Generator().manual_seed(0)

    def step(self) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = self.step_fn(self.batch, self.generator).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.method.parameters(), 3.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def side_by_side(variants: dict[str, Workload], steps: int, rounds: int) -> dict:
    """Warm every variant (compiling the compiled ones), then alternate ``steps`` steps of each
    for ``rounds`` rounds; seconds per step, per variant and round."""
    warm = {}
    for name, work in variants.items():
        start = time.perf_counter()
        work.step()
        work.step()  # the second step: the backward graph and the optimiser are warm too
        warm[name] = time.perf_counter() - start
    per_round: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, work in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                work.step()
            per_round[name].append((time.perf_counter() - start) / steps)
    return {"warm_up_seconds": warm, "seconds_per_step": per_round}


def image_case(method: str, encoder: str, batch_size: int, steps: int, rounds: int) -> dict:
    images = torch.rand(batch_size, 3, 32, 32)
    info = DataInfo(channels=3, image_size=32, num_images=50_000)
    options = {"in_channels": 3}
    variants = {
        "eager": Workload(method, encoder, {"images": images}, info, options, compiled=False),
        "compiled": Workload(method, encoder, {"images": images}, info, options, compiled=True),
    }
    timing = side_by_side(variants, steps, rounds)
    rates = {name: [batch_size / s for s in values]
             for name, values in timing["seconds_per_step"].items()}
    ratios = [c / e for c, e in zip(rates["compiled"], rates["eager"], strict=True)]
    return {
        "case": f"{method} {encoder}", "unit": "images/s", "batch_size": batch_size,
        "eager": statistics.median(rates["eager"]),
        "compiled": statistics.median(rates["compiled"]),
        "ratio_per_round": ratios, "ratio": statistics.median(ratios),
        "compile_seconds": timing["warm_up_seconds"]["compiled"], **timing,
    }


def gpt_case(steps: int, rounds: int, peak: float) -> dict:
    block, batch_size, vocab = 128, 8, 66
    model = {"n_layer": 3, "n_head": 4, "d_model": 128, "block_size": block,
             "vocab_size": vocab}
    tokens = torch.randint(0, vocab, (batch_size, block + 1))
    info = DataInfo(vocab_size=vocab, length=block)
    make = lambda compiled, fused=False: Workload(  # noqa: E731
        "gpt", "gpt_small", {"tokens": tokens}, info, model, compiled=compiled, fused=fused,
        channels_last=False)
    variants = {"eager": make(False), "compiled": make(True),
                "compiled + fused AdamW": make(True, fused=True)}
    flops = variants["eager"].method.encoder.flops_per_token(block) * batch_size * block
    timing = side_by_side(variants, steps, rounds)
    out = {"case": "gpt (Shakespeare recipe)", "unit": "tokens/s", "batch_size": batch_size,
           "bf16_peak_gflops": peak, "compile_seconds": timing["warm_up_seconds"]["compiled"],
           **timing}
    for name, values in timing["seconds_per_step"].items():
        seconds = statistics.median(values)
        out[name] = batch_size * block / seconds
        out[f"{name} GFLOP/s"] = flops / seconds / 1e9
    ratios = [e / c for c, e in zip(timing["seconds_per_step"]["compiled"],
                                    timing["seconds_per_step"]["eager"], strict=True)]
    out["ratio_per_round"], out["ratio"] = ratios, statistics.median(ratios)
    return out


def markdown(result: dict) -> str:
    lines = [
        "# Eager against compiled training steps (`--compile`)", "",
        f"Machine: {result['machine']}; torch {result['torch']}; load average "
        f"{result['load_before']:.2f} before, {result['load_after']:.2f} after. bf16 matmul "
        f"peak measured here: {result['bf16_peak_gflops']:.0f} GFLOP/s (2048^3).", "",
        "Each row: the method's training step with AdamW, bf16 autocast, eager and compiled "
        "alternating in rounds (median of the rounds; the ratio is the median of the rounds' "
        "ratios). Compilation is timed apart (the first two compiled steps).", "",
        "| workload | batch | eager | compiled | ratio (rounds) | compile (s) |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for case in result["cases"]:
        rounds = ", ".join(f"{r:.2f}" for r in case["ratio_per_round"])
        lines.append(
            f"| {case['case']} ({case['unit']}) | {case['batch_size']} | {case['eager']:.1f} | "
            f"{case['compiled']:.1f} | **{case['ratio']:.2f}x** ({rounds}) | "
            f"{case['compile_seconds']:.1f} |"
        )
    gpt = next((c for c in result["cases"] if c["case"].startswith("gpt")), None)
    if gpt:
        peak = gpt["bf16_peak_gflops"]
        lines += ["", "GPT, whole training step (matmuls, everything between them and the "
                  "optimiser) against the measured bf16 peak:", "",
                  "| variant | tokens/s | GFLOP/s | share of the bf16 peak |",
                  "| --- | ---: | ---: | ---: |"]
        for name in ("eager", "compiled", "compiled + fused AdamW"):
            lines.append(f"| {name} | {gpt[name]:,.0f} | {gpt[f'{name} GFLOP/s']:.1f} | "
                         f"{gpt[f'{name} GFLOP/s'] / peak:.0%} |")
    lines += ["", f"Reproduce: `.venv/bin/python benchmarks/compiled_steps.py"
              f"{' --quick' if result['quick'] else ''}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default=str(RESULTS / "compiled_steps"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    load_before = os.getloadavg()[0]
    peak = matmul_peak()
    cases = [image_case("simclr", "resnet_small", 256, 4, args.rounds)]
    print(json.dumps({k: v for k, v in cases[-1].items() if not isinstance(v, dict)}), flush=True)
    if not args.quick:
        for method, encoder, steps in (("simclr", "resnet18", 1), ("mae", "vit_tiny", 3)):
            cases.append(image_case(method, encoder, 256, steps, args.rounds))
            print(json.dumps({k: v for k, v in cases[-1].items() if not isinstance(v, dict)}),
                  flush=True)
    cases.append(gpt_case(30, args.rounds, peak))
    print(json.dumps({k: v for k, v in cases[-1].items() if not isinstance(v, dict)}), flush=True)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "quick": args.quick, "bf16_peak_gflops": peak,
        "load_before": load_before, "load_after": os.getloadavg()[0], "cases": cases,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
