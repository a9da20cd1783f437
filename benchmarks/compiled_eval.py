"""Feature extraction and fine-tuning steps, eager against compiled (issue 25, item 1).

``--compile auto`` for evaluation rests on these figures (selfsup/compiling.py,
selfsup/evaluate/finetune.py):

- **Extraction**: ``extract_features`` on CIFAR-10 test images (eval mode, bf16 autocast,
  channels-last, batch 512) for resnet_small, ResNet-18 and vit_tiny: images/s eager and
  compiled, the compilation's seconds, and the number of images from which the compilation
  pays for itself (compile seconds / (1/eager - 1/compiled rate)).
- **Fine-tuning**: the fine-tuning module's step (the classifier's forward, cross-entropy,
  backward, AdamW) at batch 128, images/s eager and compiled.

The two variants alternate in rounds in one process (eager, compiled, eager, ...), so both see
the same machine load; the report gives the median of the rounds and the load average before
and after. Compilation is timed apart (the first compiled call, from a cold inductor cache).

    .venv/bin/python benchmarks/compiled_eval.py            # ~8 min
    .venv/bin/python benchmarks/compiled_eval.py --quick    # ~1 min smoke run (not kept)

Writes benchmarks/results/compiled_eval.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfsup import allocator  # noqa: E402
from selfsup.compiling import AUTO_MIN_IMAGES, CompiledStep  # noqa: E402
from selfsup.data import load_images  # noqa: E402
from selfsup.evaluate.features import extract_features  # noqa: E402
from selfsup.evaluate.finetune import Classifier  # noqa: E402
from selfsup.models import build_encoder  # noqa: E402

CIFAR_TEST = REPO.parent / "shared" / "data" / "cifar10" / "test"
ENCODERS = ("resnet_small", "resnet18", "vit_tiny")


def extraction(name: str, images: np.ndarray, rounds: int) -> dict:
    """images/s of extract_features, eager and compiled, alternating."""
    encoder = build_encoder(name)
    started = time.monotonic()
    extract_features(encoder, images[:512], batch_size=512, compile="on")  # compiles
    compile_seconds = time.monotonic() - started
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(rounds):
        for variant, choice in (("eager", "off"), ("compiled", "on")):
            started = time.monotonic()
            extract_features(encoder, images, batch_size=512, compile=choice)
            rates[variant].append(len(images) / (time.monotonic() - started))
    eager, compiled = (statistics.median(rates[v]) for v in ("eager", "compiled"))
    saved_per_image = 1 / eager - 1 / compiled
    return {"encoder": name, "images": len(images), "eager": eager, "compiled": compiled,
            "ratio": compiled / eager, "rounds": rates, "compile_seconds": compile_seconds,
            "pays_from_images": compile_seconds / saved_per_image if saved_per_image > 0
            else None}


def finetune_steps(name: str, images: np.ndarray, rounds: int, steps: int) -> dict:
    """images/s of the fine-tuning step (forward, loss, backward, AdamW), eager and compiled."""
    model = Classifier(build_encoder(name), 10).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = torch.from_numpy(np.array(images[:128])).permute(0, 3, 1, 2).float().div(255)
    batch = batch.contiguous(memory_format=torch.channels_last)
    labels = torch.arange(len(batch)) % 10
    compiled = CompiledStep(model, f"{name} fine-tuning", strict=True)

    def step(forward) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = forward(batch)
        loss = F.cross_entropy(logits.float(), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    started = time.monotonic()
    step(compiled)
    step(compiled)  # the backward graph compiles at its first use
    compile_seconds = time.monotonic() - started
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(rounds):
        for variant, forward in (("eager", model), ("compiled", compiled)):
            started = time.monotonic()
            for _ in range(steps):
                step(forward)
            rates[variant].append(steps * len(batch) / (time.monotonic() - started))
    eager, fast = (statistics.median(rates[v]) for v in ("eager", "compiled"))
    return {"encoder": name, "batch": len(batch), "eager": eager, "compiled": fast,
            "ratio": fast / eager, "rounds": rates, "compile_seconds": compile_seconds}


def per_round(row: dict) -> str:
    """Each round's compiled / eager ratio."""
    pairs = zip(row["rounds"]["eager"], row["rounds"]["compiled"], strict=True)
    return ", ".join(f"{compiled / eager:.2f}" for eager, compiled in pairs)


