"""Training steps side by side: the engine before issue 25, eager now, and compiled (issue 25,
items 1, 3 and 6).

Each workload is one method's real training step (``Method.training_step``: batched
augmentation, encoder, head, loss) with the engine's optimiser (AdamW), bf16 autocast and
channels-last, in three variants:

- **before**: eager, glibc's default allocator, AdamW's foreach kernels (how the engine ran
  before issue 25);
- **eager**: eager, with freed memory kept in the process (``selfsup.allocator``, which the
  engine now turns on before every fit) and AdamW's fused kernel (``engine.fused_adamw``);
- **compiled**: that, plus the step wrapped in ``selfsup.compiling.CompiledStep`` (what
  ``--compile on`` does).

The allocator is a property of the process, so each variant runs in a process of its own; the
variants alternate in rounds (before, eager, compiled, before, ...), so all see the same machine
load. The report gives the median of the rounds, each round's ratio to "before", and the load
average before and after. Compilation (the first two compiled steps, forward and backward) is
timed apart and left out of the throughput; the first round compiles from a cold inductor cache.

- SimCLR, resnet_small and ResNet-18, batch 256 of 32x32 images: images/s, each image counted
  once with its two views.
- MAE, vit_tiny, batch 256: images/s.
- GPT, the Shakespeare recipe's model (3 layers, 4 heads, 128 wide, block 128, batch 8):
  tokens/s and GFLOP/s (6 per weight per token + causal attention), against the bf16 matmul
  peak measured in this script (2048 x 2048 x 2048).

    .venv/bin/python benchmarks/compiled_steps.py            # ~15 min
    .venv/bin/python benchmarks/compiled_steps.py --quick    # ~4 min: resnet_small and GPT only
    .venv/bin/python benchmarks/compiled_steps.py --profile "gpt (Shakespeare recipe)"

Writes benchmarks/results/compiled_steps.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfsup import allocator  # noqa: E402
from selfsup.compiling import CompiledStep  # noqa: E402
from selfsup.data.base import DataInfo  # noqa: E402
from selfsup.engine import fused_adamw  # noqa: E402
from selfsup.methods import METHODS  # noqa: E402
from selfsup.models import build_encoder  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"

#: case -> (method, encoder, batch size, timed steps per round)
CASES = {
    "simclr resnet_small": ("simclr", "resnet_small", 256, 4),
    "simclr resnet18": ("simclr", "resnet18", 256, 2),
    "mae vit_tiny": ("mae", "vit_tiny", 256, 3),
    "gpt (Shakespeare recipe)": ("gpt", "gpt_small", 8, 150),
}
#: variant -> (the engine's allocator and fused AdamW, compiled)
VARIANTS = {"before": (False, False), "eager": (True, False), "compiled": (True, True)}
GPT_MODEL = {"n_layer": 3, "n_head": 4, "d_model": 128, "block_size": 128, "vocab_size": 66}


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

    def __init__(self, case: str, *, compiled: bool, fused: bool) -> None:
        method, encoder, batch_size, _ = CASES[case]
        torch.manual_seed(0)
        if method == "gpt":
            block = GPT_MODEL["block_size"]
            model = build_encoder(encoder, **GPT_MODEL)
            info = DataInfo(vocab_size=GPT_MODEL["vocab_size"], length=block)
            self.batch = {"tokens": torch.randint(0, GPT_MODEL["vocab_size"],
                                                  (batch_size, block + 1))}
            self.method = METHODS.get(method)(model, info)
            self.flops = model.flops_per_token(block) * batch_size * block
        else:
            model = build_encoder(encoder, in_channels=3)
            info = DataInfo(channels=3, image_size=32, num_images=50_000)
            self.batch = {"images": torch.rand(batch_size, 3, 32, 32)}
            self.method = METHODS.get(method)(model, info, channels_last=True)
            self.method = self.method.to(memory_format=torch.channels_last)
            self.flops = None
        self.optimizer = torch.optim.AdamW(
            self.method.parameters(), lr=1e-4,
            fused=fused_adamw(self.method.parameters()) if fused else None)
        self.step_fn = (CompiledStep(self.method.training_step, method, strict=True)
                        if compiled else self.method.training_step)
        self.generator = torch.Generator().manual_seed(0)

    def step(self) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = self.step_fn(self.batch, self.generator).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.method.parameters(), 3.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def worker(case: str, variant: str) -> dict:
    """In this process: warm the workload (compiling it if compiled), then time its steps."""
    now, compiled = VARIANTS[variant]
    if now and not allocator.retain_freed_memory():
        raise SystemExit("this C library keeps no freed memory (glibc only)")
    work = Workload(case, compiled=compiled, fused=now)
    start = time.perf_counter()
    work.step()
    work.step()  # the second step: the backward graph and the optimiser are warm too
    warm = time.perf_counter() - start
    steps = CASES[case][3]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(steps):
        work.step()
    seconds = (time.perf_counter() - start) / steps
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    return {"warm_up_seconds": warm, "seconds_per_step": seconds,
            "page_faults_per_step": faults, "flops_per_step": work.flops}


def profile(case: str) -> str:
    """The torch profiler's table of 10 compiled steps of ``case``, the engine's way (kept
    memory, fused AdamW), inductor's kernels named: where the time between matmuls goes."""
    torch._inductor.config.cpp.enable_kernel_profile = True
    allocator.retain_freed_memory()
    work = Workload(case, compiled=True, fused=True)
    for _ in range(3):
        work.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            work.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


