"""CIFAR-10 MAE benchmark: what the masking saves, and whether fine-tuning a MAE beats a ViT
trained from scratch with few labels.

1. Throughput. Images/s of the MAE training step (75% of the patches masked, encoder on the
   visible quarter, light decoder) against a full-sequence forward/backward of the same encoder
   (the supervised step: encoder on all patches + linear head), same batch, bf16, AdamW,
   batched augmentation included in both. The two steps alternate in one timed loop, so a
   change in the machine's load hits both alike. Target: at least 2.5x.
2. Quality. The real CLI: `selfsup pretrain mae --minutes M` on cifar10/train (labels unused),
   then `selfsup evaluate --no-baseline` (linear probe and kNN on frozen features), then the
   fine-tuning protocol (selfsup/evaluate/finetune.py) with 10% and 100% of the training
   labels, against the same ViT from scratch with the same labels and the same fine-tuning
   budget. Target: MAE + fine-tune beats from scratch at 10% labels. The validation split of
   every choice is carved from cifar10/train; cifar10/test only scores.

Writes benchmarks/results/cifar10_mae.{json,md} and copies the final reconstruction picture to
benchmarks/results/cifar10_mae_reconstruction.png.

    .venv/bin/python benchmarks/cifar10_mae.py                    # ~50 min on 2 quiet cores
    .venv/bin/python benchmarks/cifar10_mae.py --throughput-only  # ~2 min
    .venv/bin/python benchmarks/cifar10_mae.py --quick            # smoke run on 2,000 images
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfsup.data import load_images  # noqa: E402
from selfsup.data.images import ImageData  # noqa: E402
from selfsup.evaluate.finetune import FinetuneConfig, finetune_protocol  # noqa: E402
from selfsup.methods import METHODS, DataInfo  # noqa: E402
from selfsup.models import build_encoder  # noqa: E402
from selfsup.run import RunDir, load_encoder  # noqa: E402

CIFAR = REPO.parent / "shared" / "data" / "cifar10"
RESULTS = REPO / "benchmarks" / "results"


def encoder_options(args: argparse.Namespace) -> dict[str, int]:
    return {"depth": args.depth, "width": args.width, "heads": args.heads}


def throughput(args: argparse.Namespace, images: np.ndarray) -> dict[str, float]:
    """Images/s of MAE's step and of a full-sequence step of the same encoder, interleaved."""
    info = DataInfo(channels=3, image_size=32, num_classes=10, num_images=len(images))
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    steps = {}
    for name in ("mae", "supervised"):
        torch.manual_seed(0)
        encoder = build_encoder("vit_tiny", **encoder_options(args))
        method = METHODS.get(name)(encoder, info)
        steps[name] = (method, torch.optim.AdamW(method.parameters(), lr=1e-4))

    def step(name: str) -> float:
        method, optimiser = steps[name]
        rows = np.sort(rng.choice(len(images), args.batch_size, replace=False))
        batch = {
            "images": torch.from_numpy(np.asarray(images[rows])),
            "labels": torch.from_numpy(rng.integers(0, 10, args.batch_size)),
        }
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = method.training_step(batch, generator).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return time.perf_counter() - start

    seconds = {name: 0.0 for name in steps}
    for name in steps:
        step(name)  # warm-up
    for _ in range(args.throughput_steps):
        for name in steps:
            seconds[name] += step(name)
    images_done = args.batch_size * args.throughput_steps
    mae, full = images_done / seconds["mae"], images_done / seconds["supervised"]
    return {"mae_images_per_s": mae, "full_sequence_images_per_s": full, "speedup": mae / full,
            "batch_size": args.batch_size, "timed_steps_each": args.throughput_steps,
            "precision": args.precision}


