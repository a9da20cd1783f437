"""MAE: patch layout, masking, the encoder's blindness to hidden patches, the loss's blindness to
visible ones, the reconstruction picture, and the fine-tuning protocol."""

import dataclasses
import json
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from selfsup.cli import main
from selfsup.data.images import ImageData
from selfsup.errors import SelfsupError
from selfsup.evaluate.finetune import (
    FinetuneConfig,
    FinetuneModule,
    finetune,
    finetune_protocol,
    label_subset,
    parameter_groups,
)
from selfsup.methods import METHODS, DataInfo
from selfsup.methods.mae import masked_patch_loss, random_masking, save_grid, write_reconstruction
from selfsup.models import build_encoder
from selfsup.models.vit import patchify, unpatchify


def _vit(channels=3, **options):
    kwargs = {"patch_size": 4, "width": 32, "depth": 2, "heads": 2, **options}
    return build_encoder("vit_tiny", in_channels=channels, **kwargs)


def _mae(channels=3, size=16, **options):
    info = DataInfo(channels=channels, image_size=size)
    method_options = {"decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2, **options}
    return METHODS.get("mae")(_vit(channels), info, options=method_options)


# --- patches -----------------------------------------------------------------------------------


def test_patchify_layout_and_round_trip():
    images = torch.rand(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    # Patch 4 is row 1, column 1 of the 2x3 grid; pixels row by row, channels innermost.
    expected = images[:, :, 4:8, 4:8].permute(0, 2, 3, 1).reshape(2, 48)
    assert torch.equal(patches[:, 4], expected)
    assert torch.equal(unpatchify(patches, 4, 8, 12), images)
    with pytest.raises(ValueError):
        unpatchify(patches, 4, 8, 8)


def test_encode_subset_of_all_patches_equals_the_full_forward():
    vit = _vit()
    images = torch.rand(3, 3, 16, 16)
    every = torch.arange(16).expand(3, -1)
    assert torch.allclose(vit.encode_subset(images, every), vit.tokens(images), atol=1e-5)
    # Any order of the same patches gives the same class token (attention is order-free).
    shuffled = torch.stack([torch.randperm(16) for _ in range(3)])
    assert torch.allclose(vit.encode_subset(images, shuffled)[:, 0], vit(images), atol=1e-5)


# --- masking -----------------------------------------------------------------------------------


def test_masking_ratio_and_per_sample_randomness():
    generator = torch.Generator().manual_seed(0)
    masking = random_masking(64, 64, 0.75, generator)
    assert masking.keep.shape == (64, 16)
    assert torch.equal(masking.mask.sum(1), torch.full((64,), 48.0))
    for keep, mask in zip(masking.keep, masking.mask, strict=True):
        assert len(set(keep.tolist())) == 16 and mask[keep].sum() == 0
    distinct = {tuple(k.tolist()) for k in masking.keep}
    assert len(distinct) == 64  # each sample its own mask
    # Every position is hidden about 75% of the time (binomial std 0.01 over 2048 samples).
    frequency = random_masking(2048, 64, 0.75, generator).mask.mean(0)
    assert float(frequency.min()) > 0.7 and float(frequency.max()) < 0.8
    again = random_masking(64, 64, 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(again.keep, masking.keep)  # the step's generator decides
    assert not torch.equal(random_masking(64, 64, 0.75, generator).keep, masking.keep)
    assert random_masking(4, 64, 0.5, generator).keep.shape == (4, 32)


def test_the_encoder_never_sees_hidden_patches():
    method = _mae()
    images = torch.rand(4, 3, 16, 16)
    _, _, masking, encoded = method.forward_masked(images, torch.Generator().manual_seed(3))
    hidden = masking.mask.view(4, 1, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3)
    changed = torch.where(hidden.bool(), torch.rand_like(images), images)
    assert not torch.equal(changed, images)
    _, _, again, encoded_changed = method.forward_masked(
        changed, torch.Generator().manual_seed(3)
    )
    assert torch.equal(again.keep, masking.keep)
    assert torch.equal(encoded_changed, encoded)
    # And no gradient flows from the encoder's output to a hidden pixel.
    leaf = images.clone().requires_grad_(True)
    out = method.encoder.encode_subset(leaf, masking.keep)
    (grad,) = torch.autograd.grad(out.square().sum(), leaf)
    assert float(grad[hidden.expand_as(grad).bool()].abs().max()) == 0
    assert float(grad[~hidden.expand_as(grad).bool()].abs().max()) > 0


def test_the_loss_counts_hidden_patches_only():
    prediction = torch.randn(2, 16, 12)
    target = torch.randn(2, 16, 12)
    mask = torch.zeros(2, 16)
    mask[:, :12] = 1
    for normalise in (False, True):
        loss = masked_patch_loss(prediction, target, mask, normalise)
        moved = target.clone()
        moved[:, 12:] += torch.randn(2, 4, 12)  # visible patches' targets only
        assert torch.equal(masked_patch_loss(prediction, moved, mask, normalise), loss)
        moved[:, 0] += 1.0 + torch.randn(2, 12)
        assert not torch.equal(masked_patch_loss(prediction, moved, mask, normalise), loss)
    # Without normalisation it is the plain mean squared error over the hidden patches.
    reference = (prediction[:, :12] - target[:, :12]).pow(2).mean()
    assert torch.allclose(masked_patch_loss(prediction, target, mask, False), reference)


def test_the_method_loss_has_no_gradient_on_visible_predictions():
    method = _mae()
    images = torch.rand(4, 3, 16, 16)
    loss, prediction, masking, _ = method.forward_masked(images, torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(loss, prediction)
    per_patch = grad.abs().sum(-1)
    assert float(per_patch[masking.mask == 0].max()) == 0
    assert bool((per_patch[masking.mask == 1] > 0).all())


def test_mae_refuses_a_cnn_and_impossible_ratios():
    info = DataInfo(channels=3, image_size=16)
    with pytest.raises(SelfsupError, match="ViT"):
        METHODS.get("mae")(build_encoder("resnet_small", width=8), info)
    for ratio in (0.0, 1.0, 0.99):
        with pytest.raises(SelfsupError, match="mask_ratio"):
            _mae(mask_ratio=ratio)


# --- pictures ----------------------------------------------------------------------------------


def test_reconstruction_grid_has_three_rows(tmp_path):
    method = _mae()
    images = torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8)
    path = tmp_path / "r.png"
    write_reconstruction(method, images, path)
    picture = np.asarray(Image.open(path))
    gap, scale = 2, 4
    assert picture.shape == (3 * (16 * scale + gap) + gap, 5 * (16 * scale + gap) + gap, 3)
    # The top-left image of the grid is the first original, enlarged.
    first = np.asarray(images[0]).repeat(scale, 0).repeat(scale, 1)
    assert np.abs(picture[gap : gap + 64, gap : gap + 64].astype(int) - first).max() <= 1
    original, masked, reconstruction = method.reconstruct(images, torch.Generator())
    # Visible patches are pasted back: the reconstruction equals the original where visible.
    visible = (masked != 0.5).all(1, keepdim=True).expand_as(original)
    assert torch.allclose(reconstruction[visible], original[visible], atol=1e-4)
    save_grid(tmp_path / "gray.png", [torch.rand(2, 1, 8, 8)], scale=1)
    assert Image.open(tmp_path / "gray.png").size == (2 * 10 + 2, 12)


def test_pretrain_mae_writes_reconstructions_then_cli_finetunes(monkeypatch, capsys, tmp_path):
    run = selfsup.pretrain(
        "mae", "digits", out=str(tmp_path / "mae"), steps=3, batch_size=32, progress=False,
        precision="32",  # fast everywhere; bf16 is slow on CPUs without AVX-512 BF16
        encoder_options={"patch_size": 2, "width": 32, "depth": 1, "heads": 2},
        method_options={"decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2,
                        "reconstruction_minutes": 1e-6},
    )
    summary = json.loads(run.summary.read_text())
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])
    pictures = sorted(p.name for p in (run.path / "reconstructions").glob("*.png"))
    assert pictures == ["step_00001.png", "step_00002.png", "step_00003.png"]
    final = Image.open(run.path / "reconstruction.png")
    assert final.size == (8 * (8 * 4 + 2) + 2, 3 * (8 * 4 + 2) + 2)
    assert json.loads(run.encoder_spec.read_text())["name"] == "vit_tiny"  # the default

    args = ["evaluate", str(run.path), "--data", "digits", "--no-baseline", "--no-progress",
            "--protocol", "finetune", "--finetune-minutes", "0.01", "--finetune-fractions",
            "0.5"]
    monkeypatch.setattr(sys, "argv", ["selfsup", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0, capsys.readouterr()
    assert "fine-tuned (50% labels)" in capsys.readouterr().out
    result = json.loads(run.eval.read_text())
    assert set(result["finetune"]["fractions"]) == {"50%"}
    cell = result["finetune"]["fractions"]["50%"]["pretrained"]
    assert "scratch" not in result["finetune"]["fractions"]["50%"]  # --no-baseline
    assert abs(cell["num_train"] + cell["num_val"] - result["num_train"] / 2) <= 1
    assert 0 <= cell["accuracy"] <= 1 and cell["steps"] > 0
    assert cell["head"] == {"init": "random"}  # images: near zero unless asked
    monkeypatch.setattr(sys, "argv", ["selfsup", *args, "--finetune-head", "probe"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0, capsys.readouterr()
    cell = json.loads(run.eval.read_text())["finetune"]["fractions"]["50%"]["pretrained"]
    assert cell["head"]["init"] == "probe" and cell["head"]["C"] > 0
    for bad in (["--protocol", "tune"], ["--protocol", "finetune", "--finetune-head", "zeros"]):
        monkeypatch.setattr(sys, "argv", ["selfsup", *args[:6], *bad])
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 2


# --- fine-tuning -------------------------------------------------------------------------------


def _bright_or_dark(n: int, seed: int) -> ImageData:
    """Noise images, dark (class 0) or bright (class 1): learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    noise = rng.integers(0, 100, (n, 16, 16, 3))
    images = (noise + 155 * labels[:, None, None, None]).astype(np.uint8)
    return ImageData(images=images, labels=labels.astype(np.int64), class_names=["d", "b"],
                     source=f"bright-or-dark-{seed}")


def test_layer_decay_scales_earlier_blocks_less():
    vit = _vit(depth=3)
    head = torch.nn.Linear(32, 2)
    groups = parameter_groups(vit, head, 0.05, 0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert scale_of[id(vit.patch_embed.weight)] == 0.5**4
    assert scale_of[id(vit.blocks[0].attn.qkv.weight)] == 0.5**3
    assert scale_of[id(vit.blocks[2].mlp.fc1.weight)] == 0.5
    assert scale_of[id(head.weight)] == scale_of[id(vit.ln.weight)] == 1.0
    assert decay_of[id(vit.cls_token)] == decay_of[id(head.bias)] == 0.0
    assert decay_of[id(head.weight)] == 0.05
    assert len(scale_of) == sum(1 for _ in vit.parameters()) + 2
    flat = parameter_groups(vit, head, 0.05, None)
    assert {g["lr_scale"] for g in flat} == {1.0}


def test_finetune_learns_an_easy_task_and_protocol_runs_the_baseline():
    train, test = _bright_or_dark(160, 0), _bright_or_dark(64, 1)
    config = FinetuneConfig(minutes=None, epochs=3, batch_size=32, lr=3e-3, precision="32")
    encoder = _vit()
    before = [p.detach().clone() for p in encoder.parameters()]
    result = finetune(encoder, train, test, config)
    assert result["accuracy"] > 0.8, result
    assert result["num_train"] + result["num_val"] == 160
    assert len(result["val_history"]) == 3 and 0 <= result["chosen_epoch"] < 3
    assert any(not torch.equal(p, q) for p, q in zip(encoder.parameters(), before, strict=True))

    spec = {"name": "vit_tiny", "options": {"in_channels": 3, "patch_size": 4, "width": 32,
                                            "depth": 2, "heads": 2}}
    short = FinetuneConfig(minutes=None, epochs=1, batch_size=32, precision="32")
    rows = finetune_protocol(_vit(), spec, train, test, short, label_fractions=(0.5,))
    assert set(rows) == {"50%"}
    assert rows["50%"]["pretrained"]["num_train"] + rows["50%"]["pretrained"]["num_val"] == 80
    assert rows["50%"]["scratch"]["config"]["layer_decay"] is None
    # The twin from scratch gets the pre-trained run's steps, not its clock: equal work.
    assert rows["50%"]["scratch"]["steps"] == rows["50%"]["pretrained"]["steps"] == 2
    assert rows["50%"]["scratch"]["config"]["steps"] == 2
    stepped = FinetuneConfig(minutes=None, steps=3, batch_size=32, precision="32")
    assert finetune(_vit(), train, test, stepped)["steps"] == 3  # mid-epoch (4 per epoch)
    assert math.isclose(
        rows["50%"]["gain"],
        rows["50%"]["pretrained"]["accuracy"] - rows["50%"]["scratch"]["accuracy"],
    )


def test_image_finetune_runs_conv_nets_channels_last_with_fused_adamw(monkeypatch):
    """As pre-training runs them (selfsup/engine.py): oneDNN's native layout, AdamW's one-pass
    kernel; ``channels_last=False`` keeps the channels-first layout."""
    seen = []
    configure = FinetuneModule.configure_optimizers

    def spy(self):
        optimiser = configure(self)
        seen.append(optimiser.defaults["fused"])
        return optimiser

    monkeypatch.setattr(FinetuneModule, "configure_optimizers", spy)
    train, test = _bright_or_dark(96, 0), _bright_or_dark(32, 1)
    for channels_last in (True, False):
        encoder = build_encoder("resnet_small")
        config = FinetuneConfig(minutes=None, steps=2, batch_size=32, precision="bf16",
                                channels_last=channels_last)  # the sweep's precision
        assert finetune(encoder, train, test, config)["steps"] == 2
        conv = next(m for m in encoder.modules()
                    if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last
        assert conv.weight.is_contiguous() is not channels_last
    assert seen == [True, True]


def test_image_finetune_can_start_from_a_linear_probe():
    """LP-FT for images: the head starts as a probe of the frozen features, and that start is
    kept unless an epoch beats it on the validation carve."""
    from selfsup.evaluate.features import extract_features
    from selfsup.evaluate.finetune import Classifier, probe_head
    from selfsup.evaluate.probes import linear_head

    train, test = _bright_or_dark(160, 0), _bright_or_dark(64, 1)
    config = FinetuneConfig(minutes=None, steps=1, batch_size=32, lr=1e-9, precision="32",
                            head_init="probe")
    model = Classifier(_vit().eval(), 2)
    chosen = probe_head(model, train, config)
    features = extract_features(model.encoder, train, precision="32")
    weight, bias, expected = linear_head(features, train.labels, 2, seed=0)
    assert chosen == expected
    with torch.no_grad():
        logits = model(train.inputs(np.arange(len(train)))).numpy()
    np.testing.assert_allclose(logits, features @ weight.T + bias, rtol=1e-4, atol=1e-4)

    # One step at lr 1e-9 leaves the start: the probe's accuracy, far above a random head's.
    probed = finetune(_vit(), train, test, config)
    assert probed["head"]["init"] == "probe" and probed["start_kept"]
    assert probed["accuracy"] > 0.9, probed["accuracy"]
    blind = finetune(_vit(), train, test, dataclasses.replace(config, head_init="random"))
    assert blind["head"] == {"init": "random"} and blind["accuracy"] < 0.75


def test_label_subset_is_stratified_and_checked():
    data = _bright_or_dark(200, 2)
    part = label_subset(data, 0.1, 0)
    assert len(part) == 20 and set(part.labels.tolist()) == {0, 1}
    assert label_subset(data, 1.0, 0) is data
    with pytest.raises(SelfsupError):
        label_subset(data, 0.0, 0)
    with pytest.raises(SelfsupError):
        FinetuneConfig(minutes=None, epochs=None)
