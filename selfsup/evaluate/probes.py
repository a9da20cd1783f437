"""Frozen-feature probes: how much a pretrained encoder already knows, read off cached features.

Standard read-outs, each with its hyper-parameter chosen on a validation split that the caller
carves from the labelled training data, so the test split never influences a choice. On a tiny
labelled set (UCR's dozens of examples) a held-out quarter is a handful of examples and its
choice is noise; `cv_folds=k` chooses instead by stratified k-fold cross-validation over train
and validation together, the usual protocol there (e.g. TS2Vec, Yue et al. 2022):

- a linear probe (multinomial logistic regression on standardised features), the protocol of
  Chen et al. 2020 (SimCLR) and Kolesnikov et al. 2019 ("Revisiting self-supervised visual
  representation learning");
- a weighted k-nearest-neighbour classifier on cosine similarity (Wu et al. 2018, InstDisc), the
  cheap monitor used by MoCo, SimCLR and DINO (Caron et al. 2021);
- for series, an RBF-kernel SVM, TS2Vec's own read-out (Yue et al. 2022).

Features may be numpy arrays or torch tensors; results hold plain Python numbers.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from selfsup.errors import SelfsupError
from selfsup.evaluate.knn import (  # moved there; re-exported here
    knn_classify,
    knn_probe,
)
from selfsup.evaluate.probe_data import (  # moved there; re-exported here
    ProbeResult,
    _accuracy,
    _best,
    _cv_folds,
    _features,
    _labels,
    _splits,
)

__all__ = [
    "ProbeResult",
    "knn_classify",
    "knn_probe",
    "linear_head",
    "linear_probe",
    "stratified_split",
    "svm_probe",
]



# ---------------------------------------------------------------------------------------------
# Linear probe


def _fit_logreg(model: LogisticRegression, x: np.ndarray, y: np.ndarray) -> bool:
    """Fit in place; return whether lbfgs converged (its ConvergenceWarning is swallowed)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    converged = True
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            converged = False
        else:  # not ours to hide
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return converged


def _c_path(
    tr_x: np.ndarray, tr_y: np.ndarray, va_x: np.ndarray, va_y: np.ndarray,
    grid: list[float], max_iter: int, seed: int, standardise: bool = True,
) -> tuple[list[float], LogisticRegression]:
    """Validation accuracy for each C of the grid (fit on train, on standardised features unless
    ``standardise`` is false), and the first best model.

    Fits are warm-started along the C path (the objective is convex, so only the speed changes).
    """
    tr_s, va_s = tr_x, va_x
    if standardise:
        scaler = StandardScaler().fit(tr_x)
        tr_s, va_s = scaler.transform(tr_x), scaler.transform(va_x)
    model = LogisticRegression(C=grid[0], max_iter=max_iter, random_state=seed, warm_start=True)
    accuracies: list[float] = []
    best_model = model
    for c in grid:
        model.set_params(C=c)
        _fit_logreg(model, tr_s, tr_y)
        accuracies.append(_accuracy(model.predict(va_s), va_y))
        if accuracies[-1] > max(accuracies[:-1], default=-1.0):
            best_model = copy.deepcopy(model)
    return accuracies, best_model


def _c_grid(Cs: Sequence[float], train_y: np.ndarray, probe: str) -> list[float]:
    """A probe's C values, sorted and distinct; refused unless positive, and unless the training
    labels hold two classes at least."""
    grid = sorted({float(c) for c in Cs})
    if not grid or any(not np.isfinite(c) or c <= 0 for c in grid):
        raise SelfsupError(f"{probe}: Cs must be positive numbers, got {list(Cs)}")
    if len(np.unique(train_y)) < 2:
        raise SelfsupError(f"{probe}: the training labels hold a single class")
    return grid


def _cross_validated(
    grid_accuracies: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], list[float]],
    x: np.ndarray, y: np.ndarray, folds: int, seed: int, probe: str,
) -> tuple[list[float], int]:
    """Mean accuracy over stratified folds of each grid setting, and the number of folds.

    ``grid_accuracies(fit_x, fit_y, val_x, val_y)`` scores every setting of a probe's grid on
    one fold; a fold whose fitting part holds a single class is skipped.
    """
    splits = _cv_folds(y, folds, seed)
    per_fold = [grid_accuracies(x[f], y[f], x[v], y[v]) for f, v in splits
                if len(np.unique(y[f])) >= 2]
    if not per_fold:
        raise SelfsupError(f"{probe}: every cross-validation fold holds a single class")
    return list(np.mean(per_fold, axis=0)), len(splits)


