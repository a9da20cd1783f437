"""How near the bf16 peak the Shakespeare GPT's training matmuls run, and why (issue 25).

The 135 s recipe trains at about 27% of the bf16 peak counting the whole step
(`benchmarks/shakespeare_char.py`). This script splits that figure: a profiled training step
(forward, loss, backward; bf16 autocast, eager, as many threads as training uses) gives the
time spent inside matmul kernels (aten::mm / addmm / bmm) and their FLOPs, so

- matmul GFLOP/s = matmul FLOPs / time in matmul kernels: how well the kernels themselves run
  at the model's shapes (the issue's "training matmuls"), and
- matmul share = time in matmul kernels / step time (timed over as many steps without the
  profiler): what the rest of the step costs.

The same step is profiled at the recipe's width (128) and at wider models, so the table shows
at which width the kernels reach the issue's 45%. The peak is a 2048^3 bf16 matmul, measured
before and after the profiles (the mean is used; both are reported, as the machine is shared).

    .venv/bin/python benchmarks/gpt_matmul_share.py            # about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from compiled_steps import matmul_peak  # noqa: E402

from selfsup.models.gpt import GPT, GPTConfig  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm"}
VOCAB = 66  # Shakespeare's characters + the separator, as benchmarks/shakespeare_char.py


def profile_step(width: int, layers: int, batch: int, block: int, steps: int) -> dict:
    """Matmul FLOPs, matmul time and step time of ``steps`` profiled training steps."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=block, n_layer=layers, n_head=4,
                          d_model=width))
    tokens = torch.randint(0, VOCAB, (batch, block + 1))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model.logits(tokens[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: allocator, oneDNN primitives
        step()
    started = time.perf_counter()  # the step's time unprofiled: the profiler adds per-op costs
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.key in MATMULS]
    flops = sum(e.flops for e in events)
    matmul_seconds = sum(e.self_cpu_time_total for e in events) / 1e6
    return {"width": width, "layers": layers, "batch": batch, "block": block, "steps": steps,
            "step_ms": round(1e3 * seconds / steps, 2),
            "matmul_ms": round(1e3 * matmul_seconds / steps, 2),
            "matmul_gflops": round(flops / matmul_seconds / 1e9, 1),
            "step_gflops": round(flops / seconds / 1e9, 1),
            "matmul_share": round(matmul_seconds / seconds, 3)}


def markdown(result: dict) -> str:
    peak = result["peak_gflops"]
    lines = [
        "# Shakespeare GPT: how near the bf16 peak its training matmuls run",
        "",
        f"Machine: {result['machine']}, {result['threads']} threads, torch {result['torch']}. "
        f"bf16 peak (2048^3 matmul): {result['peak_before']:.0f} GFLOP/s before the profiles, "
        f"{result['peak_after']:.0f} after; {peak:.0f} used. A profiled training step (forward, "
        f"loss, backward; bf16 autocast, eager), {result['rows'][0]['steps']} steps each, "
        f"batch {result['rows'][0]['batch']} x block {result['rows'][0]['block']} tokens. "
        f"Command: `{result['command']}`.",
        "",
        "| d_model | layers | step (ms) | in matmuls (ms) | matmul share | matmul GFLOP/s "
        "(% of peak) | step GFLOP/s (% of peak) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['width']} | {r['layers']} | {r['step_ms']} | {r['matmul_ms']} | "
            f"{r['matmul_share']:.0%} | {r['matmul_gflops']} ({r['matmul_gflops'] / peak:.0%}) | "
            f"{r['step_gflops']} ({r['step_gflops'] / peak:.0%}) |")
    lines += ["", "The 135 s recipe is the first row (4 layers, 128 wide, batch 32, block 128); "
              "the wider rows are the same model made wider, for comparison only. Step GFLOP/s "
              "counts the matmuls' FLOPs only (the profiler's count), so it is a little below "
              "benchmarks/shakespeare_char.py's figure, which counts 6 per weight per token."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="128,192,256,384,512")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    before = matmul_peak()
    rows = [profile_step(int(w), args.layers, args.batch_size, args.block_size, args.steps)
            for w in args.widths.split(",")]
    after = matmul_peak()
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "command": "python benchmarks/gpt_matmul_share.py", "date": time.strftime("%Y-%m-%d"),
              "peak_before": round(before, 1), "peak_after": round(after, 1),
              "peak_gflops": round((before + after) / 2, 1), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpt_matmul_share.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "gpt_matmul_share.md").write_text(markdown(result))
    print(markdown(result), flush=True)


if __name__ == "__main__":
    main()
