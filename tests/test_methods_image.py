"""Image methods beyond SimCLR: losses against loop-by-loop references, EMA helpers, multi-crop,
the ViT, and two training steps of every method on digits."""

import copy
import json
import math

import pytest
import torch
from torch import nn

import selfsup
from selfsup.methods import METHODS, DataInfo
from selfsup.methods.losses import (
    barlow_twins_loss,
    byol_loss,
    dino_loss,
    info_nce,
    vicreg_loss,
    vicreg_terms,
)
from selfsup.methods.momentum import MomentumTeacher, cosine_momentum, ema_update
from selfsup.models import build_encoder
from selfsup.run import load_encoder

# --- losses against direct computations ----------------------------------------------------


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / math.sqrt(float(v @ v))


def info_nce_reference(q, k, t, negatives=None) -> float:
    """-log exp(q.k+/t) / sum over the candidates, one query at a time."""
    q, k = q.double(), k.double()
    total = 0.0
    for i in range(len(q)):
        qi = _unit(q[i])
        if negatives is None:
            candidates = [_unit(kj) for kj in k]  # the positive is candidate i
            positive = i
        else:
            candidates = [_unit(k[i])] + [_unit(n) for n in negatives.double()]
            positive = 0
        scores = [math.exp(float(qi @ c) / t) for c in candidates]
        total += -math.log(scores[positive] / sum(scores))
    return total / len(q)


def test_info_nce_with_queue_and_in_batch_matches_reference():
    torch.manual_seed(0)
    q, k, queue = torch.randn(5, 4), torch.randn(5, 4), torch.randn(7, 4)
    for t in (0.2, 1.0):
        assert math.isclose(float(info_nce(q, k, t, queue)),
                            info_nce_reference(q, k, t, queue), rel_tol=1e-5)
        assert math.isclose(float(info_nce(q, k, t)), info_nce_reference(q, k, t), rel_tol=1e-5)


def test_byol_loss_is_squared_distance_of_unit_vectors():
    torch.manual_seed(1)
    p, z = torch.randn(6, 5), torch.randn(6, 5)
    expected = sum(
        float(((_unit(p[i].double()) - _unit(z[i].double())) ** 2).sum()) for i in range(6)
    ) / 6
    assert math.isclose(float(byol_loss(p, z)), expected, rel_tol=1e-5)
    assert float(byol_loss(p, 3 * p)) == pytest.approx(0.0, abs=1e-6)


def _standardised_columns(z: torch.Tensor) -> list[list[float]]:
    """Column j of z as a list, minus its mean, over its biased std (eps 1e-5 inside)."""
    n, d = z.shape
    columns = []
    for j in range(d):
        values = [float(z[b, j]) for b in range(n)]
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / n
        columns.append([(v - mean) / math.sqrt(var + 1e-5) for v in values])
    return columns


def test_barlow_twins_loss_matches_reference():
    torch.manual_seed(2)
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    a, b = _standardised_columns(z1.double()), _standardised_columns(z2.double())
    n, d, lam = 8, 4, 5e-3
    expected = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            expected += (1 - c) ** 2 if i == j else lam * c**2
    assert math.isclose(float(barlow_twins_loss(z1, z2, lam)), expected, rel_tol=1e-5)


def _vicreg_reference(z1: torch.Tensor, z2: torch.Tensor) -> tuple[float, float, float]:
    n, d = z1.shape
    invariance = sum(float(z1[b, j] - z2[b, j]) ** 2 for b in range(n) for j in range(d))
    invariance /= n * d
    variance = covariance = 0.0
    for z in (z1.double(), z2.double()):
        means = [sum(float(z[b, j]) for b in range(n)) / n for j in range(d)]
        cov = [[sum((float(z[b, i]) - means[i]) * (float(z[b, j]) - means[j])
                    for b in range(n)) / (n - 1) for j in range(d)] for i in range(d)]
        variance += sum(max(0.0, 1 - math.sqrt(cov[j][j] + 1e-4)) for j in range(d)) / d / 2
        covariance += sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    return invariance, variance, covariance


def test_vicreg_terms_and_loss_match_reference():
    torch.manual_seed(3)
    # Scale 0.5: some dimensions' std is below 1, so the hinge is active for part of them.
    z1, z2 = 0.5 * torch.randn(7, 4), 2 * torch.randn(7, 4)
    expected = _vicreg_reference(z1, z2)
    terms = vicreg_terms(z1, z2)
    for got, want in zip(terms, expected, strict=True):
        assert math.isclose(float(got), want, rel_tol=1e-5)
    inv, var, cov = expected
    assert math.isclose(float(vicreg_loss(z1, z2)), 25 * inv + 25 * var + cov, rel_tol=1e-5)


