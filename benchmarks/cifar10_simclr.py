"""CIFAR-10 SimCLR benchmark: throughput against a per-image PIL pipeline, then the verdict.

1. Throughput. The same SimCLR step (encoder + projection head + NT-Xent, AdamW, batch 256, two
   views) fed two ways: (a) the usual recipe, per-image PIL transforms in 2 DataLoader workers,
   fp32; (b) selfsup's, batched tensor augmentation on the uint8 cache, bf16 autocast,
   channels-last. Images/s count each image once (its two views included). Measured for the
   benchmark's encoder and for ResNet-18 (the reference in ../shared/data/README.md: ~17/s).
2. Quality. The real CLI: `selfsup pretrain simclr --minutes M` on cifar10/train (labels unused
   by the loss), then `selfsup evaluate RUN --data cifar10/train --test cifar10/test`: linear
   probe and kNN on frozen features, and the supervised baseline (same encoder from scratch, same
   labels, same wall-clock budget as the pre-training).

Writes benchmarks/results/cifar10_simclr.{json,md}.

    .venv/bin/python benchmarks/cifar10_simclr.py                 # ~70 min on 2 cores
    .venv/bin/python benchmarks/cifar10_simclr.py --quick         # ~5 min smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from augment import PILAugment  # noqa: E402  (benchmarks/augment.py: the per-image pipeline)

from selfsup.augment import ImageAugmentConfig  # noqa: E402
from selfsup.data import load_images  # noqa: E402
from selfsup.methods import METHODS, DataInfo  # noqa: E402
from selfsup.methods.losses import nt_xent  # noqa: E402
from selfsup.models import build_encoder  # noqa: E402

CIFAR = REPO.parent / "shared" / "data" / "cifar10"
RESULTS = REPO / "benchmarks" / "results"


class PILTwoViews(Dataset):
    """A typical Dataset.__getitem__: two per-image PIL augmentations of one image."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.augment: PILAugment | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment is None:  # one RNG per worker process
            self.augment = PILAugment(ImageAugmentConfig(), random.Random(os.getpid()))
        image = Image.fromarray(self.images[index])
        views = [self.augment(image) for _ in range(2)]
        return tuple(torch.from_numpy(v.copy()).permute(2, 0, 1).float().div_(255) for v in views)


def simclr_model(encoder_name: str, channels_last: bool):
    method = METHODS.get("simclr")(
        build_encoder(encoder_name), DataInfo(3, 32, 10), channels_last=channels_last
    )
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    return method, torch.optim.AdamW(method.parameters(), lr=1e-3)


def timed_steps(step, steps: int) -> float:
    """Seconds per step over ``steps`` steps, after one warm-up step."""
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def pil_fp32_throughput(images: np.ndarray, encoder: str, batch: int, steps: int) -> float:
    method, optimiser = simclr_model(encoder, channels_last=False)
    loader = DataLoader(PILTwoViews(images), batch_size=batch, shuffle=True, num_workers=2,
                        drop_last=True, persistent_workers=True)
    batches = iter(loader)

    def step() -> None:
        v1, v2 = next(batches)
        z1, z2 = method.projector(method.encoder(torch.cat([v1, v2]))).chunk(2)
        loss = nt_xent(z1, z2, 0.5)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    return batch / timed_steps(step, steps)


def selfsup_throughput(images: np.ndarray, encoder: str, batch: int, steps: int) -> float:
    method, optimiser = simclr_model(encoder, channels_last=True)
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def step() -> None:
        rows = np.sort(rng.choice(len(images), batch, replace=False))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = method.training_step({"images": torch.from_numpy(images[rows])}, generator).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    return batch / timed_steps(step, steps)


