"""IMDB: why is continued-MLM MiniLM worse to fine-tune? A diagnosis on training data only.

`imdb_continued.py` found that continued masked-LM pre-training of all-MiniLM-L6-v2 on IMDB
raises the linear probe at 100 labels per class but lowers the fine-tuned accuracy. This script
asks, without reading IMDB test, whether that is label-subset noise, an artefact of the
fine-tuning recipe, or the continued model itself:

- **Held-out reviews from IMDB train**: ``--held-size`` reviews that are in neither the label
  pool of `imdb_continued.py` (its seeded ``--train-size`` reviews) nor its probe-curve set;
  every score here is on them.
- **The same label subsets** as `imdb_continued.py` at ``--labels-per-class`` (seeds 0, 1, ...;
  the same stratified draws and fine-tuning seeds), for both the starting MiniLM and the
  continued run given with ``--run``.
- **Two fine-tuning recipes** for each: the default (the head starts near zero) and LP-FT (the
  head starts as a linear probe of the frozen features, Kumar et al. 2022, `--finetune-head
  probe`), plus the frozen linear probe and kNN.
- **Geometry of the mean-pooled embeddings** of the held-out reviews: the label-free metrics of
  `selfsup.evaluate.quality` (effective rank, uniformity, std) and the mean cosine similarity of
  two reviews' embeddings (anisotropy: Ethayarajh 2019 found masked-LM representations occupy a
  narrow cone).

Writes benchmarks/results/imdb_finetune_diagnosis.{json,md}. About 15 minutes on an idle 2-core
CPU (12 fine-tuning runs of about a minute, and the embeddings).

    .venv/bin/python benchmarks/imdb_continued.py --work W   # leaves W/continued
    .venv/bin/python benchmarks/imdb_finetune_diagnosis.py --run W/continued
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from imdb_continued import FULL, IMDB, RESULTS, minilm_folder  # noqa: E402  (the sibling)

from selfsup import atomic  # noqa: E402
from selfsup.data.labelled_text import LabelledText, read_labelled_text  # noqa: E402
from selfsup.errors import SelfsupError  # noqa: E402
from selfsup.evaluate.quality import quality_metrics  # noqa: E402
from selfsup.evaluate.sweep import LabelBudget, label_subset, probe_subset, spread  # noqa: E402
from selfsup.evaluate.text import (  # noqa: E402
    TextModel,
    TextSplit,
    finetune_text,
    load_folder_model,
    load_run_model,
    text_features,
    text_finetune_config,
    tokenize_texts,
)

#: imdb_continued.py's settings, which fix its label pool, probe set and fine-tuning budget.
DEFAULTS = {**{key: FULL[key] for key in ("train_size", "probe_size", "labels_per_class", "seeds",
                                          "finetune_minutes", "finetune_epochs", "max_length")},
            "held_size": 1000}
HEADS = {"random": "fine-tuned (head near zero)", "probe": "LP-FT (probe head)"}

log = logging.getLogger("selfsup")


def held_out(full: LabelledText, s: dict[str, Any], seed: int) -> tuple[LabelledText, ...]:
    """(label pool, held-out reviews): the pool and probe set as imdb_continued.py draws them;
    held-out reviews are IMDB train reviews whose text is in neither."""
    pool = full.sample(s["train_size"], seed, "--train-size")
    probe = full.sample(s["probe_size"], seed + 1, "probe set")
    return pool, reviews_outside(full, set(pool.texts) | set(probe.texts), s["held_size"],
                                 seed + 7, "the pool and probe set")


def reviews_outside(full: LabelledText, used: set[str], size: int, seed: int, what: str
                    ) -> LabelledText:
    """A seeded random ``size`` of ``full``'s reviews whose text is not in ``used`` (``what``)."""
    rest = np.asarray([i for i, text in enumerate(full.texts) if text not in used])
    if len(rest) < size:
        raise SelfsupError(f"only {len(rest)} reviews are left for --held-size {size}")
    rows = np.sort(np.random.default_rng(seed).permutation(rest)[:size])
    return full.subset(rows, f"{len(rows)} IMDB train reviews outside {what} (seed {seed})")


