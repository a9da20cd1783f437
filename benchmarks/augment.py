"""Throughput of the batched tensor augmentations vs a per-image PIL pipeline.

Both pipelines do the same transforms with the same parameter distributions (SimCLR's CIFAR-10
recipe, and BYOL's asymmetric two-view recipe with blur and solarize) on 32x32 RGB uint8 images,
two views per image, batches of 256, and end in a float32 (B, C, H, W) batch in [0, 1] ready for
a model. The PIL side is written here with PIL.Image / ImageEnhance / ImageFilter (no
torchvision), one Python call chain per image and view, as a typical Dataset.__getitem__ does.

Images come from ../shared/data/cifar10/train (JPEGs, read once into memory; decoding is not
timed) when present, else random pixels.

    .venv/bin/python benchmarks/augment.py            # ~40 s
    .venv/bin/python benchmarks/augment.py --quick    # ~10 s
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfsup.augment import BatchedImageAugment, ImageAugmentConfig  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10" / "train"
LUMA = (0.299, 0.587, 0.114)

SIMCLR = ImageAugmentConfig()  # the defaults are SimCLR's CIFAR-10 recipe
# BYOL (Grill et al. 2020, table 6): view 1 always blurred, view 2 rarely blurred + solarized.
BYOL_BASE = replace(SIMCLR, saturation=0.2, blur_sigma=(0.1, 2.0))
BYOL = (replace(BYOL_BASE, blur_p=1.0), replace(BYOL_BASE, blur_p=0.1, solarize_p=0.2))
RECIPES: dict[str, tuple[ImageAugmentConfig, ImageAugmentConfig]] = {
    "simclr-cifar": (SIMCLR, SIMCLR),
    "byol": BYOL,
}


# --- the per-image PIL pipeline ---------------------------------------------------------------


class PILAugment:
    """The same transforms as BatchedImageAugment, one PIL image at a time.

    Supports the ops the recipes use (crop, flip, jitter, grayscale, blur, solarize).
    """

    def __init__(self, config: ImageAugmentConfig, rng: random.Random) -> None:
        unsupported = {"rotation_p": config.rotation_p, "noise_p": config.noise_p,
                       "erase_p": config.erase_p}
        if any(unsupported.values()):
            raise ValueError(f"PIL baseline does not implement {unsupported}")
        self.c = config
        self.rng = rng
        self.hue_luts = {s: [(v + s) % 256 for v in range(256)] for s in range(256)}
        threshold = round(config.solarize_threshold * 255)
        self.solarize_lut = [255 - v if v >= threshold else v for v in range(256)] * 3

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """RandomResizedCrop's sampling: area in crop_scale, log-uniform ratio, 10 tries."""
        c, r = self.c, self.rng
        for _ in range(10):
            area = width * height * r.uniform(*c.crop_scale)
            ratio = math.exp(r.uniform(math.log(c.crop_ratio[0]), math.log(c.crop_ratio[1])))
            w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
            if w <= width and h <= height:
                left, top = r.uniform(0, width - w), r.uniform(0, height - h)
                return left, top, left + w, top + h
        return 0.0, 0.0, float(width), float(height)

    def __call__(self, img: Image.Image) -> np.ndarray:
        c, r = self.c, self.rng
        size = c.output_size or img.height
        img = img.resize((size, size), Image.Resampling.BILINEAR,
                         box=self.crop_box(img.width, img.height))
        if r.random() < c.flip_p:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if r.random() < c.jitter_p:
            img = ImageEnhance.Brightness(img).enhance(r.uniform(1 - c.brightness,
                                                                 1 + c.brightness))
            img = ImageEnhance.Contrast(img).enhance(r.uniform(1 - c.contrast, 1 + c.contrast))
            img = ImageEnhance.Color(img).enhance(r.uniform(1 - c.saturation, 1 + c.saturation))
            shift = round(r.uniform(-c.hue, c.hue) * 255) % 256
            h, s, v = img.convert("HSV").split()
            img = Image.merge("HSV", (h.point(self.hue_luts[shift]), s, v)).convert("RGB")
        if r.random() < c.grayscale_p:
            img = img.convert("L").convert("RGB")
        if c.blur_p > 0 and r.random() < c.blur_p:
            img = img.filter(ImageFilter.GaussianBlur(radius=r.uniform(*c.blur_sigma)))
        if c.solarize_p > 0 and r.random() < c.solarize_p:
            img = img.point(self.solarize_lut)
        return np.asarray(img)


def pil_two_views(augs: tuple[PILAugment, PILAugment], batch: np.ndarray) -> list[torch.Tensor]:
    """Per-image loop, then collate into float (B, C, H, W) as a DataLoader would."""
    out = []
    for aug in augs:
        views = [aug(Image.fromarray(image)) for image in batch]
        stacked = torch.from_numpy(np.stack(views))
        out.append(stacked.permute(0, 3, 1, 2).float().div_(255.0))
    return out