def selfsup_cli(*args: str) -> None:
    command = [str(REPO / ".venv" / "bin" / "selfsup"), *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def markdown(result: dict) -> str:
    lines = [
        "# CIFAR-10 SimCLR benchmark",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}`.",
        "CIFAR-10 here is re-encoded JPEG (quality 75): expect accuracies a little below "
        "published figures.",
        "",
        "## Training throughput (images/s, each image counted once with its two views)",
        "",
        "| encoder | per-image PIL, 2 workers, fp32 | selfsup: batched, bf16, channels-last "
        "| speed-up |",
        "|---|---|---|---|",
    ]
    for name, row in result["throughput"].items():
        lines.append(f"| {name} | {row['pil_fp32']:.1f} | {row['selfsup']:.1f} "
                     f"| {row['speedup']:.2f}x |")
    q = result["quality"]
    lines += [
        "",
        f"## Quality after {q['pretrain_minutes']:.1f} min of pre-training "
        f"({q['encoder']}, batch {q['batch_size']}, {q['steps']} steps, "
        f"{q['epochs']:.1f} epochs, {q['train_images_per_s']:.1f} images/s in the run)",
        "",
        "| protocol | CIFAR-10 test accuracy |",
        "|---|---|",
        f"| kNN (k={q['knn_k']}, cosine, T=0.07) | {q['knn']:.4f} |",
        f"| linear probe (C={q['linear_C']}) | {q['linear']:.4f} |",
        f"| supervised baseline, same encoder from scratch, "
        f"{q['supervised_minutes']:.1f} min | {q['supervised']:.4f} |",
        f"| linear / supervised | {q['linear_over_supervised']:.3f} |",
        "",
        "Probe settings were chosen on a validation split carved from cifar10/train; the test "
        "split was used only to score.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="pre-training budget")
    parser.add_argument("--encoder", default="resnet_small")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per throughput cell")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-cifar10-simclr"))
    parser.add_argument("--reuse", action="store_true", help="reuse a finished run in --out")
    parser.add_argument("--quick", action="store_true", help="1-minute smoke run")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.steps = 1.0, 1
        args.out = str(REPO / "runs" / "bench-cifar10-simclr-quick")
    if not CIFAR.is_dir():
        sys.exit(f"needs {CIFAR} (see ../shared/data/README.md)")

    images = load_images(CIFAR / "train", progress=False).images
    throughput = {}
    for encoder in dict.fromkeys([args.encoder, "resnet18"]):
        pil = pil_fp32_throughput(images, encoder, args.batch_size, args.steps)
        ours = selfsup_throughput(images, encoder, args.batch_size, args.steps)
        throughput[encoder] = {"pil_fp32": pil, "selfsup": ours, "speedup": ours / pil}
        print(f"{encoder}: PIL fp32 {pil:.1f} images/s, selfsup {ours:.1f} images/s", flush=True)

    run = Path(args.out)
    if not (args.reuse and (run / "pretrain.json").is_file()):
        if run.exists():
            import shutil

            shutil.rmtree(run)
        selfsup_cli("pretrain", "simclr", "--data", str(CIFAR / "train"), "--minutes",
                    str(args.minutes), "--encoder", args.encoder, "--batch-size",
                    str(args.batch_size), "--out", str(run), "--no-progress")
    selfsup_cli("evaluate", str(run), "--data", str(CIFAR / "train"), "--test",
                str(CIFAR / "test"), "--no-progress")

    summary = json.loads((run / "pretrain.json").read_text())
    evaluation = json.loads((run / "eval.json").read_text())
    quality = {
        "encoder": args.encoder,
        "batch_size": args.batch_size,
        "pretrain_minutes": summary["train_seconds"] / 60,
        "steps": summary["steps"],
        "epochs": summary["samples_seen"] / summary["num_samples"],
        "train_images_per_s": summary["images_per_s"],
        "knn": evaluation["knn"]["accuracy"],
        "knn_k": evaluation["knn"]["chosen"]["k"],
        "linear": evaluation["linear"]["accuracy"],
        "linear_C": evaluation["linear"]["chosen"]["C"],
        "supervised": evaluation["supervised"]["accuracy"],
        "supervised_minutes": evaluation["supervised"]["minutes"],
        "linear_over_supervised": evaluation["linear_over_supervised"],
    }
    result = {
        "command": "python benchmarks/cifar10_simclr.py" + (" --quick" if args.quick else ""),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "throughput": throughput,
        "quality": quality,
        "targets": {
            "throughput_at_least_2x_pil_fp32": throughput[args.encoder]["speedup"] >= 2.0,
            "linear_at_least_85pct_of_supervised": quality["linear_over_supervised"] >= 0.85,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "cifar10_simclr_quick" if args.quick else "cifar10_simclr"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
