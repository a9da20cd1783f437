"""Label-free signals of representation quality and collapse, on an embedding matrix Z (n, d).

Self-supervised objectives can be minimised by a constant (complete collapse) or by embeddings
that fill only a few directions (dimensional collapse); both are visible without labels:

- `embedding_std`: spread of the L2-normalised embeddings per dimension (Chen & He 2021, SimSiam
  sec. 4.1), near 1/sqrt(d) when healthy, 0 when every input maps to one point;
- `effective_rank`: RankMe (Garrido et al. 2023), the exponential of the entropy of the
  singular-value distribution, from 1 (one direction) to min(n, d) (all directions used equally);
- `alignment` and `uniformity` (Wang & Isola 2020): how close two views of a sample land, and how
  evenly the normalised embeddings cover the sphere (a collapsed set has uniformity 0, the
  worst possible; spread-out sets go strongly negative);
- `per_dimension_std` and `quality_metrics`, which bundles them with a `collapsed` flag.

Computed in float64 under `torch.no_grad`; numpy arrays and torch tensors are both accepted.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from selfsup.errors import SelfsupError

__all__ = [
    "alignment",
    "collapse_signals",
    "collapse_threshold",
    "effective_rank",
    "embedding_std",
    "per_dimension_std",
    "quality_metrics",
    "uniformity",
]

# Below this std ratio (embedding_std * sqrt(d)) the embeddings count as collapsed: a tenth of
# the healthy 1/sqrt(d) spread, far below what any working run shows (SimSiam, fig. 2).
COLLAPSE_STD_RATIO = 0.1


def collapse_threshold(reference: float | None = None) -> float:
    """The std ratio below which embeddings count as collapsed, given where the encoder started.

    ``reference`` is the std ratio of the same architecture untrained (the collapse monitor takes
    the first training step's, the report a random-init copy's). An encoder's ratio is not 1
    even untrained when its embeddings share a large common part: the series encoders max-pool
    per-step features over time and land near 0.1, and a healthy run goes on lower. A collapse
    is a fall by an order of magnitude from the start, so the threshold is a tenth of the start
    (where that is below 1), and never below a hundredth: an encoder that maps everything to
    one point from the start is still caught.
    """
    start = 1.0 if reference is None else min(1.0, reference)
    return COLLAPSE_STD_RATIO * max(start, COLLAPSE_STD_RATIO)


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
    """The collapse signals with their healthy references, ready for logging on each batch.

    `std_ratio` is embedding_std * sqrt(d) (about 1 healthy, 0 collapsed) and
    `effective_rank_frac` is the RankMe value over its maximum min(n, d). `uniformity` uses at
    most the first 1024 rows (its cost grows with n squared).
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
        "uniformity": uniformity(t[:1024]),
    }


def per_dimension_std(z: Any) -> np.ndarray:
    """Population std of each dimension of the L2-normalised rows of Z, shape (d,).

    The vector whose mean is `embedding_std`; dimensions with std near 0 are unused.
    """
    with torch.no_grad():
        u = torch.nn.functional.normalize(_matrix(z), dim=1)
        return u.std(dim=0, correction=0).numpy()


def alignment(z1: Any, z2: Any, alpha: float = 2.0) -> float:
    """Wang & Isola 2020, eq. 4: mean over pairs of ||f(x) - f(y)||_2 ** alpha, rows normalised.

    Row i of z1 and row i of z2 embed two views (augmentations) of the same input. 0 means the
    views map to the same point; the maximum is 2 ** alpha (antipodal).
    """
    a, b = _matrix(z1), _matrix(z2)
    if a.shape != b.shape:
        raise SelfsupError(f"alignment: the two views' embeddings differ in shape: "
                           f"{tuple(a.shape)} vs {tuple(b.shape)}")
    with torch.no_grad():
        a = torch.nn.functional.normalize(a, dim=1)
        b = torch.nn.functional.normalize(b, dim=1)
        return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(z: Any, t: float = 2.0) -> float:
    """Wang & Isola 2020, eq. 5: log of the mean over distinct pairs of exp(-t ||u - v||^2).

    Rows are L2-normalised first. 0 when every row is the same point (collapse); about -4 for
    points spread over a high-dimensional sphere with t = 2 (the limit is -2t). Pairs i < j, as
    in the paper's `torch.pdist` reference code; a single row has no pair and gives NaN.
    """
    with torch.no_grad():
        u = torch.nn.functional.normalize(_matrix(z), dim=1)
        if len(u) < 2:
            return float("nan")
        sq = torch.pdist(u, p=2).pow(2)
        # log mean exp, stable: logsumexp(x) - log(count)
        return float(torch.logsumexp(-t * sq, dim=0) - math.log(len(sq)))


def quality_metrics(
    z: Any, z2: Any | None = None, *, max_rows: int = 2048, reference: float | None = None
) -> dict[str, Any]:
    """Every label-free metric of Z for a report, with the `collapsed` flag.

    `z2`, optional, holds second views of the same inputs (row for row) for `alignment`. At most
    `max_rows` rows (the first ones) go into `uniformity`, whose cost grows with n squared.
    `collapsed` is true when `std_ratio` is below :func:`collapse_threshold` of `reference` (the
    untrained encoder's std ratio, when known) or the effective rank is below 1.5 (essentially
    one direction).
    """
    t = _matrix(z)
    signals = collapse_signals(t)
    stds = per_dimension_std(t)
    out: dict[str, Any] = {
        **signals,
        "uniformity": uniformity(t[:max_rows]),  # more rows than the per-batch signal
        "per_dimension_std": [float(v) for v in stds],
        "dead_dimensions": int((stds < 0.01 * signals["embedding_std_ref"]).sum()),
        "num_rows": int(t.shape[0]),
        "dim": int(t.shape[1]),
    }
    if z2 is not None:
        out["alignment"] = alignment(t, z2)
    if reference is not None:
        out["std_ratio_untrained"] = float(reference)
    out["collapsed"] = bool(
        signals["std_ratio"] < collapse_threshold(reference) or signals["effective_rank"] < 1.5
    )
    return out
