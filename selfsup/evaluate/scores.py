"""Scores a sweep point is made of: macro-F1, the spread of a score over seeds, the probes of one
label subset, and one point's summary over its seeds; shared by the image and text sweeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from selfsup.evaluate.probes import knn_probe, linear_probe, stratified_split

#: The protocols a sweep point may score.
PROTOCOLS = ("linear", "knn", "finetune", "finetune_scratch", "setfit", "supervised",
             "minirocket")

# ---------------------------------------------------------------------------------------------
# Scores and summaries


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in the test labels."""
    return float(f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro",
                          zero_division=0))


def spread(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) of a list of scores."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(arr) == 0:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(len(arr)),
            "values": [float(v) for v in arr]}


def probe_subset(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    seed: int,
    val_fraction: float,
    *,
    cv_below: int = 0,
    cv_folds: int = 5,
    standardise: bool = True,
    Cs: Sequence[float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Linear and kNN probes on one label subset; choices on a validation carve of that subset,
    or, for a subset of fewer than ``cv_below`` examples, by stratified ``cv_folds``-fold
    cross-validation over all of it, in its order (a carve of a few texts chooses by noise).
    ``standardise`` and ``Cs`` are the linear probe's (:func:`linear_probe`)."""
    grid = {"Cs": tuple(Cs)} if Cs is not None else {}
    if len(train_y) < cv_below:
        split: tuple[Any, ...] = (train_x, train_y, None, None, test_x, test_y)
        folds: dict[str, Any] = {"cv_folds": cv_folds}
        num_fit, num_val = len(train_y), 0
    else:
        fit_idx, val_idx = stratified_split(train_y, val_fraction, seed)
        split = (train_x[fit_idx], train_y[fit_idx], train_x[val_idx], train_y[val_idx],
                 test_x, test_y)
        folds, num_fit, num_val = {}, len(fit_idx), len(val_idx)
    out = {}
    for name, result in (
        ("linear", linear_probe(*split, seed=seed, standardise=standardise, **grid, **folds)),
        ("knn", knn_probe(*split, seed=seed, **folds)),
    ):
        out[name] = {**result.as_dict(), "macro_f1": macro_f1(test_y, result.predictions)}
    out["linear"]["num_fit"], out["linear"]["num_val"] = num_fit, num_val
    return out


def summarise_point(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread of every protocol's scores over the seeds, and the paired SSL gaps."""
    summary: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        if all(protocol in r for r in runs):
            summary[protocol] = {
                metric: spread([r[protocol][metric] for r in runs])
                for metric in ("accuracy", "macro_f1")
            }
    if "minirocket" in summary:  # the paired gap to the series reference (same labels)
        gaps = [r["linear"]["accuracy"] - r["minirocket"]["accuracy"] for r in runs]
        summary["linear_minus_minirocket"] = spread(gaps)
    if "setfit" in summary:  # text: the SetFit-style protocol against the probe (same labels)
        gaps = [r["setfit"]["accuracy"] - r["linear"]["accuracy"] for r in runs]
        summary["setfit_minus_linear"] = spread(gaps)
    if "finetune_scratch" in summary:  # fine-tuning's gain from pre-training (same recipe)
        gaps = [r["finetune"]["accuracy"] - r["finetune_scratch"]["accuracy"] for r in runs]
        summary["finetune_minus_scratch"] = spread(gaps)
    if "supervised" in summary:
        for probe in ("linear", "knn", "finetune"):
            if probe not in summary:
                continue
            gaps = [r[probe]["accuracy"] - r["supervised"]["accuracy"] for r in runs]
            summary[f"{probe}_minus_supervised"] = spread(gaps)
            ratios = [r[probe]["accuracy"] / r["supervised"]["accuracy"]
                      for r in runs if r["supervised"]["accuracy"] > 0]
            summary[f"{probe}_over_supervised"] = spread(ratios)
    return summary