def linear_probe(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0),
    max_iter: int = 1000,
    seed: int = 0,
    cv_folds: int | None = None,
    standardise: bool = True,
) -> ProbeResult:
    """Multinomial logistic regression (lbfgs) on standardised frozen features (``standardise``
    false: on the features as given, e.g. a sentence encoder's normalised embeddings, the
    recipe its users apply).

    C (inverse L2 strength) is chosen by validation accuracy with the probe fit on train, or with
    `cv_folds` by the mean accuracy of stratified k-fold cross-validation over train and val
    together; ties go to the smaller C (the simpler model). The probe is then refit on train+val
    with that C and scored on test, which never influences a choice. `chosen` also records
    whether the final fit converged within `max_iter`.
    """
    tr_x, tr_y, va_x, va_y, te_x, te_y = _splits(train_x, train_y, val_x, val_y, test_x, test_y,
                                                 cv_folds)
    grid = _c_grid(Cs, tr_y, "linear probe")
    all_x = np.concatenate([tr_x, va_x])
    all_y = np.concatenate([tr_y, va_y])

    chosen: dict[str, Any] = {}
    if cv_folds is None:
        accuracies, best_model = _c_path(tr_x, tr_y, va_x, va_y, grid, max_iter, seed,
                                         standardise)
        best = _best(accuracies)
        # Warm start the final fit from the chosen model where the classes (so shapes) agree.
        same_classes = np.array_equal(np.unique(all_y), best_model.classes_)
        final = best_model if same_classes else None
    else:
        accuracies, chosen["cv_folds"] = _cross_validated(
            lambda *fold: _c_path(*fold, grid, max_iter, seed, standardise)[0],
            all_x, all_y, cv_folds, seed, "linear probe",
        )
        best = _best(accuracies)
        final = None
    if final is None:
        final = LogisticRegression(C=grid[best], max_iter=max_iter, random_state=seed)
    scale = StandardScaler(with_mean=standardise, with_std=standardise).fit(all_x).transform
    converged = _fit_logreg(final, scale(all_x), all_y)
    predicted = final.predict(scale(te_x))
    return ProbeResult(
        accuracy=_accuracy(predicted, te_y),
        val_accuracy=float(accuracies[best]),
        chosen={"C": grid[best], "converged": converged, **chosen},
        predictions=predicted,
    )


