"""What every probe shares: its result type, and the checks that turn the caller's features and
labels into arrays (a clear error for a wrong shape, NaN or too few classes), and the
cross-validation folds and the choice of the best setting."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from selfsup.errors import SelfsupError


@dataclass
class ProbeResult:
    """Outcome of one probe: test accuracy, and the validation accuracy that picked `chosen`."""

    accuracy: float
    val_accuracy: float
    chosen: dict[str, Any] = field(default_factory=dict)
    # Test-set predictions (for other scores such as macro-F1); not part of as_dict().
    predictions: np.ndarray | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready copy (for eval.json)."""
        return {
            "accuracy": float(self.accuracy),
            "val_accuracy": float(self.val_accuracy),
            "chosen": dict(self.chosen),
        }


# ---------------------------------------------------------------------------------------------
# Input handling


def _features(x: Any, name: str) -> np.ndarray:
    """A finite 2-D float32 numpy matrix from a numpy array or a torch tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise SelfsupError(f"{name}: expected a 2-D feature matrix (n, d), got shape {x.shape}")
    if x.shape[0] == 0:
        raise SelfsupError(f"{name}: no rows")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise SelfsupError(f"{name}: row {bad} holds NaN or infinity")
    return x


def _labels(y: Any, n: int, name: str) -> np.ndarray:
    """A 1-D label vector of length n from a numpy array, list or torch tensor."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        raise SelfsupError(f"{name}: expected a 1-D label vector, got shape {y.shape}")
    if len(y) != n:
        raise SelfsupError(f"{name}: {len(y)} labels for {n} feature rows")
    return y


def _splits(
    train_x: Any, train_y: Any, val_x: Any, val_y: Any, test_x: Any, test_y: Any,
    cv_folds: int | None = None,
) -> tuple[np.ndarray, ...]:
    """Validate the three (features, labels) pairs; all must share the feature dimension.

    With ``cv_folds`` the validation pair may be None (empty arrays are returned for it): the
    settings are then chosen by cross-validation over the training rows alone, in their order.
    """
    out = []
    dims = set()
    no_val = val_x is None and val_y is None
    if no_val and cv_folds is None:
        raise SelfsupError("a probe needs validation features unless cv_folds is given")
    for split, x, y in (("train", train_x, train_y), ("val", val_x, val_y),
                        ("test", test_x, test_y)):
        if split == "val" and no_val:
            out += [np.zeros((0, out[0].shape[1]), np.float32), out[1][:0]]
            continue
        fx = _features(x, f"{split} features")
        out += [fx, _labels(y, len(fx), f"{split} labels")]
        dims.add(fx.shape[1])
    if len(dims) != 1:
        raise SelfsupError(f"train, val and test features differ in width: {sorted(dims)}")
    return tuple(out)


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(pred == y))


def _cv_folds(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (fit, val) index pairs over all of y.

    k is capped by the largest class (scikit-learn's limit) and is at least 2; a class with fewer
    than k examples is then missing from some validation folds, which scikit-learn allows.
    """
    if int(folds) < 2:
        raise SelfsupError(f"cv_folds must be at least 2, got {folds}")
    if len(y) < 4:
        raise SelfsupError(f"cross-validation needs at least 4 labelled examples, got {len(y)}")
    _, counts = np.unique(y, return_counts=True)
    k = max(2, min(int(folds), int(counts.max()), len(y) // 2))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(splitter.split(np.zeros(len(y)), y))


def _best(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the first (the simpler setting)."""
    return int(np.argmax(np.asarray(scores)))
