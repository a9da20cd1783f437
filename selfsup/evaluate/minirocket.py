"""MiniRocket: the reference a practitioner fits first on labelled series.

MiniRocket (Dempster et al., KDD 2021) turns each series into ~10,000 features of random,
dilated convolutions (the proportion of positive values of each), then fits a ridge classifier
whose regularisation is chosen by leave-one-out cross-validation on the training data. It
fits in seconds and matches most deep models on the UCR archive, so a series verdict that does
not name it flatters self-supervision. selfsup does not re-implement it: this is aeon's
``MiniRocketClassifier`` (the paper's recipe: MiniRocket features, ``StandardScaler(with_mean=
False)``, ``RidgeClassifierCV(alphas=logspace(-3, 3, 10))``), fitted on the same labelled split
the probes see and scored on the same test split.

Inputs are the raw series, as MiniRocket expects (it is scale-invariant by construction):
series shorter than the longest, and the train and test halves of unequal length, are
zero-padded to one common length (aeon's ``Padder`` default), and to MiniRocket's minimum of 9
steps.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from selfsup.data.series import SeriesData
from selfsup.errors import SelfsupError
from selfsup.evaluate.scores import macro_f1

MIN_LENGTH = 9  # MiniRocket's kernels have 9 weights


def _padded(data: SeriesData, width: int) -> np.ndarray:
    """(n, C, width) float64, zeros after each series' length (SeriesData already zeroes it)."""
    values = np.asarray(data.values, dtype=np.float64)
    return np.pad(values, ((0, 0), (0, 0), (0, width - values.shape[2])))


def minirocket_reference(
    train: SeriesData, test: SeriesData, seed: int = 0, n_kernels: int = 10_000
) -> dict[str, Any]:
    """Fit MiniRocket + ridge on ``train``'s labels, score on ``test``: accuracy, macro-F1 and
    the fit time (which includes numba's compilation on a process's first call)."""
    # aeon (numba) takes ~3 s to import: only series evaluations pay it, so it loads here.
    from aeon.classification.convolution_based import MiniRocketClassifier

    if train.labels is None or test.labels is None:
        raise SelfsupError("the MiniRocket reference needs labelled train and test series")
    if train.channels != test.channels:
        raise SelfsupError(
            f"{test.source} has {test.channels} channel(s), {train.source} has "
            f"{train.channels}: MiniRocket fits one channel count"
        )
    width = max(MIN_LENGTH, train.values.shape[2], test.values.shape[2])
    started = time.perf_counter()
    model = MiniRocketClassifier(n_kernels=n_kernels, random_state=seed, n_jobs=1)
    model.fit(_padded(train, width), train.labels)
    fit_seconds = time.perf_counter() - started
    predicted = np.asarray(model.predict(_padded(test, width)))
    return {
        "accuracy": float((predicted == test.labels).mean()),
        "macro_f1": macro_f1(test.labels, predicted),
        "fit_seconds": fit_seconds,
        "num_train": len(train),
        "n_kernels": n_kernels,
        "alpha": float(model.pipeline_[-1].alpha_),
        "library": "aeon MiniRocketClassifier",
    }
