"""Label-free collapse signals: embedding std (SimSiam) and effective rank (RankMe)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.errors import SelfsupError
from selfsup.evaluate.quality import (
    alignment,
    collapse_signals,
    collapse_threshold,
    effective_rank,
    embedding_std,
    per_dimension_std,
    quality_metrics,
    uniformity,
)

# Hand-worked example. Rows normalise to (3/5, 4/5), (1, 0), (0, 1).
# Column 1: mean 8/15, population variance (1 + 49 + 64) / 225 / 3 = 114/675.
# Column 2: mean 3/5, population variance (1 + 9 + 4) / 25 / 3 = 14/75.
# Z^T Z = [[10, 12], [12, 20]]: eigenvalues 15 +- 13, singular values sqrt(28), sqrt(2).
Z3 = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
Z3_STD = (math.sqrt(114 / 675) + math.sqrt(14 / 75)) / 2


def z3_rank(eps: float) -> float:
    s = [math.sqrt(28), math.sqrt(2)]
    p = [v / sum(s) + eps for v in s]
    return math.exp(-sum(q * math.log(q) for q in p))


def test_embedding_std_hand_computed():
    assert embedding_std(Z3) == pytest.approx(Z3_STD, abs=1e-6)
    assert embedding_std(torch.from_numpy(Z3)) == pytest.approx(Z3_STD, abs=1e-6)


def test_effective_rank_hand_computed():
    assert effective_rank(Z3, eps=0.0) == pytest.approx(z3_rank(0.0), abs=1e-9)
    assert effective_rank(Z3) == pytest.approx(z3_rank(1e-7), abs=1e-9)
    assert 1.0 < effective_rank(Z3) < 2.0


def test_embedding_std_collapsed_is_zero():
    z = np.tile(np.array([[0.3, -1.2, 4.0, 0.5]], dtype=np.float32), (64, 1))
    assert embedding_std(z) == pytest.approx(0.0, abs=1e-7)


def test_embedding_std_gaussian_near_reference():
    d = 64
    z = torch.randn(20000, d, generator=torch.Generator().manual_seed(0))
    ref = 1 / math.sqrt(d)
    assert abs(embedding_std(z) - ref) < 0.1 * ref


def test_effective_rank_equal_singular_values():
    assert effective_rank(np.eye(8)) == pytest.approx(8.0, abs=1e-4)
    q, _ = torch.linalg.qr(torch.randn(100, 32, generator=torch.Generator().manual_seed(1),
                                       dtype=torch.float64))
    assert effective_rank(3.0 * q, eps=0.0) == pytest.approx(32.0, abs=1e-4)


def test_effective_rank_rank_one():
    rng = np.random.default_rng(0)
    z = np.outer(rng.normal(size=50), rng.normal(size=6))
    assert effective_rank(z) == pytest.approx(1.0, abs=1e-4)
    assert effective_rank(np.zeros((5, 3))) == 0.0


def test_effective_rank_is_on_raw_not_centred_z():
    # Rows all equal: centring would leave nothing, the raw matrix has rank 1 (RankMe uses raw Z).
    z = np.tile(np.array([[1.0, 2.0, 3.0]]), (10, 1))
    assert effective_rank(z) == pytest.approx(1.0, abs=1e-4)


def test_collapse_signals_keys_and_values():
    sig = collapse_signals(Z3)
    assert set(sig) == {"embedding_std", "embedding_std_ref", "std_ratio", "effective_rank",
                        "effective_rank_frac", "uniformity"}
    assert all(type(v) is float for v in sig.values())
    assert sig["embedding_std"] == pytest.approx(Z3_STD, abs=1e-6)
    assert sig["embedding_std_ref"] == pytest.approx(1 / math.sqrt(2))
    assert sig["std_ratio"] == pytest.approx(Z3_STD * math.sqrt(2), abs=1e-6)
    assert sig["effective_rank"] == pytest.approx(z3_rank(1e-7), abs=1e-9)
    assert sig["effective_rank_frac"] == pytest.approx(z3_rank(1e-7) / 2, abs=1e-9)
    assert sig["uniformity"] == pytest.approx(uniformity(Z3), abs=1e-12)


def test_collapse_signals_flag_collapse():
    healthy = collapse_signals(torch.randn(500, 16, generator=torch.Generator().manual_seed(2)))
    collapsed = collapse_signals(np.ones((500, 16), dtype=np.float32))
    assert healthy["std_ratio"] > 0.9 and collapsed["std_ratio"] < 1e-6
    assert healthy["effective_rank_frac"] > 0.9
    assert collapsed["effective_rank"] == pytest.approx(1.0, abs=1e-4)


def test_requires_grad_input_and_bad_shape():
    z = torch.randn(20, 4, requires_grad=True)
    assert isinstance(embedding_std(z), float)
    assert isinstance(effective_rank(z), float)
    with pytest.raises(SelfsupError):
        embedding_std(np.ones(5))
    with pytest.raises(SelfsupError):
        effective_rank(np.ones((0, 3)))


# Z3's normalised rows u1 = (3/5, 4/5), u2 = (1, 0), u3 = (0, 1); squared distances
# |u1-u2|^2 = 4/25 + 16/25 = 0.8, |u1-u3|^2 = 9/25 + 1/25 = 0.4, |u2-u3|^2 = 2.
def test_uniformity_hand_computed():
    expected = math.log((math.exp(-2 * 0.8) + math.exp(-2 * 0.4) + math.exp(-2 * 2.0)) / 3)
    assert uniformity(Z3) == pytest.approx(expected, abs=1e-9)
    expected_t1 = math.log((math.exp(-0.8) + math.exp(-0.4) + math.exp(-2.0)) / 3)
    assert uniformity(torch.from_numpy(Z3), t=1.0) == pytest.approx(expected_t1, abs=1e-9)


def test_uniformity_collapse_and_spread():
    assert uniformity(np.ones((10, 4))) == pytest.approx(0.0, abs=1e-12)  # the worst value
    # Two antipodal points: one pair at squared distance 4, so log(exp(-8)) = -8.
    assert uniformity(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-8.0)
    spread = uniformity(torch.randn(2000, 64, generator=torch.Generator().manual_seed(3)))
    assert -4.0 < spread < -3.5  # high-dimensional sphere: squared distances concentrate at 2
    assert math.isnan(uniformity(np.ones((1, 3))))


def test_alignment_hand_computed():
    # Second views normalise to (0, 1), (1, 0), (0, 1): squared distances 0.4, 0, 0.
    z2 = np.array([[0.0, 1.0], [5.0, 0.0], [0.0, 3.0]])
    assert alignment(Z3, z2) == pytest.approx(0.4 / 3, abs=1e-9)
    assert alignment(Z3, z2, alpha=1.0) == pytest.approx(math.sqrt(0.4) / 3, abs=1e-9)
    assert alignment(Z3, 7 * Z3) == pytest.approx(0.0, abs=1e-12)  # scale does not matter
    assert alignment(Z3, -Z3) == pytest.approx(4.0)  # antipodal: the maximum 2 ** alpha
    with pytest.raises(SelfsupError):
        alignment(Z3, Z3[:2])


def test_per_dimension_std_hand_computed():
    stds = per_dimension_std(Z3)
    assert stds.shape == (2,)
    assert stds[0] == pytest.approx(math.sqrt(114 / 675), abs=1e-9)
    assert stds[1] == pytest.approx(math.sqrt(14 / 75), abs=1e-9)
    assert stds.mean() == pytest.approx(embedding_std(Z3), abs=1e-9)


def test_quality_metrics_collapse_flag():
    rng = torch.Generator().manual_seed(4)
    healthy = torch.randn(400, 32, generator=rng)
    noisy_view = healthy + 0.1 * torch.randn(400, 32, generator=rng)
    good = quality_metrics(healthy, noisy_view)
    assert good["collapsed"] is False
    assert 0 < good["alignment"] < 0.05
    assert good["dead_dimensions"] == 0 and len(good["per_dimension_std"]) == 32
    assert good["uniformity"] == pytest.approx(uniformity(healthy), abs=1e-9)
    # Complete collapse: every input at one point (plus float noise far below the threshold).
    point = torch.ones(400, 32) + 1e-6 * torch.randn(400, 32, generator=rng)
    bad = quality_metrics(point)
    assert bad["collapsed"] is True and "alignment" not in bad
    assert bad["uniformity"] == pytest.approx(0.0, abs=1e-6)
    # Dimensional collapse: all rows on one line through the origin (rank one).
    line = torch.randn(400, 1, generator=rng) * torch.randn(1, 32, generator=rng)
    assert quality_metrics(line)["collapsed"] is True
    # Half the dimensions dead, the rest healthy: not collapsed, but the dead ones are counted.
    half = torch.cat([torch.randn(400, 16, generator=rng), torch.zeros(400, 16)], dim=1)
    metrics = quality_metrics(half)
    assert metrics["collapsed"] is False and metrics["dead_dimensions"] == 16


def test_collapse_threshold_follows_the_untrained_start():
    assert collapse_threshold() == pytest.approx(0.1)
    assert collapse_threshold(1.7) == pytest.approx(0.1)  # a start above 1 keeps the tenth
    assert collapse_threshold(0.12) == pytest.approx(0.012)
    assert collapse_threshold(0.0) == pytest.approx(0.01)  # never below the floor


def test_quality_metrics_judges_a_narrow_start_by_its_fall():
    rng = torch.Generator().manual_seed(5)
    # Rows sharing a large common part: std ratio about 0.07, as a max-pooled series encoder's.
    common = 3.0 * torch.ones(400, 32)
    narrow = common + 0.07 * torch.randn(400, 32, generator=rng)
    ratio = collapse_signals(narrow)["std_ratio"]
    assert 0.02 < ratio < 0.1
    assert quality_metrics(narrow)["collapsed"] is True  # the fixed tenth calls it collapsed
    judged = quality_metrics(narrow, reference=0.12)  # its untrained copy started at 0.12
    assert judged["collapsed"] is False and judged["std_ratio_untrained"] == 0.12
    fallen = common + 1e-4 * torch.randn(400, 32, generator=rng)  # a real fall from that start
    assert quality_metrics(fallen, reference=0.12)["collapsed"] is True