def geometry(features: np.ndarray) -> dict[str, float]:
    """Label-free shape of the embeddings: selfsup's quality metrics and the anisotropy."""
    quality = quality_metrics(features)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cosines = unit @ unit.T
    upper = np.triu_indices(len(unit), 1)
    return {"effective_rank": float(quality["effective_rank"]),
            "uniformity": float(quality["uniformity"]),
            "embedding_std": float(quality["embedding_std"]),
            "mean_cosine": float(cosines[upper].mean()),
            "mean_norm": float(np.linalg.norm(features, axis=1).mean())}


def diagnose(name: str, model: TextModel, pool: LabelledText, held: LabelledText,
             s: dict[str, Any], seed: int) -> dict[str, Any]:
    """Probes and both fine-tuning recipes of one model on every label subset. Only the pool
    reviews some subset holds are tokenised and embedded."""
    budget = LabelBudget(per_class=s["labels_per_class"])
    subsets = {k: label_subset(pool.labels, budget, k) for k in range(seed, seed + s["seeds"])}
    needed = np.unique(np.concatenate(list(subsets.values())))
    labelled = pool.subset(needed)
    labelled_tokens = tokenize_texts(model, labelled.texts, s["max_length"], what="pool reviews")
    held_tokens = tokenize_texts(model, held.texts, s["max_length"], what="held-out reviews")
    labelled_x = text_features(model.encoder, labelled_tokens, model.pad_id, precision="auto")
    held_x = text_features(model.encoder, held_tokens, model.pad_id, precision="auto")
    labelled_split = TextSplit(labelled_tokens, labelled.labels, model.pad_id)
    held_split = TextSplit(held_tokens, held.labels, model.pad_id)
    runs = []
    for s_seed, rows in subsets.items():
        local = np.searchsorted(needed, rows)  # positions in `labelled`
        probes = probe_subset(labelled_x[local], labelled.labels[local], held_x, held.labels,
                              s_seed, 0.2)
        run: dict[str, Any] = {"seed": s_seed, "num_labels": int(len(rows)),
                               "linear": probes["linear"]["accuracy"],
                               "knn": probes["knn"]["accuracy"]}
        for head in HEADS:
            log.info("%s: fine-tuning, head %s, label subset %d", name, head, s_seed)
            config = text_finetune_config(minutes=s["finetune_minutes"],
                                          epochs=s["finetune_epochs"], seed=s_seed,
                                          head_init=head)
            result = finetune_text(copy.deepcopy(model.encoder), labelled_split.subset(local),
                                   held_split, 2, config)
            run[head] = result["accuracy"]
            run[f"{head}_detail"] = {k: result[k] for k in ("steps", "seconds", "val_accuracy",
                                                            "chosen_epoch", "head")}
        runs.append(run)
    return {"geometry": geometry(held_x), "runs": runs,
            "summary": {p: spread([r[p] for r in runs]) for p in ("linear", "knn", *HEADS)}}


