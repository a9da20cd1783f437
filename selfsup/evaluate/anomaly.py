"""Anomaly scores from a pretrained encoder, and their ROC-AUC where anomaly labels are known.

Two scores, both fitted on normal data only:

- ``knn_scores``: mean cosine distance of a sample's embedding to its k nearest normal
  training embeddings (deep kNN anomaly detection, Bergman, Cohen & Hoshen 2020, "Deep
  Nearest Neighbor Anomaly Detection");
- the masked-reconstruction error of a ``ts-mask`` model
  (:meth:`selfsup.methods.ts_mask.TSMask.reconstruction_error`), batched by ``batched_scores``.

A higher score means more anomalous. ``roc_auc`` wraps scikit-learn's ``roc_auc_score``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from selfsup.errors import SelfsupError

__all__ = ["batched_scores", "knn_scores", "roc_auc"]


def knn_scores(normal: Any, query: Any, k: int = 5, exclude_self: bool = False) -> np.ndarray:
    """Mean cosine distance (1 - cosine similarity) from each query row to its k nearest rows
    of ``normal``. With ``exclude_self`` (query is normal itself) each row's own match is
    skipped, so training scores are not all zero."""
    bank = torch.nn.functional.normalize(torch.as_tensor(np.asarray(normal), dtype=torch.float32),
                                         dim=1)
    q = torch.nn.functional.normalize(torch.as_tensor(np.asarray(query), dtype=torch.float32),
                                      dim=1)
    if bank.ndim != 2 or q.ndim != 2 or bank.shape[1] != q.shape[1]:
        raise SelfsupError(f"anomaly kNN: embeddings of shapes {tuple(bank.shape)} and "
                           f"{tuple(q.shape)} do not match")
    if k < 1:
        raise SelfsupError(f"anomaly kNN: k must be at least 1, not {k}")
    skip = 1 if exclude_self else 0
    k = min(k, bank.shape[0] - skip)
    if k < 1:
        raise SelfsupError("anomaly kNN: too few normal training embeddings")
    sims = torch.topk(q @ bank.T, k + skip, dim=1).values[:, skip:]
    return (1.0 - sims).mean(dim=1).numpy()


@torch.no_grad()
def batched_scores(
    score: Callable[[torch.Tensor], torch.Tensor], data: Any, batch_size: int = 256
) -> np.ndarray:
    """``score`` (e.g. a ts-mask model's ``reconstruction_error``) over a reader's inputs."""
    out = []
    for start in range(0, len(data), batch_size):
        rows = np.arange(start, min(len(data), start + batch_size))
        out.append(score(data.inputs(rows)).float().cpu())
    return torch.cat(out).numpy()


def roc_auc(scores: Any, is_anomaly: Any) -> float:
    """Area under the ROC curve of ``scores`` for the binary ``is_anomaly`` labels."""
    y = np.asarray(is_anomaly).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise SelfsupError(f"anomaly: {s.shape} scores for {y.shape} labels")
    if y.all() or not y.any():
        raise SelfsupError("anomaly ROC-AUC needs both normal and anomalous test samples")
    if not np.isfinite(s).all():
        raise SelfsupError("anomaly: the scores hold NaN or infinity")
    return float(roc_auc_score(y, s))
