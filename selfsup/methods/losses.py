"""Losses shared by several methods, each checked in tests against a direct computation."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F

from selfsup import distributed

LossFn = TypeVar("LossFn", bound=Callable[..., torch.Tensor])


def _float32(loss: LossFn) -> LossFn:
    """Compute ``loss`` in float32 even inside a bf16 autocast region: autocast would run its
    matmuls in bf16 (8 bits of mantissa), too coarse for similarities divided by small
    temperatures or for d x d correlation matrices."""

    @functools.wraps(loss)
    def wrapper(first: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(device_type=first.device.type, enabled=False):
            return loss(first, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@_float32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised temperature-scaled cross entropy (SimCLR, Chen et al. 2020, eq. 1).

    Row i of ``z1`` and row i of ``z2`` are two views of one example: each of the 2N views must
    pick its partner out of the other 2N - 1 views by cosine similarity / temperature. Averaged
    over all 2N anchors. Under DDP the N examples are the global batch: this rank's views are
    the anchors, every rank's views the candidates (see :mod:`selfsup.distributed`).
    """
    n = z1.shape[0]
    a = F.normalize(z1.float(), dim=1)
    b = F.normalize(z2.float(), dim=1)
    all_a, offset = distributed.all_gather(a)
    all_b, _ = distributed.all_gather(b)
    total = all_a.shape[0]
    logits = torch.cat([a, b]) @ torch.cat([all_a, all_b]).T / temperature  # (2n, 2N)
    rows = torch.arange(n, device=a.device) + offset
    own = torch.cat([rows, rows + total])  # where each anchor sits among the candidates
    partner = torch.cat([rows + total, rows])
    self_mask = F.one_hot(own, 2 * total).bool()
    logits = logits.masked_fill(self_mask, float("-inf"))
    terms = F.cross_entropy(logits, partner, reduction="sum")
    return distributed.local_share(terms, 2 * total)


@_float32
def info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    temperature: float,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE (van den Oord et al. 2018; MoCo, He et al. 2020, eq. 1), mean over the batch.

    Each query row i must pick its key row i by cosine similarity / temperature. The
    alternatives are ``negatives`` (K, d) when given (MoCo's queue of earlier keys: the
    positive is class 0 of 1 + K), otherwise the other keys of the batch (MoCo v3: the positive
    is class i of N; under DDP the keys of the global batch, see :mod:`selfsup.distributed`).
    Gradients flow into whatever the caller did not detach.
    """
    q = F.normalize(query.float(), dim=1)
    k = F.normalize(key.float(), dim=1)
    if negatives is None:
        keys, offset = distributed.all_gather(k)
        logits = q @ keys.T
        target = torch.arange(len(q), device=q.device) + offset
        terms = F.cross_entropy(logits / temperature, target, reduction="sum")
        return distributed.local_share(terms, keys.shape[0])
    positive = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, q @ F.normalize(negatives.float(), dim=1).T], dim=1)
    target = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits / temperature, target)


@_float32
def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised mean squared error (Grill et al. 2020, eq. 2), mean over the batch.

    ``|p/|p| - z/|z||^2 = 2 - 2 cos(p, z)``: only the direction of the prediction matters,
    so the online network cannot lower the loss by shrinking its outputs.
    """
    cosine = F.cosine_similarity(prediction.float(), target.float(), dim=1)
    return (2 - 2 * cosine).mean()


@_float32
def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float, eps: float = 1e-5
) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021, eq. 1): make the cross-correlation matrix of the two
    views' embeddings the identity.

    Each dimension is standardised over the batch (mean 0, biased std 1, as the paper's
    affine-free BatchNorm does); C = z1^T z2 / N is then a (d, d) correlation matrix.
    ``sum_i (1 - C_ii)^2`` makes the views agree (invariance); ``lambda * sum_{i != j} C_ij^2``
    decorrelates the dimensions (redundancy reduction), which rules out collapse.
    Under DDP the statistics are those of the global batch: every rank gathers all rows and
    computes the whole loss (see :mod:`selfsup.distributed`).
    """
    z1 = distributed.all_gather(z1.float())[0]
    z2 = distributed.all_gather(z2.float())[0]
    n = z1.shape[0]
    a = _standardise(z1, eps)
    b = _standardise(z2, eps)
    c = a.T @ b / n
    diagonal = torch.diagonal(c)
    on_diagonal = (1 - diagonal).pow(2).sum()
    off_diagonal = c.pow(2).sum() - diagonal.pow(2).sum()
    return on_diagonal + lambda_offdiag * off_diagonal


def _standardise(z: torch.Tensor, eps: float) -> torch.Tensor:
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


@_float32
def vicreg_terms(
    z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VICReg's three terms (Bardes et al. 2022, sec. 3): invariance, variance, covariance.

    - invariance: mean squared error between the two views' embeddings;
    - variance: hinge ``relu(1 - sqrt(Var(z_j) + eps))`` per dimension (gamma = 1, unbiased
      variance over the batch), averaged over dimensions and over both views: keeps every
      dimension alive, so the embeddings cannot collapse to a point;
    - covariance: sum of squared off-diagonal covariances divided by d, summed over both
      views: decorrelates the dimensions, so they cannot collapse to a line.

    Under DDP all three are taken over the global batch: every rank gathers all rows and
    computes the whole loss (see :mod:`selfsup.distributed`).
    """
    z1 = distributed.all_gather(z1.float())[0]
    z2 = distributed.all_gather(z2.float())[0]
    invariance = F.mse_loss(z1, z2)
    variance = (_std_hinge(z1, eps) + _std_hinge(z2, eps)) / 2
    covariance = _offdiag_covariance(z1) + _offdiag_covariance(z2)
    return invariance, variance, covariance