def test_dino_loss_matches_reference_with_centering():
    torch.manual_seed(4)
    views, globals_, batch, k = 4, 2, 3, 5
    student, teacher = torch.randn(views, batch, k), torch.randn(globals_, batch, k)
    center = torch.randn(1, k)
    ts, tt = 0.1, 0.04
    total, pairs = 0.0, 0
    for g in range(globals_):
        for v in range(views):
            if v == g:
                continue
            for b in range(batch):
                t_logits = [(float(teacher[g, b, j]) - float(center[0, j])) / tt for j in range(k)]
                s_logits = [float(student[v, b, j]) / ts for j in range(k)]
                t_norm = math.log(sum(math.exp(x) for x in t_logits))
                s_norm = math.log(sum(math.exp(x) for x in s_logits))
                total += -sum(math.exp(t_logits[j] - t_norm) * (s_logits[j] - s_norm)
                              for j in range(k)) / batch
            pairs += 1
    got = dino_loss(student, teacher, center, ts, tt)
    assert math.isclose(float(got), total / pairs, rel_tol=1e-5)
    # Centering matters: shifting one prototype's teacher score changes the loss unless the
    # centre moves with it.
    shift = torch.zeros(1, k)
    shift[0, 0] = 3.0
    assert not math.isclose(float(dino_loss(student, teacher + shift, center, ts, tt)),
                            float(got), rel_tol=1e-3)
    assert math.isclose(float(dino_loss(student, teacher + shift, center + shift, ts, tt)),
                        float(got), rel_tol=1e-5)


def test_losses_stay_float32_under_bf16_autocast():
    z1 = torch.randn(8, 6, requires_grad=True)
    z2 = torch.randn(8, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for loss in (info_nce(z1, z2, 0.2), byol_loss(z1, z2), barlow_twins_loss(z1, z2, 5e-3),
                     vicreg_loss(z1, z2)):
            assert loss.dtype == torch.float32
            loss.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()


# --- momentum helpers -----------------------------------------------------------------------


def test_ema_update_averages_parameters_and_float_buffers_copies_counters():
    torch.manual_seed(5)
    target = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    online = copy.deepcopy(target)
    for p in online.parameters():
        p.data.normal_()
    online(torch.randn(4, 3))  # train mode: running stats and the counter move
    before = copy.deepcopy(target.state_dict())
    ema_update(target, online, 0.9)
    after, source = target.state_dict(), online.state_dict()
    for name, value in after.items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.9 * before[name] + 0.1 * source[name], atol=1e-6)
        else:
            assert torch.equal(value, source[name])
    assert int(after["1.num_batches_tracked"]) == 1


def test_cosine_momentum_goes_from_base_to_one():
    assert cosine_momentum(0.996, 0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 0.5) == pytest.approx(0.998)
    assert cosine_momentum(0.996, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 0.7, final=0.99) == pytest.approx(0.99)  # constant


def test_momentum_teacher_is_frozen_and_follows_the_online_modules():
    torch.manual_seed(6)
    a, b = nn.Linear(3, 4), nn.Linear(4, 2)
    teacher = MomentumTeacher(a, b, base_momentum=0.5, final_momentum=0.5)
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3)
    assert not teacher(x).requires_grad
    old = teacher.net[0].weight.clone()
    with torch.no_grad():
        a.weight.add_(1.0)
    assert teacher.update(0.3, a, b) == 0.5
    assert torch.allclose(teacher.net[0].weight, 0.5 * old + 0.5 * a.weight)


# --- views, multi-crop and the ViT ----------------------------------------------------------


def _tiny_vit(**options):
    return build_encoder("vit_tiny", in_channels=1, patch_size=2, width=16, depth=1, heads=2,
                         **options)


