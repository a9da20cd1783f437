import math

import torch
import torch.nn.functional as F

from selfsup.methods.losses import nt_xent


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """SimCLR eq. 1 written out loop by loop: l(i,j) = -log exp(s_ij/t) / sum_k!=i exp(s_ik/t)."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2]).double()]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        denominator = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denominator)
    return total / (2 * n)


def test_nt_xent_matches_direct_computation():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    for t in (0.1, 0.5, 1.0):
        assert math.isclose(float(nt_xent(z1, z2, t)), nt_xent_reference(z1, z2, t), rel_tol=1e-5)


def test_nt_xent_is_low_when_views_agree_and_symmetric():
    torch.manual_seed(1)
    z = torch.randn(8, 16)
    agreeing = nt_xent(z, z + 0.01 * torch.randn_like(z), 0.1)
    unrelated = nt_xent(z, torch.randn(8, 16), 0.1)
    assert agreeing < unrelated
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(nt_xent(z1, z2, 0.5), nt_xent(z2, z1, 0.5))


def test_nt_xent_gradient_flows_in_bf16_inputs():
    z1 = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    z2 = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    loss = nt_xent(z1, z2, 0.5)
    loss.backward()
    assert loss.dtype == torch.float32 and z1.grad is not None and torch.isfinite(z1.grad).all()