def markdown(result: dict) -> str:
    lines = [
        "# Feature extraction and fine-tuning: eager against compiled",
        "",
        f"Machine: {result['machine']}; torch {result['torch']}; load average "
        f"{result['load_before']:.2f} before, {result['load_after']:.2f} after. Eager and "
        f"compiled alternate in {result['rounds']} rounds in one process; figures are the "
        "medians (every round in brackets). Compilation is timed apart, from a cold inductor "
        "cache.",
        "",
        f"## Extraction (`extract_features`, batch 512, bf16, {result['images']:,} CIFAR-10 "
        "test images)",
        "",
        "| encoder | eager (images/s) | compiled (images/s) | compiled / eager | compile (s) "
        "| compiling pays from |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in result["extraction"]:
        pays = f"{r['pays_from_images']:,.0f} images" if r["pays_from_images"] else "never"
        lines.append(
            f"| {r['encoder']} | {r['eager']:,.0f} | {r['compiled']:,.0f} | "
            f"**{r['ratio']:.2f}x** ({per_round(r)}) "
            f"| {r['compile_seconds']:.1f} | {pays} |")
    lines += [
        "",
        f"`--compile auto` compiles extraction from {AUTO_MIN_IMAGES:,} images "
        "(selfsup/compiling.py, AUTO_MIN_IMAGES).",
        "",
        f"## Fine-tuning step (forward, cross-entropy, backward, AdamW; batch "
        f"{result['finetune'][0]['batch']}, bf16)",
        "",
        "| encoder | eager (images/s) | compiled (images/s) | compiled / eager | compile (s) |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for r in result["finetune"]:
        lines.append(
            f"| {r['encoder']} | {r['eager']:,.1f} | {r['compiled']:,.1f} | "
            f"**{r['ratio']:.2f}x** ({per_round(r)}) "
            f"| {r['compile_seconds']:.1f} |")
    lines += ["", f"Reproduce: `{result['reproduce']}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="resnet_small, few images")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not CIFAR_TEST.is_dir():
        sys.exit(f"{CIFAR_TEST} is missing")
    allocator.retain_freed_memory()
    images = load_images(str(CIFAR_TEST), progress=False).images
    count, names, steps = (1024, ENCODERS[:1], 2) if args.quick else (4096, ENCODERS, 8)
    images = images[:count]
    load_before = os.getloadavg()[0]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "rounds": args.rounds, "images": count,
        "load_before": load_before,
        "extraction": [], "finetune": [],
        "reproduce": " ".join([".venv/bin/python", "benchmarks/compiled_eval.py",
                               *sys.argv[1:]]),
    }
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # cold: compilation counted in full
        for name in names:
            result["extraction"].append(extraction(name, images, args.rounds))
            print(json.dumps({k: v for k, v in result["extraction"][-1].items()
                              if k != "rounds"}), flush=True)
        for name in names:
            result["finetune"].append(finetune_steps(name, images, args.rounds, steps))
            print(json.dumps({k: v for k, v in result["finetune"][-1].items()
                              if k != "rounds"}), flush=True)
    result["load_after"] = os.getloadavg()[0]
    out = Path(tempfile.gettempdir()) if args.quick else REPO / "benchmarks" / "results"
    (out / "compiled_eval.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "compiled_eval.md").write_text(markdown(result))
    print(f"written to {out / 'compiled_eval'}.{{json,md}}")


if __name__ == "__main__":
    main()