def run_benchmark(args: argparse.Namespace, s: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    full = read_labelled_text(IMDB / "imdb_train.jsonl.gz")
    pool, held = held_out(full, s, args.seed)
    continued, _, config = load_run_model(args.run)
    models = {"start": load_folder_model(minilm_folder()), "continued": continued}
    results = {name: diagnose(name, model, pool, held, s, args.seed)
               for name, model in models.items()}
    gains = {}
    for protocol in ("linear", "knn", *HEADS):
        values = [100 * (c[protocol] - b[protocol]) for c, b in
                  zip(results["continued"]["runs"], results["start"]["runs"], strict=True)]
        gains[protocol] = spread(values)
    pretrain_file = Path(args.run) / "pretrain.json"
    pretrain = json.loads(pretrain_file.read_text()) if pretrain_file.is_file() else {}
    return {"benchmark": "imdb_finetune_diagnosis", "settings": s, "seed": args.seed,
            "run": str(args.run), "run_steps": pretrain.get("steps"), "run_lr": config.get("lr"),
            "run_method_options": config.get("method_options"),
            "held_out": held.source, "pool": pool.source, "models": results,
            "gain_points": gains,
            "machine": {"platform": platform.platform(), "processor": platform.processor()},
            "seconds": time.monotonic() - started}


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def lp_ft_gain(model: dict[str, Any]) -> float:
    """LP-FT's mean accuracy minus default fine-tuning's, in points."""
    summary = model["summary"]
    return 100 * (summary["probe"]["mean"] - summary["random"]["mean"])


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    names = {"start": "starting MiniLM", "continued": "continued MLM"}
    protocols = {"linear": "linear probe (frozen)", "knn": "kNN (frozen)", **HEADS}
    seeds = [r["seed"] for r in result["models"]["start"]["runs"]]
    lines = [
        "# IMDB: why continued MLM makes MiniLM worse to fine-tune (training data only)",
        "",
        f"Continued run: `{result['run']}` ({result['run_steps']} steps"
        + (f", peak lr {result['run_lr']:g}" if result.get("run_lr") else "") + "). Scored on "
        f"{result['held_out']}; labels: {s['labels_per_class']} per class from "
        f"{result['pool']}, the label subsets of `imdb_continued.py` (seeds "
        f"{', '.join(map(str, seeds))}). IMDB test is not read. Accuracy (%).",
        "",
        "| contender | protocol | " + " | ".join(f"subset {k}" for k in seeds) + " | mean |",
        "|---|---|" + "---:|" * (len(seeds) + 1),
    ]
    for name, label in names.items():
        model = result["models"][name]
        for protocol, title in protocols.items():
            values = [pct(r[protocol]) for r in model["runs"]]
            mean = model["summary"][protocol]["mean"]
            lines.append(f"| {label} | {title} | " + " | ".join(values) + f" | {pct(mean)} |")
    lines += [
        "",
        "Paired gain, continued minus starting (points): " + "; ".join(
            f"{protocols[p]} {g['mean']:+.1f} ({', '.join(f'{v:+.1f}' for v in g['values'])})"
            for p, g in result["gain_points"].items()) + ".",
        "",
        "LP-FT minus default fine-tuning (points, mean over the subsets): " + "; ".join(
            f"{names[n]} {lp_ft_gain(m):+.1f}" for n, m in result["models"].items()) + ".",
        "",
        "## Geometry of the held-out reviews' mean-pooled embeddings",
        "",
        "| contender | effective rank | uniformity | embedding std | mean cosine | mean norm |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, label in names.items():
        g = result["models"][name]["geometry"]
        lines.append(f"| {label} | {g['effective_rank']:.0f} | {g['uniformity']:.2f} | "
                     f"{g['embedding_std']:.3f} | {g['mean_cosine']:.2f} | {g['mean_norm']:.2f} |")
    lines += [
        "",
        "Uniformity is log E exp(-2 |u - v|^2) over unit vectors (Wang & Isola 2020): nearer 0 "
        "means the embeddings crowd together. Mean cosine: two random reviews' embeddings.",
        "",
        f"Wall time {result['seconds'] / 60:.1f} min. Reproduce: `.venv/bin/python "
        "benchmarks/imdb_finetune_diagnosis.py --run RUN`, RUN being the continued run above "
        "(`benchmarks/imdb_continued.py --work W` leaves its run in W/continued).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True,
                        help="the continued MLM run (imdb_continued.py --work W leaves "
                             "W/continued)")
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value,
                            help=f"[{value}]")
    parser.add_argument("--seed", type=int, default=0, help="imdb_continued.py's --seed [0]")
    parser.add_argument("--out", default=str(RESULTS / "imdb_finetune_diagnosis"),
                        help="results path stem [benchmarks/results/imdb_finetune_diagnosis]")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = {key: getattr(args, key) for key in DEFAULTS}
    try:
        result = run_benchmark(args, settings)
    except SelfsupError as error:
        sys.exit(f"error: {error}")
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(stem.with_suffix(".json"), result)
    text = markdown(result)
    atomic.write_text(stem.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
