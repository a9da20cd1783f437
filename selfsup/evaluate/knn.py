"""Weighted kNN on frozen features (InstDisc's vote, Wu et al. 2018: each of the k nearest bank
samples votes for its class with weight exp(cosine / temperature)), and the kNN probe that
picks k and the temperature on a validation carve."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from selfsup.errors import SelfsupError
from selfsup.evaluate.probe_data import (
    ProbeResult,
    _accuracy,
    _best,
    _cv_folds,
    _features,
    _labels,
    _splits,
)

# ---------------------------------------------------------------------------------------------
# Weighted kNN


def _as_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device=device, dtype=torch.float32)
    else:
        t = torch.from_numpy(_features(x, name)).to(device)
    if t.ndim != 2 or t.shape[0] == 0:
        raise SelfsupError(f"{name}: expected a non-empty 2-D feature matrix, got {tuple(t.shape)}")
    return t


def _encode_labels(bank_y: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(classes, codes): bank labels as codes 0..C-1 plus the label each code stands for."""
    if num_classes is None:
        classes, codes = np.unique(bank_y, return_inverse=True)
        return classes, codes
    if not np.issubdtype(bank_y.dtype, np.integer):
        raise SelfsupError("knn: with num_classes the labels must be integers 0..num_classes-1")
    if len(bank_y) and (bank_y.min() < 0 or bank_y.max() >= num_classes):
        raise SelfsupError(
            f"knn: labels span {bank_y.min()}..{bank_y.max()}, outside 0..{num_classes - 1}"
        )
    return np.arange(num_classes), bank_y