def linear_head(
    x: Any, y: Any, num_classes: int, *, Cs: Sequence[float] = tuple(np.logspace(-3, 3, 7)),
    cv_folds: int = 5, max_iter: int = 1000, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A linear probe as a classifier head's starting weights: LP-FT's first stage (Kumar et
    al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-
    Distribution"), so that fine-tuning starts from a head that already reads the features
    instead of a random one.

    Logistic regression on the *raw* features (unlike :func:`linear_probe`), C chosen by
    stratified ``cv_folds``-fold cross-validation on ``x`` alone, ties to the smaller C. Raw, so
    that the L2 penalty keeps the head as small as the features' scale asks: a probe fitted on
    standardised features and folded back divides its weights by the features' std (about
    0.04 for MiniLM's embeddings), and fine-tuning from that large head lost 9.3 points on
    held-out IMDB train reviews (benchmarks/imdb_finetune_diagnosis.py, commit d4d0869).
    Returns ``weight`` (num_classes, D) and ``bias`` (num_classes,); a two-class probe's single
    logit is split evenly across the two rows; a class missing from ``y`` gets zero weights and
    the lowest bias.
    """
    fx = _features(x, "features")
    fy = _labels(y, len(fx), "labels")
    if not np.issubdtype(fy.dtype, np.integer) or fy.min() < 0 or fy.max() >= num_classes:
        raise SelfsupError(f"linear head: labels must be class ids in [0, {num_classes})")
    grid = _c_grid(Cs, fy, "linear head")
    accuracies, folds = _cross_validated(
        lambda *fold: _c_path(*fold, grid, max_iter, seed, standardise=False)[0], fx, fy,
        cv_folds, seed, "linear head",
    )
    best = _best(accuracies)
    model = LogisticRegression(C=grid[best], max_iter=max_iter, random_state=seed)
    converged = _fit_logreg(model, fx, fy)
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # one logit w.x + b  ==  softmax over (-(w.x + b)/2, +(...)/2)
        coef = np.concatenate([-coef, coef]) / 2
        intercept = np.concatenate([-intercept, intercept]) / 2
    weight = np.zeros((int(num_classes), fx.shape[1]), dtype=np.float32)
    bias = np.full(int(num_classes), float(intercept.min()), dtype=np.float32)
    weight[model.classes_] = coef
    bias[model.classes_] = intercept
    chosen = {"C": grid[best], "cv_accuracy": float(accuracies[best]), "cv_folds": folds,
              "converged": converged}
    return weight, bias, chosen


# ---------------------------------------------------------------------------------------------
# RBF-kernel SVM


def _svm_accuracies(
    tr_x: np.ndarray, tr_y: np.ndarray, va_x: np.ndarray, va_y: np.ndarray, grid: list[float]
) -> list[float]:
    scaler = StandardScaler().fit(tr_x)
    tr_s, va_s = scaler.transform(tr_x), scaler.transform(va_x)
    return [_accuracy(SVC(C=c, gamma="scale").fit(tr_s, tr_y).predict(va_s), va_y) for c in grid]


def svm_probe(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    Cs: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0),
    seed: int = 0,
    cv_folds: int | None = None,
) -> ProbeResult:
    """An RBF-kernel SVM on standardised frozen features.

    The read-out of TS2Vec's classification benchmark (Yue et al. 2022, after Franceschi et al.
    2019): on UCR's dozens of labelled series a kernel machine is the usual probe of series
    representations. C is chosen as in :func:`linear_probe` (validation accuracy, or k-fold
    cross-validation over train and val with `cv_folds`; ties to the smaller C), the SVM is
    refit on train+val and scored once on test.
    """
    tr_x, tr_y, va_x, va_y, te_x, te_y = _splits(train_x, train_y, val_x, val_y, test_x, test_y,
                                                 cv_folds)
    grid = _c_grid(Cs, tr_y, "svm probe")
    all_x = np.concatenate([tr_x, va_x])
    all_y = np.concatenate([tr_y, va_y])
    chosen: dict[str, Any] = {}
    if cv_folds is None:
        accuracies = _svm_accuracies(tr_x, tr_y, va_x, va_y, grid)
    else:
        accuracies, chosen["cv_folds"] = _cross_validated(
            lambda *fold: _svm_accuracies(*fold, grid), all_x, all_y, cv_folds, seed, "svm probe"
        )
    best = _best(accuracies)
    scaler = StandardScaler().fit(all_x)
    model = SVC(C=grid[best], gamma="scale").fit(scaler.transform(all_x), all_y)
    predicted = model.predict(scaler.transform(te_x))
    return ProbeResult(
        accuracy=_accuracy(predicted, te_y),
        val_accuracy=float(accuracies[best]),
        chosen={"C": grid[best], **chosen},
        predictions=predicted,
    )


# ---------------------------------------------------------------------------------------------
# Splits


def stratified_split(labels: Any, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint (train, val) indices covering all rows, stratified by class.

    Uses scikit-learn's stratified `train_test_split`; where stratification is impossible (a
    class with a single example, or fewer val/train slots than classes) it falls back to an
    unstratified split. Either way every class with at least two examples then keeps one in
    train (moved back from val if needed), so the probe can learn it. Same seed, same split.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1:
        raise SelfsupError(f"labels: expected a 1-D label vector, got shape {y.shape}")
    n = len(y)
    if not 0.0 < float(val_fraction) < 1.0:
        raise SelfsupError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if n < 2:
        raise SelfsupError(f"cannot split {n} labelled example(s) into train and val")
    idx = np.arange(n)
    try:
        train, val = train_test_split(idx, test_size=float(val_fraction), stratify=y,
                                      random_state=seed)
    except ValueError:
        try:
            train, val = train_test_split(idx, test_size=float(val_fraction), random_state=seed)
        except ValueError as err:  # one side would be empty
            raise SelfsupError(f"cannot split {n} examples with val_fraction {val_fraction}: "
                               f"{err}") from None

    classes, counts = np.unique(y, return_counts=True)
    missing = classes[(counts >= 2) & ~np.isin(classes, y[train])]
    if len(missing):
        keep = np.ones(len(val), dtype=bool)
        moved = []
        for c in missing:
            j = int(np.flatnonzero(y[val] == c)[0])
            keep[j] = False
            moved.append(val[j])
        train, val = np.concatenate([train, moved]), val[keep]
    if len(val) == 0:
        raise SelfsupError(f"val_fraction {val_fraction} leaves no validation examples")
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64)
