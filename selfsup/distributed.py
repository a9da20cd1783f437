"""Batch-wide collectives for losses that look at the whole batch, under DDP or in one process.

Contrastive negatives (SimCLR, MoCo v3), batch statistics (Barlow Twins, VICReg) and DINO's
centre are defined over the *global* batch. Under data parallelism each process only holds its
share, so these losses gather every rank's embeddings first. Outside ``torch.distributed`` (or
with one process) every function here is the identity, so single-process code is unchanged.

Gradient bookkeeping (checked numerically in ``tests/test_ddp.py``). DDP averages parameter
gradients over the W ranks, and :func:`all_gather`'s backward *sums* over ranks the gradients
that reach each rank's rows. Hence a per-rank loss ``L_r`` gives the single-process gradient of
``L`` exactly when ``mean_r L_r = L``: either every rank computes the whole loss from the
gathered batch (``L_r = L``), or each rank computes its own anchors' terms of it, scaled by
:func:`local_share` so that the ranks' shares average to ``L`` even when their batch sizes
differ.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes in the default group; 1 outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank in the default group; 0 outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def _batch_sizes(x: torch.Tensor) -> list[int]:
    """Every rank's ``len(x)`` (they may differ, e.g. on a last, short batch)."""
    size = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's ``x`` along dim 0; backward returns, to each rank, the sum over
    ranks of the gradients that reached its rows (every rank's loss may depend on them)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes = sizes
        longest = max(sizes)
        padded = x.contiguous()
        if x.shape[0] < longest:  # all_gather needs equal shapes: pad, then cut back
            padding = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
            padded = torch.cat([padded, padding])
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: rank()])
        return grad[start : start + ctx.sizes[rank()]], None


def all_gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' ``x`` concatenated along dim 0 in rank order, and the row where this rank's
    ``x`` starts in it. Differentiable; ``(x, 0)`` outside a multi-process run."""
    if world_size() == 1:
        return x, 0
    sizes = _batch_sizes(x)
    return _AllGather.apply(x, sizes), sum(sizes[: rank()])


def total_count(count: int, device: torch.device | str = "cpu") -> int:
    """``count`` summed over ranks (e.g. the global batch size from the local one)."""
    if world_size() == 1:
        return count
    total = torch.tensor([count], dtype=torch.long, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return int(total)


def local_share(local_sum: torch.Tensor, total: int) -> torch.Tensor:
    """Scale this rank's sum of per-anchor loss terms so that the ranks' values average to the
    mean over all ``total`` anchors: ``world_size * local_sum / total``. In one process this is
    the plain mean."""
    return local_sum * (world_size() / total)


@torch.no_grad()
def global_mean(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` across all ranks' rows (no gradient), as if one process held
    the whole batch."""
    total = x.float().sum(dim=dim)
    if world_size() == 1:
        return (total / x.shape[dim]).to(x.dtype)
    count = total_count(x.shape[dim], x.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return (total / count).to(x.dtype)
