"""Label-free signals of representation quality and collapse, on an embedding matrix Z (n, d).

Self-supervised objectives can be minimised by a constant (complete collapse) or by embeddings
that fill only a few directions (dimensional collapse); both are visible without labels:

- `embedding_std`: spread of the L2-normalised embeddings per dimension (Chen & He 2021, SimSiam
  sec. 4.1), near 1/sqrt(d) when healthy, 0 when every input maps to one point;
- `effective_rank`: RankMe (Garrido et al. 2023), the exponential of the entropy of the
  singular-value distribution, from 1 (one direction) to min(n, d) (all directions used equally).

Computed in float64 under `torch.no_grad`; numpy arrays and torch tensors are both accepted.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from selfsup.errors import SelfsupError

__all__ = ["collapse_signals", "effective_rank", "embedding_std"]


def _matrix(z: Any) -> torch.Tensor:
    """Z as a 2-D float64 CPU tensor, detached."""
    if isinstance(z, torch.Tensor):
        t = z.detach().to("cpu", torch.float64)
    else:
        t = torch.from_numpy(np.asarray(z, dtype=np.float64))
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise SelfsupError(
            f"embeddings: expected a non-empty 2-D matrix (n, d), got shape {tuple(t.shape)}"
        )
    return t


def embedding_std(z: Any) -> float:
    """Mean over dimensions of the per-dimension std of the L2-normalised rows of Z.

    SimSiam (Chen & He 2021, sec. 4.1): for unit vectors spread like an isotropic Gaussian each
    coordinate has std 1/sqrt(d); collapse to a point drives it to 0. Population std (no Bessel
    correction), so a single row gives 0 rather than NaN. All-zero rows stay zero.
    """
    with torch.no_grad():
        u = torch.nn.functional.normalize(_matrix(z), dim=1)
        return float(u.std(dim=0, correction=0).mean())


def effective_rank(z: Any, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023, eq. 1): exp(-sum p_k log p_k), p_k = s_k / sum(s) + eps.

    s are the singular values of the raw Z, not centred, as in the paper. eps is the paper's
    smoothing constant; it biases the value up slightly (by about d**2 * eps * (ln d - 1) for d
    equal singular values); pass eps=0 for the exact entropy. An all-zero Z has rank 0.
    """
    with torch.no_grad():
        s = torch.linalg.svdvals(_matrix(z))
        total = s.sum()
        if not total > 0:
            return 0.0 if total == 0 else float("nan")
        p = s / total + eps
        return float(torch.exp(-torch.special.xlogy(p, p).sum()))


def collapse_signals(z: Any) -> dict[str, float]:
    """Both signals with their healthy references, ready for logging.

    `std_ratio` is embedding_std * sqrt(d) (about 1 healthy, 0 collapsed) and
    `effective_rank_frac` is the RankMe value over its maximum min(n, d).
    """
    t = _matrix(z)
    n, d = t.shape
    std = embedding_std(t)
    ref = 1.0 / math.sqrt(d)
    rank = effective_rank(t)
    return {
        "embedding_std": std,
        "embedding_std_ref": ref,
        "std_ratio": std / ref,
        "effective_rank": rank,
        "effective_rank_frac": rank / min(n, d),
    }