def test_multi_crop_shapes_and_vit_accepts_both_sizes():
    dino = METHODS.get("dino")(
        _tiny_vit(), DataInfo(channels=1, image_size=8),
        options={"local_crops": 3, "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8},
    )
    images = torch.randint(0, 256, (5, 8, 8, 1), dtype=torch.uint8)
    global_views, local_views = dino.multi_crop(
        images, torch.Generator().manual_seed(0), 2, dino.local_augment, 3
    )
    assert global_views.shape == (10, 1, 8, 8) and local_views.shape == (15, 1, 4, 4)
    for encoder in (dino.encoder, _tiny_vit(pos_embed="learned", image_size=8)):
        assert encoder(global_views).shape == (10, 16)
        assert encoder(local_views).shape == (15, 16)
        assert encoder.tokens(global_views).shape == (10, 1 + 16, 16)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        dino.encoder(torch.rand(1, 1, 7, 7))


def test_asymmetric_view_recipes_and_user_overrides():
    encoder = build_encoder("resnet_small", in_channels=1, width=8)
    byol = METHODS.get("byol")(encoder, DataInfo(channels=1, image_size=8))
    assert [a.config.solarize_p for a in byol.view_augments] == [0.0, 0.2]
    assert byol.augment.config.saturation == 0.2
    user = METHODS.get("byol")(encoder, DataInfo(channels=1, image_size=8),
                               augment_options={"solarize_p": 0.5})
    assert [a.config.solarize_p for a in user.view_augments] == [0.5, 0.5]


def test_mocov3_takes_the_paper_settings_of_its_encoder_family():
    info = DataInfo(channels=1, image_size=8)
    resnet = METHODS.get("mocov3")(build_encoder("resnet_small", in_channels=1, width=8), info)
    vit = METHODS.get("mocov3")(_tiny_vit(), info)
    assert (resnet.options.temperature, resnet.options.projector_layers) == (1.0, 2)
    assert (vit.options.temperature, vit.options.projector_layers) == (0.2, 3)
    assert not any(p.requires_grad for p in vit.encoder.patch_embed.parameters())
    assert all(p.requires_grad for p in resnet.encoder.parameters())


def test_mocov2_queue_is_clamped_to_half_the_data_when_known():
    encoder = build_encoder("resnet_small", in_channels=1, width=8)
    moco = METHODS.get("mocov2")(encoder, DataInfo(channels=1, image_size=8, num_images=1000))
    assert moco.options.queue_size == 500 and moco.queue.shape == (500, 128)


# --- two training steps of every method on digits -------------------------------------------

TINY = {
    "steps": 2,
    # No warm-up: its first steps are so small that a 0.4% EMA step of the teacher can fall
    # below float32 resolution, and "the teacher moved" would then depend on luck.
    "warmup_fraction": 0.0,
    "batch_size": 32,
    "encoder": "resnet_small",
    "encoder_options": {"width": 8},
    "progress": False,
    "monitor_size": 0,
    "augment_options": {"flip_p": 0.0, "crop_scale": [0.5, 1.0]},
}
SMALL_HEADS = {
    "mocov2": {"hidden_dim": 64, "queue_size": 256},
    "mocov3": {"hidden_dim": 64, "predictor_hidden_dim": 64},
    "byol": {"hidden_dim": 64, "predictor_hidden_dim": 64},
    "dino": {"out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32},
    "barlowtwins": {"hidden_dim": 64, "projection_dim": 64},
    "vicreg": {"hidden_dim": 64, "projection_dim": 64},
}


def _pretrain_and_capture(monkeypatch, tmp_path, name, **options):
    """Run ``selfsup.pretrain`` and hand back the method it built and its teacher at birth."""
    captured = {}
    registered = METHODS.get(name)

    class Captured(registered):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            captured["method"] = self
            teacher = getattr(self, "teacher", None)
            captured["teacher_at_start"] = (
                [p.detach().clone() for p in teacher.parameters()] if teacher else None
            )

    monkeypatch.setitem(METHODS._items, name, Captured)
    run = selfsup.pretrain(name, "digits", out=str(tmp_path / name), **{**TINY, **options})
    return run, captured["method"], captured["teacher_at_start"]


@pytest.mark.parametrize("name", sorted(SMALL_HEADS))
def test_two_steps_on_digits(monkeypatch, tmp_path, name):
    run, method, teacher_at_start = _pretrain_and_capture(
        monkeypatch, tmp_path, name, method_options=SMALL_HEADS[name]
    )
    summary = json.loads(run.summary.read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    assert summary["collapse"]  # the online encoder's embeddings reached the monitor
    if teacher_at_start is None:
        assert name in ("barlowtwins", "vicreg")
        return
    teacher = list(method.teacher.parameters())
    assert all(not p.requires_grad for p in teacher)
    assert any(not torch.equal(p, p0) for p, p0 in zip(teacher, teacher_at_start, strict=True))
    # The teacher lags the online encoder: it is an average, not a copy.
    online = list(method.encoder.parameters())
    assert any(not torch.equal(t, o) for t, o in zip(teacher, online, strict=False))


def test_dino_with_a_vit_on_digits(monkeypatch, tmp_path):
    run, method, _ = _pretrain_and_capture(
        monkeypatch, tmp_path, "dino",
        encoder="vit_tiny",
        encoder_options={"patch_size": 2, "width": 32, "depth": 2, "heads": 2},
        method_options=SMALL_HEADS["dino"],
    )
    assert method.options.local_crop_size == 4
    assert float(method.center.abs().sum()) > 0  # the centre moved off zero
    encoder, spec = load_encoder(run)
    assert spec["name"] == "vit_tiny" and encoder.embed_dim == 32
    assert encoder(torch.rand(3, 1, 8, 8)).shape == (3, 32)