def batched_two_views(augs: tuple[BatchedImageAugment, BatchedImageAugment],
                      generator: torch.Generator, batch: torch.Tensor) -> list[torch.Tensor]:
    return [aug(batch, generator) for aug in augs]


# --- data and timing --------------------------------------------------------------------------


def load_images(data: Path | None, count: int, seed: int) -> tuple[np.ndarray, str]:
    """count 32x32 RGB images as uint8 (N, 32, 32, 3): CIFAR-10 JPEGs if found, else random."""
    if data is not None and data.is_dir():
        classes = sorted(p for p in data.iterdir() if p.is_dir())
        per_class = math.ceil(count / max(len(classes), 1))
        paths = [p for d in classes for p in sorted(d.glob("*.jpg"))[:per_class]][:count]
        if len(paths) == count:
            arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
            if all(a.shape == (32, 32, 3) for a in arrays):
                return np.stack(arrays), f"{len(paths)} CIFAR-10 JPEGs from {data}"
    rs = np.random.default_rng(seed)
    return rs.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), f"{count} random images"


def images_per_second(step: Callable[[int], object], batches: int, batch_size: int,
                      budget_s: float) -> float:
    """Run step(i) over batches until budget_s has passed (after one warm-up step)."""
    step(0)
    done, start = 0, time.perf_counter()
    while True:
        step(done % batches)
        done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return done * batch_size / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Images/s of batched tensor augmentation vs a per-image PIL pipeline "
        "(two views per image, like SimCLR).")
    parser.add_argument("--quick", action="store_true", help="~10 s run (smaller time budget)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=None,
                        help="images to load (default 2048, 512 with --quick)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time budget per measurement (default 7, 1 with --quick)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: same single core as PIL)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="CIFAR-10 train folder of class subfolders of JPEGs "
                        "(random pixels if missing)")
    parser.add_argument("--random-data", action="store_true", help="use random pixels")
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    count = args.images or (512 if args.quick else 2048)
    budget = args.seconds or (1.0 if args.quick else 7.0)
    bs = args.batch_size
    count = max(count, bs)
    torch.set_num_threads(args.threads)
    images, source = load_images(None if args.random_data else args.data, count, args.seed)
    batches = len(images) // bs
    np_batches = [images[i * bs:(i + 1) * bs] for i in range(batches)]
    torch_batches = [torch.from_numpy(b) for b in np_batches]
    print(f"data: {source}; batch {bs}, 2 views/image, torch threads {args.threads}, "
          f"{budget:g} s per measurement")

    rows = []
    for recipe, configs in RECIPES.items():
        generator = torch.Generator().manual_seed(args.seed)
        tensor_augs = (BatchedImageAugment(configs[0]), BatchedImageAugment(configs[1]))
        rng = random.Random(args.seed)
        pil_augs = (PILAugment(configs[0], rng), PILAugment(configs[1], rng))
        rates = {
            "batched": images_per_second(
                lambda i: batched_two_views(tensor_augs, generator, torch_batches[i]),  # noqa: B023
                batches, bs, budget),
            "pil": images_per_second(
                lambda i: pil_two_views(pil_augs, np_batches[i]),  # noqa: B023
                batches, bs, budget),
        }
        for pipeline, rate in rates.items():
            rows.append({"recipe": recipe, "pipeline": pipeline, "images_per_s": round(rate, 1),
                         "views_per_s": round(2 * rate, 1),
                         "speedup_vs_pil": round(rate / rates["pil"], 2)})
            print(f"{recipe:>13} {pipeline:>8}: {rate:9.0f} images/s ({2 * rate:9.0f} views/s)"
                  f"  x{rate / rates['pil']:.1f} vs PIL")

    result = {
        "benchmark": "augment",
        "quick": args.quick,
        "data": source,
        "image_shape": [32, 32, 3],
        "batch_size": bs,
        "views_per_image": 2,
        "seconds_per_measurement": budget,
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "recipes": {name: [asdict(c) for c in cfgs] for name, cfgs in RECIPES.items()},
        "results": rows,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "augment.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Augmentation throughput",
        "",
        f"{source}; 32x32 RGB uint8, batch {bs}, two views per image; torch {torch.__version__},"
        f" {args.threads} thread(s), {os.cpu_count()} CPUs; {budget:g} s per measurement"
        f"{' (--quick)' if args.quick else ''}.",
        "",
        "| recipe | pipeline | images/s | views/s | vs PIL |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {r['recipe']} | {r['pipeline']} | {r['images_per_s']:.0f} | "
              f"{r['views_per_s']:.0f} | x{r['speedup_vs_pil']:.1f} |" for r in rows]
    (args.results_dir / "augment.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.results_dir / 'augment.json'} and {args.results_dir / 'augment.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
