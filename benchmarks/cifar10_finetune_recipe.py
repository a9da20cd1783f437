"""Choosing the CIFAR-10 sweep's fine-tuning head on a carve of cifar10/*train*, never test.

Image fine-tuning starts its head near zero; text fine-tuning starts it as a linear probe of the
frozen features (LP-FT, Kumar et al. 2022), which on IMDB lifted MiniLM's fine-tuning by 3
points. Whether LP-FT should be the image default is measured here: the sweep's VICReg encoder
(benchmarks/cifar10_sweep.py --tag finetune) fine-tuned from each head start on label subsets of
the sizes the sweep uses (500 and 5,000 labels), drawn from 40,000 of the training images, and
scored on the other 10,000 (stratified, seed 0). The budget is in steps (the 5 minutes of the
sweep's first point, 2,367 steps), so that the result does not depend on what else the machine
runs.

    .venv/bin/python benchmarks/cifar10_finetune_recipe.py            # ~40 min on 2 quiet cores
    .venv/bin/python benchmarks/cifar10_finetune_recipe.py --quick    # the pipeline runs

Writes benchmarks/results/cifar10_finetune_recipe.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from selfsup import atomic  # noqa: E402
from selfsup.evaluate.finetune import FinetuneConfig, finetune, label_subset  # noqa: E402
from selfsup.evaluate.probes import stratified_split  # noqa: E402
from selfsup.evaluate.protocol import load_labelled, reader_config  # noqa: E402
from selfsup.run import as_run, load_encoder  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DATA = REPO.parent / "shared" / "data" / "cifar10" / "train"
RUN = REPO / "runs" / "bench-cifar10-sweep-finetune" / "vicreg"
HEADS = ("random", "probe")
log = logging.getLogger("selfsup")


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Choosing the image fine-tuning head on a carve of cifar10/train", "",
             f"`{r['run']}` fine-tuned for {r['steps']} steps (the sweep's recipe otherwise) "
             f"on label subsets drawn from {r['pool']} training images, scored on the other "
             f"{r['held']} (never cifar10/test). Accuracy in %, one row per subset. Generated "
             f"by `benchmarks/cifar10_finetune_recipe.py`{' --quick' * r['quick']}.", "",
             "| labels | seed | random head | probe head (LP-FT) | probe − random | probe's "
             "start kept |", "|---|---:|---:|---:|---:|---|"]
    for row in r["rows"]:
        random_, probe = row["random"]["accuracy"], row["probe"]["accuracy"]
        lines.append(f"| {row['labels']} | {row['seed']} | {100 * random_:.1f} | "
                     f"{100 * probe:.1f} | {100 * (probe - random_):+.1f} | "
                     f"{row['probe']['start_kept']} |")
    gaps = [row["probe"]["accuracy"] - row["random"]["accuracy"] for row in r["rows"]]
    lines += ["", f"Mean probe − random: {100 * np.mean(gaps):+.1f} points over {len(gaps)} "
              f"subsets. Took {r['seconds'] / 60:.1f} min on {r['machine']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=str(RUN))
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--labels", default="500,5000", help="label counts per subset")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2367)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: the pipeline runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    began = time.monotonic()
    run = as_run(args.run)
    encoder, spec = load_encoder(run)
    data = load_labelled(args.data, "image", reader_config(run.read_config(), spec))
    if args.quick:
        rows = np.sort(np.random.default_rng(0).permutation(len(data))[:2000])
        data = data.subset(rows, f"{data.source} (2000 of it)")
        args.labels, args.seeds, args.steps = "100", 1, 5
    pool_rows, held_rows = stratified_split(data.labels, 0.2, 0)
    pool = data.subset(pool_rows, f"{data.source} (pool)")
    held = data.subset(held_rows, f"{data.source} (held out)")
    rows = []
    for count in (int(c) for c in args.labels.split(",")):
        for seed in range(args.seeds):
            labelled = label_subset(pool, count / len(pool), seed)
            row: dict[str, Any] = {"labels": len(labelled), "seed": seed}
            for head in HEADS:
                config = FinetuneConfig(minutes=None, steps=args.steps, seed=seed,
                                        head_init=head)
                log.info("%d labels, seed %d, %s head", len(labelled), seed, head)
                result = finetune(copy.deepcopy(encoder).train(), labelled, held, config)
                row[head] = {k: result[k] for k in ("accuracy", "val_accuracy", "steps",
                                                    "seconds", "chosen_epoch", "start_kept",
                                                    "head")}
            rows.append(row)
    result = {"benchmark": "cifar10_finetune_recipe", "quick": args.quick, "run": args.run,
              "steps": args.steps, "pool": len(pool), "held": len(held), "rows": rows,
              "seconds": time.monotonic() - began,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads"}
    stem = RESULTS / f"cifar10_finetune_recipe{'_quick' * args.quick}"
    atomic.write_json(stem.with_suffix(".json"), result)
    atomic.write_text(stem.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
