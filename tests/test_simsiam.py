"""SimSiam (Chen & He 2021), added as one file plus its registration line (issue 27)."""

import json
import math

import torch
import torch.nn.functional as F

import selfsup
from selfsup.methods import METHODS
from selfsup.methods.simsiam import negative_cosine


def test_negative_cosine_matches_a_direct_computation_and_stops_the_gradient():
    torch.manual_seed(0)
    p = torch.randn(8, 5, requires_grad=True)
    z = torch.randn(8, 5, requires_grad=True)
    loss = negative_cosine(p, z)
    direct = -F.cosine_similarity(p, z, dim=1).mean()
    assert torch.allclose(loss, direct, atol=1e-6)
    loss.backward()
    assert p.grad is not None and z.grad is None  # the target branch gets no gradient
    assert torch.isclose(negative_cosine(z.detach(), z.detach()), torch.tensor(-1.0))


def test_simsiam_trains_two_steps_on_digits(tmp_path):
    assert "simsiam" in METHODS
    run = selfsup.pretrain(
        "simsiam", "digits", out=str(tmp_path / "run"), steps=2, batch_size=64,
        encoder_options={"width": 8}, progress=False, precision="32",
        method_options={"projection_dim": 32, "hidden_dim": 32, "predictor_hidden_dim": 8},
    )
    summary = json.loads(run.summary.read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    assert -1.0 <= summary["final_loss"] <= 1.0  # a mean of negative cosines
    assert summary["collapse"]