def selfsup_cli(*args: str) -> None:
    command = [str(REPO / ".venv" / "bin" / "selfsup"), *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def limited(data: ImageData, count: int | None, seed: int) -> ImageData:
    if count is None or count >= len(data):
        return data
    rows = np.random.default_rng(seed).choice(len(data), count, replace=False)
    return data.subset(rows, f"{data.source} ({count} images)")


def write_npz(data: ImageData, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=np.asarray(data.images), labels=data.labels)
    return str(path)


def markdown(result: dict) -> str:
    t = result["throughput"]
    lines = [
        "# CIFAR-10 MAE benchmark",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}`. Encoder: "
        f"{result['encoder']}.",
        "CIFAR-10 here is re-encoded JPEG (quality 75): expect accuracies a little below "
        "published figures.",
        "",
        f"## Training throughput (batch {t['batch_size']}, "
        f"{'bf16 autocast' if t['precision'] == 'bf16' else 'fp32'}, "
        f"{t['timed_steps_each']} "
        "interleaved steps each)",
        "",
        "| step | images/s |",
        "|---|---|",
        f"| MAE (75% masked, encoder on visible patches + decoder) | {t['mae_images_per_s']:.1f} |",
        f"| full-sequence forward/backward, same encoder + linear head "
        f"| {t['full_sequence_images_per_s']:.1f} |",
        f"| speed-up | {t['speedup']:.2f}x (target >= 2.5x) |",
    ]
    q = result.get("quality")
    if q:
        p = q["pretrain"]
        lines += [
            "",
            f"## Quality after {p['minutes']:.1f} min of MAE pre-training "
            f"({p['steps']} steps, {p['epochs']:.1f} epochs of {p['num_images']} images, "
            f"{p['images_per_s']:.1f} images/s in the run, final loss {p['final_loss']:.3f})",
            "",
            "| protocol | labels | CIFAR-10 test accuracy |",
            "|---|---|---|",
            f"| kNN on frozen MAE features (k={q['knn_k']}) | 100% | {q['knn']:.4f} |",
            f"| linear probe on frozen MAE features (C={q['linear_C']}) | 100% | "
            f"{q['linear']:.4f} |",
        ]
        for fraction, row in q["finetune"].items():
            pre, scratch = row["pretrained"], row["scratch"]
            lines += [
                f"| MAE + fine-tune, {pre['seconds'] / 60:.1f} min ({pre['epochs']:.1f} epochs) "
                f"| {fraction} | {pre['accuracy']:.4f} |",
                f"| ViT from scratch, same routine, {scratch['seconds'] / 60:.1f} min "
                f"({scratch['epochs']:.1f} epochs) | {fraction} | {scratch['accuracy']:.4f} |",
            ]
        ten = q["finetune"].get("10%")
        verdict = (
            f"MAE + fine-tune {'beats' if ten['gain'] > 0 else 'does not beat'} the ViT from "
            f"scratch at 10% labels ({ten['gain'] * 100:+.1f} points)."
            if ten else ""
        )
        lines += [
            "",
            f"{verdict} Fine-tuning: AdamW lr {q['finetune_config']['lr']}, weight decay "
            f"{q['finetune_config']['weight_decay']}, layer-wise decay "
            f"{q['finetune_config']['layer_decay']} (none from scratch), label smoothing "
            f"{q['finetune_config']['label_smoothing']}, crop + flip, batch "
            f"{q['finetune_config']['batch_size']}; the weights of the epoch with the best "
            "accuracy on a 10% validation split of the labelled training images are kept. The "
            "from-scratch ViT gets the fine-tuning budget, not the pre-training time as well.",
            "",
            f"![reconstructions]({q['picture']})",
            "",
            "Rows: original, masked (75% of the 4x4 patches grey), reconstruction with the "
            "visible patches pasted back (test-free: images from the training batches).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="MAE pre-training budget")
    parser.add_argument("--finetune-minutes", type=float, default=5.0,
                        help="budget of each fine-tuning run (4 runs)")
    parser.add_argument("--depth", type=int, default=6, help="ViT blocks (vit_tiny: 12)")
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1.5e-3, help="MAE pre-training peak lr")
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--layer-decay", type=float, default=0.75)
    parser.add_argument("--throughput-steps", type=int, default=5)
    parser.add_argument("--precision", choices=("bf16", "32"), default="bf16",
                        help="bf16 autocast (fast where the CPU has AVX-512 BF16) or 32")
    parser.add_argument("--limit", type=int, default=None, help="use this many train images")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-cifar10-mae"))
    parser.add_argument("--reuse", action="store_true", help="reuse a finished run in --out")
    parser.add_argument("--throughput-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke run")
    args = parser.parse_args()
    stem = "cifar10_mae"
    if args.quick:
        args.minutes, args.finetune_minutes, args.throughput_steps = 0.5, 0.25, 1
        args.limit, args.batch_size = 2000, 64
        args.out = str(REPO / "runs" / "bench-cifar10-mae-quick")
        stem = "cifar10_mae_quick"
    if args.throughput_only:
        stem = "cifar10_mae_throughput"
    if not CIFAR.is_dir():
        sys.exit(f"needs {CIFAR} (see ../shared/data/README.md)")

    train = load_images(str(CIFAR / "train"), progress=False)
    speed = throughput(args, train.images)
    print(f"throughput: MAE {speed['mae_images_per_s']:.1f} images/s, full sequence "
          f"{speed['full_sequence_images_per_s']:.1f} images/s, {speed['speedup']:.2f}x",
          flush=True)
    options = encoder_options(args)
    result = {
        "command": "python benchmarks/cifar10_mae.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "encoder": f"vit_tiny {options}, patch 4",
        "throughput": speed,
        "targets": {"mae_at_least_2_5x_full_sequence": speed["speedup"] >= 2.5},
    }
    if not args.throughput_only:
        result["quality"] = quality(args, train, options)
        result["targets"]["mae_finetune_beats_scratch_at_10pct"] = (
            result["quality"]["finetune"]["10%"]["gain"] > 0
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


def quality(args: argparse.Namespace, train: ImageData, options: dict[str, int]) -> dict:
    run = RunDir(Path(args.out))
    test = load_images(str(CIFAR / "test"), progress=False)
    train_path, test_path = str(CIFAR / "train"), str(CIFAR / "test")
    if args.limit:  # smoke runs: a small random part of both splits, as .npz files
        train = limited(train, args.limit, 0)
        test = limited(test, max(200, args.limit // 4), 1)
        train_path = write_npz(train, run.path.parent / f"{run.path.name}-data" / "train.npz")
        test_path = write_npz(test, run.path.parent / f"{run.path.name}-data" / "test.npz")
    if not (args.reuse and run.summary.is_file()):
        if run.path.exists():
            shutil.rmtree(run.path)
        cli_options = [f"{k}={v}" for k, v in options.items()]
        selfsup_cli(
            "pretrain", "mae", "--data", train_path, "--minutes", str(args.minutes),
            "--encoder", "vit_tiny", *sum((["--encoder-option", o] for o in cli_options), []),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--out", str(run.path),
            "--precision", args.precision, "--no-progress",
        )
    selfsup_cli("evaluate", str(run.path), "--data", train_path, "--test", test_path,
                "--no-baseline", "--no-progress")
    summary = json.loads(run.summary.read_text())
    evaluation = json.loads(run.eval.read_text())
    picture = run.path / "reconstruction.png"
    picture_name = f"cifar10_mae{'_quick' if args.quick else ''}_reconstruction.png"
    if picture.is_file():
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(picture, RESULTS / picture_name)

    encoder, spec = load_encoder(run)
    config = FinetuneConfig(
        minutes=args.finetune_minutes, batch_size=128, lr=args.finetune_lr,
        layer_decay=args.layer_decay, precision=args.precision,
    )
    rows = finetune_protocol(encoder, spec, train, test, config, label_fractions=(0.1, 1.0))
    for fraction, row in rows.items():
        print(f"fine-tune {fraction}: MAE {row['pretrained']['accuracy']:.4f}, scratch "
              f"{row['scratch']['accuracy']:.4f}", flush=True)
    return {
        "pretrain": {
            "minutes": summary["train_seconds"] / 60,
            "steps": summary["steps"],
            "epochs": summary["samples_seen"] / summary["num_samples"],
            "num_images": summary["num_samples"],
            "images_per_s": summary["images_per_s"],
            "final_loss": summary["final_loss"],
            "lr": args.lr,
            "batch_size": args.batch_size,
        },
        "picture": picture_name,
        "knn": evaluation["knn"]["accuracy"],
        "knn_k": evaluation["knn"]["chosen"]["k"],
        "linear": evaluation["linear"]["accuracy"],
        "linear_C": evaluation["linear"]["chosen"]["C"],
        "finetune_config": {k: v for k, v in config.__dict__.items() if k != "progress"},
        "finetune": rows,
    }


if __name__ == "__main__":
    main()
