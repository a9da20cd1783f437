"""The label-efficiency sweep on a text run, unchanged: IMDB, a small BERT pre-trained by MLM.

The same two commands as for an image run, on a text run:

    selfsup pretrain mlm --data imdb_train + imdb_unsup --vocab-size 8192 --steps S ...
    selfsup evaluate RUN --data imdb_train --test imdb_test --labels-per-class 10,100,1000 --seeds 3
    selfsup report RUN

Every budget is run for 3 seeds (a new stratified label subset each, drawn from IMDB train; the
test reviews never touch training or choices): linear probe and kNN on the frozen mean-pooled
features, against the same architecture trained from scratch on the same labels (the text
baseline: fine-tuned end to end with its best epoch chosen on a validation carve of the subset).
Budgets are in steps and epochs, not minutes, so the figures do not depend on the machine's
load. The test is a fixed seeded ``--test-size`` subset of IMDB test (25,000 reviews would cost
more than the rest together on 2 cores).

    .venv/bin/python benchmarks/imdb_sweep.py            # 42 min measured beside other work
    .venv/bin/python benchmarks/imdb_sweep.py --quick    # a tiny smoke run, to a _quick file
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
IMDB = REPO.parent / "shared" / "data" / "imdb"
RESULTS = REPO / "benchmarks" / "results"

FULL = {"steps": 300, "vocab_size": 8192, "dim": 256, "layers": 4, "heads": 4, "batch_size": 16,
        "block_size": 128, "labels_per_class": "10,100,1000", "seeds": 3, "test_size": 2000,
        "finetune_epochs": 10}
QUICK = {"steps": 10, "vocab_size": 2048, "dim": 64, "layers": 1, "heads": 2, "batch_size": 8,
         "block_size": 64, "labels_per_class": "5,20", "seeds": 2, "test_size": 100,
         "finetune_epochs": 1}


def selfsup(*args: str) -> list[str]:
    return [str(REPO / ".venv" / "bin" / "selfsup"), *args]


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def relative(command: str) -> str:
    """Paths as a reader types them from the repository root."""
    return command.replace(str(REPO), ".").replace(str(REPO.parent), "..")


def markdown(result: dict) -> str:
    from selfsup.report import sweep_markdown

    s, sweep = result["settings"], result["sweep"]
    quality = sweep.get("quality") or {}
    return "\n".join([
        "# IMDB: label-efficiency sweep of a text run (MLM from scratch vs the same "
        "architecture trained on the labels)",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}`. Pre-training: "
        f"`{result['pretrain_command']}` ({result['pretrain']['steps']} steps, "
        f"{result['pretrain']['train_seconds']:.0f} s, {result['pretrain']['precision']}). "
        f"Sweep: `{result['evaluate_command']}`.",
        "",
        f"Accuracy in %, mean ± std over {s['seeds']} seeds (each its own stratified subset of "
        f"IMDB train); test: {relative(sweep['test_data'])}. Supervised: {sweep['baseline_what']} "
        f"(up to {s['finetune_epochs']} epochs, the best epoch chosen on a validation carve of "
        "the subset).",
        "",
        sweep_markdown(sweep),
        f"Label-free metrics on the test embeddings: effective rank (RankMe) "
        f"{quality.get('effective_rank', float('nan')):.1f} of {result['settings']['dim']}, "
        f"uniformity {quality.get('uniformity', float('nan')):.3f}, collapsed: "
        f"{quality.get('collapsed')}.",
        "",
        f"Verdict (from `selfsup report`): {result['verdict']}",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run, to a _quick file")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench-imdb-sweep")
    args = parser.parse_args()
    s = QUICK if args.quick else FULL
    if not IMDB.is_dir():
        sys.exit(f"needs {IMDB} (see ../shared/data/README.md)")
    stem = "imdb_sweep_quick" if args.quick else "imdb_sweep"
    target = args.runs.with_name(args.runs.name + ("-quick" if args.quick else "")) / "mlm"
    started = time.monotonic()

    corpus = f"{IMDB / 'imdb_train.jsonl.gz'},{IMDB / 'imdb_unsup.jsonl.gz'}"
    pretrain = ["pretrain", "mlm", "--data", corpus, "--steps", str(s["steps"]),
                "--vocab-size", str(s["vocab_size"]), "--block-size", str(s["block_size"]),
                "--batch-size", str(s["batch_size"]),
                "--method-option", f"dim={s['dim']}", "--method-option", f"layers={s['layers']}",
                "--method-option", f"heads={s['heads']}", "--out", str(target), "--no-progress"]
    summary_file = target / "pretrain.json"
    recorded = target / "benchmark_settings.json"
    if not (summary_file.is_file() and recorded.is_file()
            and json.loads(recorded.read_text()) == s):
        if target.exists():
            shutil.rmtree(target)
        run(selfsup(*pretrain))
        recorded.write_text(json.dumps(s))
    evaluate = ["evaluate", str(target), "--data", str(IMDB / "imdb_train.jsonl.gz"),
                "--test", str(IMDB / "imdb_test.jsonl.gz"),
                "--labels-per-class", s["labels_per_class"], "--seeds", str(s["seeds"]),
                "--test-size", str(s["test_size"]), "--finetune-epochs", str(s["finetune_epochs"]),
                "--finetune-minutes", "120", "--no-progress"]
    run(selfsup(*evaluate))
    run(selfsup("report", str(target)))

    from selfsup.report import verdict

    sweep = json.loads((target / "sweep.json").read_text())
    pretrain_summary = json.loads(summary_file.read_text())
    result = {
        "benchmark": "imdb_sweep",
        "settings": s,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": "python benchmarks/imdb_sweep.py" + (" --quick" if args.quick else ""),
        "pretrain_command": "selfsup " + relative(" ".join(pretrain)),
        "evaluate_command": "selfsup " + relative(" ".join(evaluate)),
        "pretrain": {k: pretrain_summary.get(k) for k in
                     ("steps", "train_seconds", "precision", "final_loss")},
        "sweep": {k: v for k, v in sweep.items() if k != "run"},
        "verdict": verdict(sweep, None, sweep.get("quality")),
        "seconds": time.monotonic() - started,
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result), flush=True)


if __name__ == "__main__":
    main()
