"""The text protocol per label budget and seed: probes and (optionally) fine-tuning and the
SetFit-style protocol (evaluate/setfit.py) of the model, the same architecture from scratch and
the starting model, on cached features; and the sweep summary (paired gains, the image sweep's
form) made from its rows.

The probes read the sentence embeddings the model's own pipeline makes (the encoder pools and
normalises as its sentence-transformers modules say: MiniLM's are mean-pooled, L2-normalised)
and apply the plain recipe to them (TEXT_PROBES): logistic regression on those features as they
are, C from scikit-learn's LogisticRegressionCV grid, chosen by stratified 5-fold
cross-validation over the whole labelled subset when it holds fewer than 5,000 texts
(benchmarks/text_probe_recipe.py checks the match on MiniLM)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from selfsup import atomic
from selfsup.data.labelled_text import LabelledText
from selfsup.errors import SelfsupError
from selfsup.evaluate.budgets import budget_name
from selfsup.evaluate.finetune import (
    HEAD_INITS,
    TEXT_HEAD_INIT,
)
from selfsup.evaluate.plan import Plan, PlanBar
from selfsup.evaluate.quality import quality_metrics
from selfsup.evaluate.setfit import SetFitConfig, setfit_text
from selfsup.evaluate.sweep import (
    LabelBudget,
    label_subset,
    probe_subset,
    spread,
    summarise_point,
)
from selfsup.evaluate.text_finetune import (  # moved there; re-exported here
    SCRATCH_LR,
    TextSplit,
    finetune_text,
    text_finetune_config,
)
from selfsup.text_models import (  # re-exported: the evaluation's public names
    TextModel,
    Tokenized,
    text_features,
    tokenize_texts,
)

log = logging.getLogger("selfsup")

#: The text probes' recipe (see the module docstring). Under ``cv_below`` labelled texts a
#: validation carve would be a handful of them (4 at 10 per class on two classes) and would
#: choose by noise; even at 2,000 IMDB reviews a 20% carve chose a C 1.1 points below the
#: plain recipe's (benchmarks/results/text_probe_recipe.md). Past 5,000 texts a carve of 1,000
#: is steady and five fits per setting would cost minutes.
TEXT_PROBES: dict[str, Any] = {"cv_below": 5000, "cv_folds": 5, "standardise": False,
                               "Cs": tuple(float(c) for c in np.logspace(-4, 4, 10))}


# ---------------------------------------------------------------------------------------------
# The protocol


def text_plan(budgets: int, seeds: int, *, contenders: int, finetune: bool, baseline: bool,
              minutes: float | None, epochs: int | None, setfit: bool = False) -> Plan:
    """What :func:`evaluate_models` will run: the features of each contender (the model, the
    starting model), then per budget and seed the probes, the fine-tunings, the SetFit-style
    runs and the from-scratch baseline, each fine-tuning bounded by ``minutes`` and/or
    ``epochs`` (a SetFit-style run by ``minutes`` and its pairs)."""
    plan = Plan(budgets, seeds)
    plan.add("features", times=contenders)
    limit = f"{epochs} epoch{'s' if epochs != 1 else ''}" if epochs else None
    for _ in range(budgets * seeds):
        plan.add("probes")
        if finetune:
            plan.add("fine-tuning", minutes, limit)
            if contenders > 1:
                plan.add("starting-model fine-tuning", minutes, limit)
        if setfit:
            plan.add("SetFit-style fine-tuning", minutes, "its pairs")
            if contenders > 1:
                plan.add("starting-model SetFit-style fine-tuning", minutes, "its pairs")
        if baseline:
            plan.add("from-scratch baseline", minutes, limit)
    return plan


def _probe(features: np.ndarray, labels: np.ndarray, rows: np.ndarray, test_x: np.ndarray,
           test_y: np.ndarray, seed: int, val_fraction: float) -> dict[str, Any]:
    return probe_subset(features[rows], labels[rows], test_x, test_y, seed, val_fraction,
                        **TEXT_PROBES)


def evaluate_models(
    model: TextModel,
    train: LabelledText,
    test: LabelledText,
    *,
    start: TextModel | None = None,
    budgets: list[LabelBudget] | None = None,
    finetune: bool = False,
    setfit: bool = False,
    setfit_options: dict[str, Any] | None = None,
    baseline: bool = True,
    finetune_minutes: float | None = 5.0,
    finetune_epochs: int | None = None,
    finetune_head: str = TEXT_HEAD_INIT,
    scratch_lr: float = SCRATCH_LR,
    max_length: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    seeds: int = 1,
    val_fraction: float = 0.2,
    progress: bool = False,
    embeddings_out: Path | None = None,
) -> dict[str, Any]:
    """The text protocol for ``model`` (and ``start``, and from scratch) on ``train``/``test``.

    Every budget is run for ``seeds`` label subsets (seeds ``seed``, ``seed + 1``, ...): each
    budget's row holds the first seed's full detail, and under ``runs`` / ``summary`` every
    seed's scores and their mean and spread, in the form of the image sweep (sweep.py), so that
    :func:`text_sweep` turns the record into a ``sweep.json``. Texts are embedded once for all.
    With ``setfit``, every contender also runs the SetFit-style protocol on each subset
    (:func:`setfit_text`; ``setfit_options``: :class:`SetFitConfig` fields, its budget in
    minutes ``finetune_minutes``). The label-free metrics of the model's test embeddings go to
    ``quality``; with
    ``embeddings_out``, a sample of those embeddings (for the report's map) is written there.
    Returns the eval.json record (see the module docstring); writes nothing else.
    """
    started = time.monotonic()
    budgets = budgets or [LabelBudget(fraction=1.0)]
    train_y, test_y = np.asarray(train.labels), np.asarray(test.labels)
    num_classes = max(train.num_classes, test.num_classes)
    if len(np.unique(train_y)) < 2:
        raise SelfsupError(f"{train.source}: the labels hold a single class")
    if len(set(train.texts)) < 2:
        raise SelfsupError(f"{train.source}: all {len(train.texts)} labelled texts are "
                           "identical: nothing tells the classes apart")
    if int(seeds) < 1:
        raise SelfsupError(f"--seeds must be at least 1, got {seeds}")
    if finetune_head not in HEAD_INITS:
        raise SelfsupError(f"--finetune-head must be one of {', '.join(HEAD_INITS)}, "
                           f"not {finetune_head!r}")
    draws = [seed + k for k in range(int(seeds))]
    subsets = {(budget_name(b), s): label_subset(train_y, b, s) for b in budgets for s in draws}
    needed = np.unique(np.concatenate(list(subsets.values())))
    position = np.full(len(train_y), -1, dtype=np.int64)
    position[needed] = np.arange(len(needed))
    needed_texts = [train.texts[i] for i in needed]

    contenders: dict[str, TextModel] = {"model": model}
    if start is not None:
        contenders["start"] = start
    plan = text_plan(len(budgets), len(draws), contenders=len(contenders), finetune=finetune,
                     baseline=baseline, minutes=finetune_minutes, epochs=finetune_epochs,
                     setfit=setfit)
    plan.announce()
    with PlanBar(plan, progress) as bar:  # its units run without bars of their own
        embeddings: dict[str, dict[str, Any]] = {}
        features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        tokens: dict[str, tuple[Tokenized, Tokenized]] = {}
        for name, contender in contenders.items():
            bar.start(f"features of {contender.source}")
            info: dict[str, Any] = {}
            made: list[tuple[Tokenized, np.ndarray]] = []
            for split, texts in (("train", needed_texts), ("test", test.texts)):
                began = time.monotonic()
                tokenized = tokenize_texts(contender, texts, max_length,
                                           what=f"{split} texts ({name})")
                vectors = text_features(contender.encoder, tokenized, contender.pad_id,
                                        batch_size=batch_size)
                seconds = time.monotonic() - began
                info[split] = {"texts": len(texts), "truncated": tokenized.truncated,
                               "max_length": tokenized.max_length, "seconds": seconds,
                               "texts_per_s": len(texts) / max(seconds, 1e-9)}
                made.append((tokenized, vectors))
            tokens[name] = (made[0][0], made[1][0])
            features[name] = (made[0][1], made[1][1])
            embeddings[name] = info
            bar.done()
            log.info("%s: embedded %d texts at %.1f texts/s (at most %d tokens)", contender.source,
                     len(needed) + len(test_y),
                     (len(needed) + len(test_y)) / max(info["train"]["seconds"]
                                                       + info["test"]["seconds"], 1e-9),
                     info["test"]["max_length"])

        def splits(name: str, pad_id: int, local: np.ndarray) -> tuple[TextSplit, TextSplit]:
            train_tokens, test_tokens = tokens[name]
            return (TextSplit(train_tokens, train_y[needed], pad_id).subset(local),
                    TextSplit(test_tokens, test_y, pad_id))

        base_config = text_finetune_config(minutes=finetune_minutes, epochs=finetune_epochs,
                                           seed=seed, progress=False, head_init=finetune_head)
        # From scratch the features are random: a probe of them is no head start.
        scratch_config = dataclasses.replace(base_config, lr=scratch_lr, head_init="random")
        setfit_config = SetFitConfig(**{"minutes": finetune_minutes, "seed": seed,
                                        "precision": base_config.precision,
                                        **(setfit_options or {})})
        # The protocols that train a copy of each contender's encoder: (key, label, run).
        tuners = [t for t, wanted in (
            (("finetune", "fine-tuning", lambda enc, tr, te, s: finetune_text(
                enc, tr, te, num_classes, dataclasses.replace(base_config, seed=s))), finetune),
            (("setfit", "SetFit-style fine-tuning", lambda enc, tr, te, s: setfit_text(
                enc, tr, te, dataclasses.replace(setfit_config, seed=s))), setfit),
        ) if wanted]
        rows_out = []
        for budget in budgets:
            name = budget_name(budget)
            runs: list[dict[str, Any]] = []
            detail: dict[str, Any] | None = None
            for s in draws:
                rows = subsets[name, s]
                local = position[rows]
                row: dict[str, Any] = {"budget": name, "fraction": budget.fraction,
                                       "labels_per_class": budget.per_class,
                                       "num_labels": int(len(rows))}
                where = f"{name} labels, seed {s}"
                bar.start(f"probes, {where}")
                for kind in contenders:
                    train_x, test_x = features[kind]
                    row[kind] = _probe(train_x, train_y[needed], local, test_x, test_y, s,
                                       val_fraction)
                bar.done()
                for protocol, label, tune in tuners:  # each contender, a copy of its encoder
                    for kind, contender in contenders.items():
                        tr, te = splits(kind, contender.pad_id, local)
                        log.info("%s %s on %s", label, contender.source, where)
                        bar.start(f"{label} {kind}, {where}")
                        row[kind][protocol] = tune(copy.deepcopy(contender.encoder), tr, te, s)
                        bar.done()
                if baseline:
                    fresh = model.fresh(s)
                    tr, te = splits("model", fresh.pad_id, local)  # the same tokenizer
                    log.info("training the same architecture from scratch on %s", where)
                    bar.start(f"from scratch, {where}")
                    # Its whole budget: a random start may sit at chance for a while, and
                    # stopping it early would make the reference weaker than it is.
                    row["scratch"] = {"finetune": finetune_text(
                        fresh.encoder, tr, te, num_classes,
                        dataclasses.replace(scratch_config, seed=s), patience=None)}
                    bar.done()
                row["gains"] = _gains(row)
                runs.append(_seed_scores(row, s))
                detail = detail or row  # the first seed's row keeps its full detail
            detail["runs"] = runs
            detail["summary"] = summarise_point(runs)
            rows_out.append(detail)

    test_x = features["model"][1]
    if embeddings_out is not None:
        sample = np.random.default_rng(0).permutation(len(test_x))[:2000]
        with atomic.atomic_path(embeddings_out) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, features=test_x[sample], labels=test_y[sample])
    last = rows_out[-1]
    result: dict[str, Any] = {
        "method": None,
        "encoder": "hf_text",
        "modality": "text",
        "model": model.source,
        "start_model": start.source if start is not None else None,
        "train_data": train.source,
        "test_data": test.source,
        "num_train": int(len(train_y)),
        "num_test": int(len(test_y)),
        "num_classes": int(num_classes),
        "class_names": train.class_names,
        "chance_accuracy": float(np.bincount(test_y).max() / len(test_y)),
        "max_length": int(model.sentence_length if max_length is None
                          else min(max_length, model.max_length)),
        "truncated": {k: {s: v[s]["truncated"] for s in v} for k, v in embeddings.items()},
        "embedding": embeddings,
        "seed": seed,
        "seeds": int(seeds),
        "val_fraction": val_fraction,
        "protocol": ",".join([*(["finetune"] if finetune else []),
                              *(["setfit"] if setfit else [])]) or "probes",
        "pooling": {k: c.pooling for k, c in contenders.items()},
        "probe_config": {**TEXT_PROBES, "Cs": list(TEXT_PROBES["Cs"])},
        "finetune_config": {**dataclasses.asdict(base_config), "scratch_lr": scratch_lr},
        **({"setfit_config": dataclasses.asdict(setfit_config)} if setfit else {}),
        "budgets": rows_out,
        "quality": {k: v for k, v in quality_metrics(test_x).items() if k != "per_dimension_std"},
        # The largest budget's scores, where image evaluations keep theirs (for the report).
        "budget": last["budget"],
        "linear": last["model"]["linear"],
        "knn": last["model"]["knn"],
        **({"setfit": last["model"]["setfit"]} if setfit else {}),
    }
    if baseline:
        result["supervised"] = {**last["scratch"]["finetune"],
                                "minutes": finetune_minutes or 0.0,
                                "what": "same architecture from scratch, fine-tuned on the labels"}
        sup = result["supervised"]["accuracy"]
        result["linear_over_supervised"] = result["linear"]["accuracy"] / sup if sup > 0 else None
    result["seconds"] = time.monotonic() - started
    return result


def _seed_scores(row: dict[str, Any], seed: int) -> dict[str, Any]:
    """One seed's scores of the model under the image sweep's protocol names: the probes, its
    fine-tuning, and the from-scratch training as the supervised baseline."""
    model = row["model"]
    scores: dict[str, Any] = {"seed": seed, "num_labels": row["num_labels"],
                              "linear": model["linear"], "knn": model["knn"]}
    keep = ("accuracy", "macro_f1", "steps", "seconds", "val_accuracy")
    for protocol in ("finetune", "setfit"):
        if protocol in model:
            scores[protocol] = {k: model[protocol].get(k) for k in keep}
    if "scratch" in row:
        scores["supervised"] = {k: row["scratch"]["finetune"].get(k) for k in keep}
    if "start" in row:
        scores["start"] = {p: {k: v.get(k) for k in keep} for p, v in row["start"].items()
                           if isinstance(v, dict) and "accuracy" in v}
    return scores


def budget_accuracy(row: dict[str, Any], kind: str, protocol: str) -> dict[str, Any] | None:
    """Mean and spread over seeds of one contender's test accuracy in a budget's row (kind
    'model', 'start' or 'scratch'; protocol 'linear', 'knn', 'finetune' or 'setfit'); None if
    not run."""
    runs = row.get("runs") or [_seed_scores(row, row.get("seed", 0))]
    values = []
    for scores in runs:
        if kind == "scratch":
            found = scores.get("supervised") if protocol == "finetune" else None
        elif kind == "start":
            found = (scores.get("start") or {}).get(protocol)
        else:
            found = scores.get(protocol)
        if found is None:
            return None
        values.append(found["accuracy"])
    return spread(values)


def text_sweep(result: dict[str, Any]) -> dict[str, Any]:
    """The ``sweep.json`` of a text evaluation: the same record as an image sweep's, so that
    ``selfsup report`` draws the label-efficiency curve and states the verdict unchanged."""
    baseline = result.get("supervised") is not None
    return {
        "run": result.get("run"),
        "method": result.get("method"),
        "encoder": result.get("encoder"),
        "modality": "text",
        "train_data": result["train_data"],
        "test_data": result["test_data"],
        "num_train_pool": result["num_train"],
        "num_test": result["num_test"],
        "num_classes": result["num_classes"],
        "chance_accuracy": result["chance_accuracy"],
        "seeds": result.get("seeds", 1),
        "val_fraction": result["val_fraction"],
        "pretrain_seconds": result.get("pretrain_seconds"),
        "baseline": ({"minutes": result["finetune_config"].get("minutes"),
                      "epochs": result["finetune_config"].get("epochs")} if baseline else None),
        "baseline_note": (None if baseline else "no from-scratch baseline was asked for"),
        "baseline_what": "the same architecture from scratch, fine-tuned on the same labels",
        "points": [{"budget": row["budget"], "fraction": row["fraction"],
                    "labels_per_class": row["labels_per_class"],
                    "num_labels": float(np.mean([r["num_labels"] for r in row["runs"]])),
                    "runs": row["runs"], "summary": row["summary"]}
                   for row in result["budgets"]],
        "quality": result.get("quality"),
    }


def _gains(row: dict[str, Any]) -> dict[str, float]:
    """Accuracy differences (in [0, 1] units) that answer the question directly."""
    gains: dict[str, float] = {}
    model = row["model"]
    if "start" in row:
        gains["linear_over_start"] = (model["linear"]["accuracy"]
                                      - row["start"]["linear"]["accuracy"])
        for protocol in ("finetune", "setfit"):
            if protocol in model and protocol in row["start"]:
                gains[f"{protocol}_over_start"] = (model[protocol]["accuracy"]
                                                   - row["start"][protocol]["accuracy"])
    if "setfit" in model:
        gains["setfit_over_linear"] = model["setfit"]["accuracy"] - model["linear"]["accuracy"]
    if "scratch" in row:
        scratch = row["scratch"]["finetune"]["accuracy"]
        gains["linear_over_scratch"] = model["linear"]["accuracy"] - scratch
        if "finetune" in model:
            gains["finetune_over_scratch"] = model["finetune"]["accuracy"] - scratch
    return gains
