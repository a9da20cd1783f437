"""Which of two CIFAR-10 encoders should the sweep spend its hours on? Answered on cifar10/train.

A recipe change (say, progressive resolution) must be chosen without the test split. This script
holds out a stratified carve of cifar10/train (5,000 images by default; seed 0), draws the sweep's
label subsets (1%, 10%, 100% of the rest; 3 seeds) from the remainder with the sweep's own
functions, and scores the sweep's linear and kNN probes (settings chosen on a validation carve of
each subset) on the held-out carve. cifar10/test is never read.

    .venv/bin/python benchmarks/cifar10_carve_probe.py \\
        runs/bench-cifar10-sweep-finetune/vicreg runs/bench-cifar10-sweep-progressive/vicreg \\
        --tag progressive

Writes benchmarks/results/cifar10_carve_probe[_TAG].{json,md}. About 2 minutes per encoder on
2 cores (features once, then the probes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfsup.data.images import load_folder  # noqa: E402
from selfsup.evaluate.budgets import label_subset, parse_budgets  # noqa: E402
from selfsup.evaluate.features import extract_features  # noqa: E402
from selfsup.evaluate.probes import stratified_split  # noqa: E402
from selfsup.evaluate.scores import probe_subset  # noqa: E402
from selfsup.run import as_run, load_encoder  # noqa: E402

TRAIN = REPO.parent / "shared" / "data" / "cifar10" / "train"
RESULTS = REPO / "benchmarks" / "results"


def score(run: Path, images: np.ndarray, labels: np.ndarray, carve: int, fractions: str,
          seeds: int, val_fraction: float) -> dict:
    """Probe accuracies on the held-out carve, per label budget: mean, std and each seed's."""
    encoder, _ = load_encoder(as_run(run))
    precision = json.loads((run / "pretrain.json").read_text()).get("precision", "bf16")
    features = extract_features(encoder, images, precision=precision)
    pool, held = stratified_split(labels, carve / len(labels), 0)
    out = {}
    for budget in parse_budgets(fractions):
        seen: dict[str, list[float]] = {"linear": [], "knn": []}
        for seed in range(seeds):
            rows = pool[label_subset(labels[pool], budget, seed)]
            probes = probe_subset(features[rows], labels[rows], features[held], labels[held],
                                  seed, val_fraction)
            for name in seen:
                seen[name].append(probes[name]["accuracy"])
        out[budget.name] = {name: {"mean": float(np.mean(v)), "std": float(np.std(v)),
                                   "seeds": v} for name, v in seen.items()}
    return out


def markdown(result: dict) -> str:
    runs = list(result["encoders"])
    lines = [
        "# CIFAR-10: two encoders on a carve of train (the test split unread)",
        "",
        f"Held out: a stratified {result['carve']} of cifar10/train (seed 0); label subsets "
        f"from the other {result['pool']}, {result['seeds']} seeds, the sweep's probes "
        f"(`probe_subset`). Accuracy in %, mean ± std over seeds. "
        f"Command: `{result['command']}`.",
        "",
        "| labels | " + " | ".join(f"{p} `{r}`" for r in runs for p in ("linear", "kNN")) + " |",
        "|---|" + "---:|" * (2 * len(runs)),
    ]
    for budget in result["encoders"][runs[0]]:
        cells = []
        for r in runs:
            for name in ("linear", "knn"):
                s = result["encoders"][r][budget][name]
                cells.append(f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}")
        lines.append(f"| {budget} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (selfsup pretrain --out)")
    parser.add_argument("--carve", type=int, default=5000, help="held-out train images")
    parser.add_argument("--fractions", default="0.01,0.1,1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="each subset's own validation carve for the probes' choices")
    parser.add_argument("--tag", help="cifar10_carve_probe_TAG")
    args = parser.parse_args()
    if not TRAIN.is_dir():
        sys.exit(f"needs {TRAIN} (see ../shared/data/README.md)")
    data = load_folder(TRAIN, progress=False)
    started = time.monotonic()
    result = {
        "command": "python benchmarks/cifar10_carve_probe.py "
        + " ".join(str(r) for r in args.runs) + (f" --tag {args.tag}" if args.tag else ""),
        "carve": args.carve, "pool": len(data.labels) - args.carve, "seeds": args.seeds,
        "encoders": {},
    }
    for run in args.runs:
        result["encoders"][str(run)] = score(run, data.images, data.labels, args.carve,
                                             args.fractions, args.seeds, args.val_fraction)
        print(run, json.dumps(result["encoders"][str(run)]), flush=True)
    result["seconds"] = time.monotonic() - started
    result["date"] = time.strftime("%Y-%m-%d")
    stem = "cifar10_carve_probe" + (f"_{args.tag}" if args.tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
