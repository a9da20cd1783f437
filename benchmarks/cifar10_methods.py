"""Every image method under one equal CPU budget on CIFAR-10: kNN, linear probe, images/s, memory.

Each method is pre-trained by the real CLI (`selfsup pretrain METHOD --minutes M`, its paper's
defaults, the same encoder and batch) on cifar10/train, then `selfsup evaluate` scores kNN and
a linear probe on the test set (probe settings chosen on validation carved from train). The
supervised baseline (same encoder from scratch, same labels, same M minutes) is trained once,
with the first method's evaluation, and shared by the table. Peak memory is the largest
resident set of the pre-training process, sampled every half second.

Results are written after every method, and a finished method is not run again (``--redo``
to force), so the benchmark may be spread over several sittings on a quiet machine:

    .venv/bin/python benchmarks/cifar10_methods.py                  # 8 x 20 min + evaluation
    .venv/bin/python benchmarks/cifar10_methods.py --methods byol,dino
    .venv/bin/python benchmarks/cifar10_methods.py --quick          # 1 min each, to a _quick file
    .venv/bin/python benchmarks/cifar10_methods.py --tag engine2    # a new table (and baseline)
                                                                    # in cifar10_methods_engine2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar10"
RESULTS = REPO / "benchmarks" / "results"
METHODS = ["simclr", "mocov2", "mocov3", "byol", "dino", "barlowtwins", "vicreg"]


def run_measured(command: list[str]) -> float:
    """Run ``command``; return its peak resident memory in MiB (the process and its children)."""
    print("$", " ".join(command), flush=True)
    process = subprocess.Popen(command)
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            rss = watched.memory_info().rss
            rss += sum(child.memory_info().rss for child in watched.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.5)
    if process.returncode != 0:
        raise SystemExit(f"command failed with exit code {process.returncode}")
    return peak / 2**20


def selfsup(*args: str) -> list[str]:
    return [str(REPO / ".venv" / "bin" / "selfsup"), *args]


def markdown(result: dict) -> str:
    minutes = result["minutes"]
    lines = [
        "# CIFAR-10: every image method, one budget",
        "",
        f"Machine: {result['machine']}. Each method: `selfsup pretrain METHOD --minutes {minutes}"
        f" --encoder {result['encoder']} --batch-size {result['batch_size']}` on cifar10/train, "
        "its paper's defaults; then `selfsup evaluate` on cifar10/test. Command: "
        f"`{result['command']}`. CIFAR-10 here is re-encoded JPEG (quality 75).",
        "",
        "| method | kNN, train carve | kNN | linear probe | linear / supervised | images/s "
        "| steps | epochs | peak memory (MiB) | precision, compile, date |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    supervised = result.get("supervised")
    for name in METHODS:
        row = result["methods"].get(name)
        if row is None:
            lines.append(f"| {name} | not run yet | | | | | | | | |")
            continue
        ratio = f"{row['linear'] / supervised:.3f}" if supervised else "n/a"
        carve = f"{row['knn_val']:.4f}" if row.get("knn_val") is not None else "n/a"
        lines.append(
            f"| {name} | {carve} | {row['knn']:.4f} | {row['linear']:.4f} | {ratio} | "
            f"{row['images_per_s']:.1f} | {row['steps']} | {row['epochs']:.1f} | "
            f"{row['peak_mib']:.0f} | {row.get('precision', '?')}, compile "
            f"{row.get('compile', '?')}, {row['date']} |"
        )
    if supervised:
        lines.append(f"| supervised baseline ({minutes} min, same encoder) | | | "
                     f"{supervised:.4f} | 1.000 | | | | | "
                     f"{result.get('supervised_precision', '?')} |")
    target = [n for n, r in result["methods"].items() if r["knn"] < 0.5]
    lines += [
        "",
        "Rows measured on different days may come from different machines of the same 2-core "
        "kind: precision `bf16` means a CPU with AVX-512 BF16 (bf16 autocast), `32` one "
        "without, where the same minutes buy fewer steps.",
        "",
        "kNN, train carve: the run's own kNN monitor (pretrain.json), on 2,000 labelled images "
        "drawn from cifar10/train (3/4 bank, 1/4 queries): what a choice among the methods may "
        "read without touching the test split. kNN and linear probe: scored on cifar10/test.",
        "",
        "Target: every method above 50% kNN accuracy within the budget. "
        + (f"Below it: {', '.join(target)}." if target else "All measured methods reach it."),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--encoder", default="resnet_small")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--redo", action="store_true", help="re-run methods already measured")
    parser.add_argument("--quick", action="store_true", help="1 minute each, to a _quick file")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench-cifar10-methods")
    parser.add_argument("--tag", help="a table of its own, cifar10_methods_TAG (e.g. after an "
                        "engine change: its supervised baseline is trained anew too)")
    args = parser.parse_args()
    if args.quick:
        args.minutes = 1.0
        args.runs = args.runs.with_name(args.runs.name + "-quick")
    if not CIFAR.is_dir():
        sys.exit(f"needs {CIFAR} (see ../shared/data/README.md)")
    stem = "cifar10_methods_quick" if args.quick else "cifar10_methods"
    if args.tag:
        stem += f"_{args.tag}"
        args.runs = args.runs.with_name(f"{args.runs.name}-{args.tag}")
    path = RESULTS / f"{stem}.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    settings = {"minutes": args.minutes, "encoder": args.encoder, "batch_size": args.batch_size}
    if any(result.get(k) != v for k, v in settings.items()):
        result = {**settings, "methods": {}, "supervised": None}  # other settings: start over
    result.update({
        "command": "python benchmarks/cifar10_methods.py" + (" --quick" if args.quick else "")
        + (f" --tag {args.tag}" if args.tag else ""),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    })

    for name, row in result["methods"].items():  # rows recorded before the column existed
        summary_file = args.runs / name / "pretrain.json"
        if "knn_val" not in row and summary_file.is_file():
            row["knn_val"] = json.loads(summary_file.read_text())["knn_monitor_accuracy"]

    for name in args.methods.split(","):
        if name not in METHODS:
            sys.exit(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
        if name in result["methods"] and not args.redo:
            print(f"{name}: measured already (use --redo to run it again)")
            continue
        run = args.runs / name
        if run.exists():
            import shutil

            shutil.rmtree(run)
        peak = run_measured(selfsup(
            "pretrain", name, "--data", str(CIFAR / "train"), "--minutes", str(args.minutes),
            "--encoder", args.encoder, "--batch-size", str(args.batch_size), "--out", str(run),
            "--no-progress",
        ))
        baseline = [] if result.get("supervised") is None else ["--no-baseline"]
        subprocess.run(selfsup(
            "evaluate", str(run), "--data", str(CIFAR / "train"), "--test", str(CIFAR / "test"),
            "--no-progress", *baseline,
        ), check=True)
        summary = json.loads((run / "pretrain.json").read_text())
        evaluation = json.loads((run / "eval.json").read_text())
        if "supervised" in evaluation:
            result["supervised"] = evaluation["supervised"]["accuracy"]
            result["supervised_precision"] = summary["precision"]
        result["methods"][name] = {
            "knn_val": summary["knn_monitor_accuracy"],
            "knn": evaluation["knn"]["accuracy"],
            "linear": evaluation["linear"]["accuracy"],
            "images_per_s": summary["images_per_s"],
            "steps": summary["steps"],
            "epochs": summary["samples_seen"] / summary["num_samples"],
            "peak_mib": peak,
            "final_loss": summary["final_loss"],
            "precision": summary["precision"],
            "compile": yaml.safe_load((run / "config.yaml").read_text()).get("compile", "?"),
            "date": time.strftime("%Y-%m-%d"),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / f"{stem}.md").write_text(markdown(result))
        print(markdown(result), flush=True)


if __name__ == "__main__":
    main()