def _std_hinge(z: torch.Tensor, eps: float) -> torch.Tensor:
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def _offdiag_covariance(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg's loss (Bardes et al. 2022, eq. 6): the weighted sum of :func:`vicreg_terms`;
    the default weights (lambda = mu = 25, nu = 1) are the paper's."""
    invariance, variance, covariance = vicreg_terms(z1, z2, eps)
    return (
        invariance_weight * invariance
        + variance_weight * variance
        + covariance_weight * covariance
    )


@_float32
def dino_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float | torch.Tensor,
) -> torch.Tensor:
    """DINO's self-distillation cross-entropy (Caron et al. 2021, eq. 3 and algorithm 1).

    ``student`` (V, B, K) holds the student's scores of all V views, ``teacher`` (G, B, K) the
    teacher's scores of the G global views, which are the student's first G views. The teacher
    distribution is centred (``center`` subtracted, which keeps one prototype from taking over)
    and sharpened (low temperature, which keeps it from going uniform); the student must match
    it from every other view: ``-sum_k P_t(k) log P_s(k)`` averaged over the batch and over
    all (teacher view g, student view v != g) pairs. No gradient reaches the teacher. Under
    DDP each rank scores its own samples; the centre is the global batch's (see
    :func:`selfsup.methods.dino.update_center`).
    """
    log_p_student = F.log_softmax(student.float() / student_temperature, dim=-1)
    p_teacher = F.softmax((teacher.float() - center) / teacher_temperature, dim=-1).detach()
    views, batch = student.shape[:2]
    globals_ = teacher.shape[0]
    if globals_ > views or views < 2:
        raise ValueError("DINO needs at least 2 student views, the first ones the teacher's")
    # cross[g, v] = sum over the batch of -sum_k P_t[g](k) log P_s[v](k), without a
    # (G, V, B, K) intermediate; local_share turns it into the (global) batch mean.
    cross = -torch.einsum("gbk,vbk->gv", p_teacher, log_p_student)
    same_view = torch.eye(globals_, views, dtype=torch.bool, device=cross.device)
    total = distributed.total_count(batch, cross.device)
    return distributed.local_share(cross[~same_view].mean(), total)


@_float32
def clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor | float,
    image_ids: torch.Tensor | None = None,
    caption_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021, fig. 3): each image must pick its own
    caption among the batch's captions, and each caption its own image, by cosine similarity
    times ``logit_scale``; the mean of the two cross entropies.

    Rows that share an image (``image_ids``) or a caption (``caption_ids``, e.g. captions
    built from labels repeat) are not negatives of each other: every such pair is a positive,
    and the target spreads evenly over a row's positives. Without ids each row's only positive
    is itself, which is exactly the paper's loss. Under DDP the candidates are the global batch.
    """
    a = F.normalize(image.float(), dim=1)
    b = F.normalize(text.float(), dim=1)
    all_a, offset = distributed.all_gather(a)
    all_b, _ = distributed.all_gather(b)
    scale = torch.as_tensor(logit_scale, device=a.device).float()
    logits_image = scale * a @ all_b.T  # (n, N): this rank's images against every caption
    logits_text = scale * b @ all_a.T
    n, total = a.shape[0], all_a.shape[0]
    rows = torch.arange(n, device=a.device) + offset
    if image_ids is None and caption_ids is None:
        terms = (F.cross_entropy(logits_image, rows, reduction="sum")
                 + F.cross_entropy(logits_text, rows, reduction="sum"))
        return distributed.local_share(terms, 2 * total)
    positive = F.one_hot(rows, total).bool()
    for ids in (image_ids, caption_ids):
        if ids is not None:
            # float32 holds integer ids exactly up to 2**24; all_gather needs a float tensor
            all_ids, _ = distributed.all_gather(ids.float().unsqueeze(1))
            positive |= ids.float().unsqueeze(1) == all_ids.T
    target = positive.float() / positive.sum(dim=1, keepdim=True)
    terms = -(target * F.log_softmax(logits_image, dim=1)).sum() - (
        target * F.log_softmax(logits_text, dim=1)
    ).sum()
    return distributed.local_share(terms, 2 * total)