def run_case(case: str, variants: list[str], rounds: int, env: dict[str, str]) -> dict:
    """Alternate one process per variant for ``rounds`` rounds; each round's seconds per step."""
    per_round: dict[str, list[float]] = {name: [] for name in variants}
    warm: dict[str, list[float]] = {name: [] for name in variants}
    faults: dict[str, list[float]] = {name: [] for name in variants}
    flops = None
    for _ in range(rounds):
        for variant in variants:
            done = subprocess.run([sys.executable, __file__, "--worker", case, variant],
                                  capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{case} / {variant} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            per_round[variant].append(result["seconds_per_step"])
            warm[variant].append(result["warm_up_seconds"])
            faults[variant].append(result["page_faults_per_step"])
            flops = result["flops_per_step"]
    batch_size = CASES[case][2]
    unit_per_step = batch_size * (GPT_MODEL["block_size"] if flops else 1)
    out = {"case": case, "unit": "tokens/s" if flops else "images/s", "batch_size": batch_size,
           "seconds_per_step": per_round, "warm_up_seconds": warm,
           "page_faults_per_step": faults,
           "compile_seconds_cold": warm["compiled"][0]}
    for variant in variants:
        seconds = statistics.median(per_round[variant])
        out[variant] = unit_per_step / seconds
        ratios = [b / s for b, s in zip(per_round["before"], per_round[variant], strict=True)]
        out[f"{variant} ratio"] = statistics.median(ratios)
        out[f"{variant} ratio per round"] = ratios
        if flops:
            out[f"{variant} GFLOP/s"] = flops / seconds / 1e9
    return out


def _count(values: list[float] | None) -> str:
    """The median of ``values`` as a whole number, or a dash where none was measured."""
    usable = [v for v in values or [] if v == v]  # NaN marks a run that did not count
    return f"{statistics.median(usable):,.0f}" if usable else "-"


def markdown(result: dict) -> str:
    lines = [
        "# Training steps: before issue 25, eager now, compiled (`--compile on`)", "",
        f"Machine: {result['machine']}; torch {result['torch']}; load average "
        f"{result['load_before']:.2f} before, {result['load_after']:.2f} after. bf16 matmul "
        f"peak measured here: {result['bf16_peak_gflops']:.0f} GFLOP/s (2048^3).", "",
        "Each row: the method's training step with AdamW, bf16 autocast, channels-last. "
        "*before*: eager with glibc's default allocator and AdamW's foreach kernels (the engine "
        "before issue 25); *eager*: freed memory kept in the process (`selfsup/allocator.py`) "
        "and AdamW's fused kernel, as the engine now runs; *compiled*: that plus "
        "`torch.compile`. One process per variant, alternating in "
        f"{result['rounds']} rounds; throughput is the median of the rounds, each ratio the "
        "median of the rounds' ratios to *before* (every round's in brackets). Compilation "
        "(the first two compiled steps, from a cold inductor cache) is timed apart. Page faults: "
        "minor faults per timed step, median of the rounds, before / eager / compiled.", "",
        "| workload | batch | before | eager | compiled | eager / before | "
        "compiled / before | compile (s) | page faults per step |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for case in result["cases"]:
        ratios = {v: ", ".join(f"{r:.2f}" for r in case[f"{v} ratio per round"])
                  for v in ("eager", "compiled")}
        lines.append(
            f"| {case['case']} ({case['unit']}) | {case['batch_size']} | {case['before']:,.1f} | "
            f"{case['eager']:,.1f} | {case['compiled']:,.1f} | **{case['eager ratio']:.2f}x** "
            f"({ratios['eager']}) | **{case['compiled ratio']:.2f}x** ({ratios['compiled']}) | "
            f"{case['compile_seconds_cold']:.1f} | "
            + " / ".join(_count(case.get("page_faults_per_step", {}).get(v)) for v in VARIANTS)
            + " |"
        )
    gpt = next((c for c in result["cases"] if c["unit"] == "tokens/s"), None)
    if gpt:
        peak = result["bf16_peak_gflops"]
        lines += ["", "GPT, whole training step (matmuls, everything between them and the "
                  "optimiser) against the measured bf16 peak:", "",
                  "| variant | tokens/s | GFLOP/s | share of the bf16 peak |",
                  "| --- | ---: | ---: | ---: |"]
        for name in VARIANTS:
            lines.append(f"| {name} | {gpt[name]:,.0f} | {gpt[f'{name} GFLOP/s']:.1f} | "
                         f"{gpt[f'{name} GFLOP/s'] / peak:.0%} |")
    lines += ["", f"Reproduce: `{result['reproduce']}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cases", default=None, help="comma-separated names from CASES")
    parser.add_argument("--out", default=str(RESULTS / "compiled_steps"))
    parser.add_argument("--profile", metavar="CASE", choices=list(CASES),
                        help="print the profile of the compiled step of CASE, and stop")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    if args.profile:
        print(profile(args.profile))
        return
    load_before = os.getloadavg()[0]
    peak = matmul_peak()
    names = (args.cases.split(",") if args.cases else
             ["simclr resnet_small", "gpt (Shakespeare recipe)"] if args.quick else list(CASES))
    cache = tempfile.mkdtemp(prefix="inductor-")  # the first compilation starts cold
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    cases = []
    try:
        for name in names:
            cases.append(run_case(name, list(VARIANTS), args.rounds, env))
            print(json.dumps({k: v for k, v in cases[-1].items() if not isinstance(v, dict)}),
                  flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "quick": args.quick, "rounds": args.rounds,
        "reproduce": shlex.join([".venv/bin/python", "benchmarks/compiled_steps.py",
                                 *sys.argv[1:]]),
        "bf16_peak_gflops": peak, "load_before": load_before,
        "load_after": os.getloadavg()[0], "cases": cases,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
