"""Does progressive resolution pay on CIFAR-10? (issue 25, item 2)

Two SimCLR runs of resnet_small for the same wall-clock budget on cifar10/train, one with full
32x32 views throughout and one with ``progressive_min_size=16`` (16 -> 32 by half the budget),
then ``selfsup evaluate RUN --data cifar10/train --no-baseline``: the linear probe and kNN on a
stratified 20% held out of the *training* images. The test split is never read, so the choice
this informs (on or off in the CIFAR recipes) is not tuned on it. Both runs are eager
(``--compile off``): compiled, the progressive run would compile once per size (three times)
and the full-size one once, which on a ResNet costs more than compiling buys. One seed: a first
look, not a verdict with error bars.

    .venv/bin/python benchmarks/progressive_resolution.py --minutes 6   # ~16 min

Writes benchmarks/results/progressive_resolution.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cifar10" / "train"
SELFSUP = str(REPO / ".venv" / "bin" / "selfsup")
VARIANTS = {"full size": [], "progressive 16 -> 32": [
    "--augment-option", "progressive_min_size=16", "--augment-option", "progressive_until=0.5"]}


def run(args: list[str]) -> None:
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(args)}\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="pre-training budget per run")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" /
                                             "progressive_resolution"))
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="progressive-") as tmp:
        for name, options in VARIANTS.items():
            out = Path(tmp) / name.split()[0]
            command = [SELFSUP, "pretrain", "simclr", "--data", str(DATA), "--encoder",
                       "resnet_small", "--batch-size", "256", "--minutes", str(args.minutes),
                       "--compile", "off", "--no-progress", "--out", str(out), *options]
            run(command)
            run([SELFSUP, "evaluate", str(out), "--data", str(DATA), "--no-baseline",
                 "--no-progress"])
            summary = json.loads((out / "pretrain.json").read_text())
            scores = json.loads((out / "eval.json").read_text())
            rows[name] = {"steps": summary["steps"], "train_seconds": summary["train_seconds"],
                          "linear": scores["linear"]["accuracy"],
                          "knn": scores["knn"]["accuracy"],
                          "command": shlex.join(command[1:])}
            print(name, json.dumps(rows[name]), flush=True)
    result = {"minutes": args.minutes, "load_after": os.getloadavg()[0], "runs": rows,
              "reproduce": shlex.join([".venv/bin/python", "benchmarks/progressive_resolution.py",
                                       *sys.argv[1:]])}
    lines = ["# Progressive resolution on CIFAR-10 (SimCLR, resnet_small)", "",
             f"Each run {args.minutes:g} min of pre-training on cifar10/train; linear probe and "
             "kNN on a stratified 20% held out of cifar10/train (the test split is not read). "
             "One seed.", "",
             "| views | steps | linear probe | kNN |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {r['steps']} | {r['linear']:.4f} | {r['knn']:.4f} |"
              for name, r in rows.items()]
    lines += ["", f"Reproduce: `{result['reproduce']}`", ""]
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
