"""The image fine-tuning step: memory layout and AdamW kernel (issue 26).

Pre-training runs its convolution nets channels-last with AdamW's fused kernel
(selfsup/engine.py); fine-tuning ran them channels-first with the foreach kernel. A 5-minute
fine-tuning is paced by the clock, so its step rate is its number of steps. This measures the
whole step as ``FinetuneModule`` takes it: batched augmentation of uint8 CIFAR-10 images, the
classifier's bf16 forward, label-smoothed cross-entropy, backward, gradient clipping at 3.0
(the Trainer's) and AdamW over the fine-tuning's parameter groups, in four variants:

- ``before``: channels-first, foreach AdamW (fine-tuning before this change);
- ``channels_last``: the model and each augmented batch channels-last;
- ``fused``: AdamW's fused kernel;
- ``both``: the two (fine-tuning after this change).

The variants alternate within each round in one process, so all see the same machine load;
the report gives the median over rounds of each variant's images/s and of its ratio to
``before`` in the same round, with the load average before and after.

    .venv/bin/python benchmarks/finetune_layout.py            # ~3 min
    .venv/bin/python benchmarks/finetune_layout.py --quick    # ~30 s smoke run (not kept)

Writes benchmarks/results/finetune_layout.{json,md}.
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
from selfsup.augment import BatchedImageAugment, ImageAugmentConfig  # noqa: E402
from selfsup.data import load_images  # noqa: E402
from selfsup.evaluate.finetune import (  # noqa: E402
    FINETUNE_AUGMENT,
    Classifier,
    FinetuneConfig,
    parameter_groups,
)
from selfsup.models import build_encoder  # noqa: E402

CIFAR_TRAIN = REPO.parent / "shared" / "data" / "cifar10" / "train"
VARIANTS = {"before": (False, False), "channels_last": (True, False),
            "fused": (False, True), "both": (True, True)}


class Step:
    """One variant's model, optimiser and step."""

    def __init__(self, encoder: str, channels_last: bool, fused: bool, seed: int) -> None:
        torch.manual_seed(seed)
        config = FinetuneConfig()
        self.model = Classifier(build_encoder(encoder), 10).train()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        groups = parameter_groups(self.model.encoder, self.model.head, config.weight_decay,
                                  config.layer_decay)
        self.optimiser = torch.optim.AdamW(groups, lr=config.lr, fused=fused or None)
        self.augment = BatchedImageAugment(ImageAugmentConfig(**FINETUNE_AUGMENT))
        self.generator = torch.Generator().manual_seed(seed)
        self.smoothing = config.label_smoothing

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        views = self.augment(images, self.generator)
        if self.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = self.model(views)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.smoothing)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 3.0)
        self.optimiser.step()


def measure(encoder: str, images: np.ndarray, labels: np.ndarray, rounds: int, steps: int,
            batch: int) -> dict:
    """images/s of each variant, alternating within each round."""
    runs = {name: Step(encoder, *flags, seed=0) for name, flags in VARIANTS.items()}
    rng = np.random.default_rng(0)

    def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rows = [rng.choice(len(images), batch, replace=False) for _ in range(count)]
        return [(torch.from_numpy(images[r]), torch.from_numpy(labels[r]).long()) for r in rows]

    for step in runs.values():  # warm-up: oneDNN's kernels and the allocator's pages
        for x, y in batches(3):
            step(x, y)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        work = batches(steps)
        for name, step in runs.items():
            started = time.monotonic()
            for x, y in work:
                step(x, y)
            rates[name].append(steps * batch / (time.monotonic() - started))
    ratios = {name: [r / b for r, b in zip(rates[name], rates["before"], strict=True)]
              for name in runs}
    return {"encoder": encoder, "batch": batch, "steps": steps, "rounds": rates,
            "median": {n: statistics.median(v) for n, v in rates.items()},
            "ratio": {n: statistics.median(v) for n, v in ratios.items()},
            "ratios": ratios}


def markdown(result: dict) -> str:
    lines = [
        "# Image fine-tuning step: channels-last and fused AdamW",
        "",
        f"Machine: {result['machine']}; torch {result['torch']}; load average "
        f"{result['load_before']:.2f} before, {result['load_after']:.2f} after. The four "
        f"variants alternate in each of {result['rounds_count']} rounds in one process; "
        "images/s are medians over rounds, ratios the median of each round's ratio to "
        "*before* (every round in brackets). The step: batched augmentation of uint8 CIFAR-10 "
        "images, bf16 forward, cross-entropy, backward, gradient clipping, AdamW.",
        "",
        "| encoder | batch | " + " | ".join(f"{v} (images/s)" for v in VARIANTS)
        + " | " + " | ".join(f"{v} / before" for v in list(VARIANTS)[1:]) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in VARIANTS)
        + " | " + " | ".join("---" for _ in list(VARIANTS)[1:]) + " |",
    ]
    for r in result["encoders"]:
        cells = [f"{r['median'][v]:,.0f}" for v in VARIANTS]
        cells += [f"**{r['ratio'][v]:.2f}x** ("
                  + ", ".join(f"{x:.2f}" for x in r["ratios"][v]) + ")"
                  for v in list(VARIANTS)[1:]]
        lines.append(f"| {r['encoder']} | {r['batch']} | " + " | ".join(cells) + " |")
    lines += ["", f"Reproduce: `{result['reproduce']}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 steps, not kept")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant and round")
    parser.add_argument("--encoders", default="resnet_small",
                        help="comma-separated encoder names")
    args = parser.parse_args()
    if not CIFAR_TRAIN.is_dir():
        sys.exit(f"{CIFAR_TRAIN} is missing")
    torch.set_num_threads(os.cpu_count() or 1)
    allocator.retain_freed_memory()
    data = load_images(str(CIFAR_TRAIN), progress=False)
    images, labels = data.images[:8192], np.asarray(data.labels[:8192])
    rounds, steps = (2, 3) if args.quick else (args.rounds, args.steps)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "rounds_count": rounds,
        "load_before": os.getloadavg()[0], "encoders": [],
        "reproduce": " ".join([".venv/bin/python", "benchmarks/finetune_layout.py",
                               *sys.argv[1:]]),
    }
    for name in args.encoders.split(","):
        row = measure(name, images, labels, rounds, steps, FinetuneConfig().batch_size)
        result["encoders"].append(row)
        print(json.dumps({k: row[k] for k in ("encoder", "median", "ratio")}), flush=True)
    result["load_after"] = os.getloadavg()[0]
    out = Path(tempfile.gettempdir()) if args.quick else REPO / "benchmarks" / "results"
    (out / "finetune_layout.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "finetune_layout.md").write_text(markdown(result))
    print(f"written to {out / 'finetune_layout'}.{{json,md}}")


if __name__ == "__main__":
    main()