def _neighbours(
    bank: torch.Tensor, query: torch.Tensor, k: int, chunk: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per query chunk: cosine similarities and bank indices of the k nearest, most similar first.

    One (chunk, n_bank) similarity block at a time, so memory stays bounded for any query count.
    """
    bank = torch.nn.functional.normalize(bank, dim=1)
    for start in range(0, query.shape[0], chunk):
        q = torch.nn.functional.normalize(query[start:start + chunk], dim=1)
        sims, idx = torch.topk(q @ bank.T, k, dim=1, largest=True, sorted=True)
        yield sims, idx


def _vote(sims: torch.Tensor, labels: torch.Tensor, temperature: float, n: int) -> torch.Tensor:
    """Class with the largest sum of exp(sim / T) over the neighbours (InstDisc weighting).

    Shifting by each row's top similarity leaves the winner unchanged and keeps exp finite for
    small T. Ties go to the lowest class code.
    """
    w = torch.exp((sims - sims[:, :1]) / temperature)
    votes = torch.zeros(sims.shape[0], n, dtype=w.dtype, device=w.device)
    votes.scatter_add_(1, labels, w)
    return votes.argmax(dim=1)


def _check_knn_args(k: int, temperature: float, chunk: int) -> None:
    if int(k) < 1:
        raise SelfsupError(f"knn: k must be at least 1, got {k}")
    if not temperature > 0:
        raise SelfsupError(f"knn: temperature must be positive, got {temperature}")
    if int(chunk) < 1:
        raise SelfsupError(f"knn: chunk must be at least 1, got {chunk}")


def knn_classify(
    bank_x: Any,
    bank_y: Any,
    query_x: Any,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """Predict labels by cosine-similarity kNN with votes weighted by exp(sim / T).

    The weighting of Wu et al. 2018 (InstDisc), as in the SimCLR/MoCo/DINO kNN monitors: a close
    neighbour outvotes several far ones. k is clipped to the bank size. Labels may be any sortable
    values; with `num_classes` they must be integers in [0, num_classes). Runs on the device of
    `bank_x` when it is a torch tensor, else on CPU; returns a numpy array of labels.
    """
    _check_knn_args(k, temperature, chunk)
    device = bank_x.device if isinstance(bank_x, torch.Tensor) else torch.device("cpu")
    bank = _as_tensor(bank_x, "bank features", device)
    query = _as_tensor(query_x, "query features", device)
    if bank.shape[1] != query.shape[1]:
        raise SelfsupError(f"knn: bank width {bank.shape[1]} != query width {query.shape[1]}")
    classes, codes = _encode_labels(_labels(bank_y, bank.shape[0], "bank labels"), num_classes)
    codes_t = torch.as_tensor(codes, dtype=torch.long, device=device)
    k = min(int(k), bank.shape[0])
    with torch.no_grad():
        pred = [
            _vote(sims, codes_t[idx], temperature, len(classes))
            for sims, idx in _neighbours(bank, query, k, int(chunk))
        ]
    return classes[torch.cat(pred).cpu().numpy()]


def _knn_grid(
    tr_x: np.ndarray, tr_y: np.ndarray, va_x: np.ndarray, va_y: np.ndarray,
    grid_k: list[int], grid_t: list[float],
) -> list[float]:
    """Validation accuracy of every (k, T) in product order, train as the bank.

    The neighbours are found once for the largest k and reused for every setting.
    """
    classes, codes = np.unique(tr_y, return_inverse=True)
    codes_t = torch.as_tensor(codes, dtype=torch.long)
    with torch.no_grad():
        found = list(_neighbours(torch.from_numpy(tr_x), torch.from_numpy(va_x), max(grid_k), 1024))
        sims = torch.cat([s for s, _ in found])
        near = codes_t[torch.cat([i for _, i in found])]
        return [
            _accuracy(classes[_vote(sims[:, :k], near[:, :k], t, len(classes)).numpy()], va_y)
            for k, t in itertools.product(grid_k, grid_t)
        ]


def knn_probe(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    ks: Sequence[int] = (10, 20, 50, 100, 200),
    temperatures: Sequence[float] = (0.07,),
    cv_folds: int | None = None,
    seed: int = 0,
) -> ProbeResult:
    """Weighted kNN with (k, T) chosen on validation, train as the bank; test uses train+val.

    With `cv_folds` the choice is by mean accuracy over stratified k-fold cross-validation of
    train and val together (`seed` shuffles the folds). ks are first clipped to the smallest bank
    (duplicates dropped), so the reported k is the one actually used. Ties go to the first
    setting in (ks, temperatures) order.
    """
    tr_x, tr_y, va_x, va_y, te_x, te_y = _splits(train_x, train_y, val_x, val_y, test_x, test_y,
                                                 cv_folds)
    if not ks or not temperatures:
        raise SelfsupError("knn probe: ks and temperatures must not be empty")
    for k, t in itertools.product(ks, temperatures):
        _check_knn_args(k, t, 1)
    all_x = np.concatenate([tr_x, va_x])
    all_y = np.concatenate([tr_y, va_y])
    folds = (
        [(np.arange(len(tr_x)), np.arange(len(tr_x), len(all_x)))]
        if cv_folds is None
        else _cv_folds(all_y, cv_folds, seed)
    )
    smallest_bank = min(len(f) for f, _ in folds)
    grid_k = list(dict.fromkeys(min(int(k), smallest_bank) for k in ks))
    grid_t = [float(t) for t in dict.fromkeys(temperatures)]
    per_fold = [_knn_grid(all_x[f], all_y[f], all_x[v], all_y[v], grid_k, grid_t) for f, v in folds]
    accuracies = np.mean(per_fold, axis=0)
    best = _best(accuracies)
    k, t = list(itertools.product(grid_k, grid_t))[best]
    pred = knn_classify(all_x, all_y, te_x, k=k, temperature=t)
    chosen: dict[str, Any] = {"k": k, "temperature": t}
    if cv_folds is not None:
        chosen["cv_folds"] = len(folds)
    return ProbeResult(
        accuracy=_accuracy(pred, te_y),
        val_accuracy=float(accuracies[best]),
        chosen=chosen,
        predictions=pred,
    )
