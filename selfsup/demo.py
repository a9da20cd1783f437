"""`selfsup demo`: pre-train SimCLR on scikit-learn's digits, then evaluate — in minutes.

The digits (1,797 8x8 grayscale images, shipped inside scikit-learn) need their own
augmentations: no flips (a mirrored 3 is not a 3), gentle crops and small rotations.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from selfsup.api import pretrain
from selfsup.evaluate import evaluate

DIGITS_AUGMENT = {
    "crop_scale": (0.5, 1.0),
    "flip_p": 0.0,
    "rotation_p": 0.5,
    "rotation_degrees": 15.0,
    "jitter_p": 0.8,
    "grayscale_p": 0.0,
    "noise_p": 0.5,
    "noise_std": 0.1,
}


def run_demo(out: str = "runs/demo", minutes: float = 1.5, progress: bool = True) -> dict[str, Any]:
    """Pre-train on all digits without labels; evaluate on a stratified 80/20 labelled split."""
    if Path(out).exists():
        shutil.rmtree(out)  # the demo always starts fresh
    run = pretrain(
        "simclr",
        "digits",
        out=out,
        minutes=minutes,
        batch_size=256,
        encoder="resnet_small",
        augment_options=DIGITS_AUGMENT,
        progress=progress,
        monitor_minutes=0.5,
    )
    return evaluate(run.path, "digits", progress=progress)
