"""Tests for the batched image augmentations (selfsup.augment)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from selfsup.augment import BatchedImageAugment, ImageAugmentConfig, to_float_images
from selfsup.augment.image import (
    _blur_conv,
    _blur_matmul,
    _gaussian_kernels,
    _Rng,
    _sample_crop_boxes,
)
from selfsup.errors import SelfsupError

# Everything off and the crop fixed to the whole image: the identity pipeline.
OFF = ImageAugmentConfig(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0
)
# Every op on with probability 1 (exercises every code path in one call).
ALL_ON = ImageAugmentConfig(
    flip_p=1.0, rotation_p=1.0, rotation_degrees=20.0, jitter_p=1.0, grayscale_p=1.0,
    blur_p=1.0, solarize_p=1.0, noise_p=1.0, erase_p=1.0,
)
# Every op on with an intermediate probability.
MIXED = ImageAugmentConfig(
    rotation_p=0.5, rotation_degrees=20.0, blur_p=0.5, solarize_p=0.3, noise_p=0.5, erase_p=0.5
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_images(b: int = 8, h: int = 16, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, h, h, c), dtype=torch.uint8, generator=gen(seed))


def float_images(b: int = 8, c: int = 3, h: int = 16, lo: float = 0.0, hi: float = 1.0,
                 seed: int = 0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(b, c, h, h, generator=gen(seed))


def luma(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


# --- shapes, dtypes, ranges -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uint8_hwc", "float_chw"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("output_size", [None, 8, 24])
@pytest.mark.parametrize("config", [ImageAugmentConfig(), ALL_ON, MIXED], ids=["default", "all",
                                                                               "mixed"])
def test_shape_dtype_range(kind: str, channels: int, output_size: int | None,
                           config: ImageAugmentConfig) -> None:
    images = (uint8_images(c=channels) if kind == "uint8_hwc"
              else float_images(c=channels))
    aug = BatchedImageAugment(replace(config, output_size=output_size))
    out = aug(images, gen())
    size = output_size or 16
    assert out.shape == (8, channels, size, size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_non_square_float_input_gives_square_output() -> None:
    images = torch.rand(4, 3, 12, 20, generator=gen())
    out = BatchedImageAugment(ALL_ON)(images, gen())
    assert out.shape == (4, 3, 12, 12)


def test_to_float_images() -> None:
    u8 = uint8_images(b=2, h=4)
    f = to_float_images(u8)
    assert f.shape == (2, 3, 4, 4) and f.dtype == torch.float32
    assert torch.equal(f, u8.permute(0, 3, 1, 2).float() / 255)
    x = torch.rand(2, 3, 4, 4)
    assert to_float_images(x) is x
    assert to_float_images(x.double()).dtype == torch.float32


@pytest.mark.parametrize("bad", [torch.zeros(3, 4, 4, dtype=torch.uint8),
                                 torch.zeros(2, 4, 4, 3, dtype=torch.int32)])
def test_bad_input_raises(bad: torch.Tensor) -> None:
    with pytest.raises(SelfsupError):
        BatchedImageAugment()(bad)


@pytest.mark.parametrize("change", [{"flip_p": 1.5}, {"crop_scale": (0.5, 0.1)}, {"hue": 0.6},
                                    {"blur_sigma": (0.0, 1.0)}, {"output_size": 0},
                                    {"brightness": -0.1}, {"erase_scale": (0.1, 1.5)}])
def test_bad_config_raises(change: dict) -> None:
    with pytest.raises(SelfsupError):
        BatchedImageAugment(replace(ImageAugmentConfig(), **change))


# --- randomness -----------------------------------------------------------------------------


@pytest.mark.parametrize("config", [ImageAugmentConfig(), MIXED], ids=["default", "mixed"])
def test_samples_of_same_image_differ(config: ImageAugmentConfig) -> None:
    images = uint8_images(b=1, h=32).expand(8, -1, -1, -1)
    out = BatchedImageAugment(config)(images, gen())
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.allclose(out[i], out[j]), (i, j)


def test_reproducible_with_seed() -> None:
    aug = BatchedImageAugment(MIXED)
    images = uint8_images(b=16)
    a, b, c = aug(images, gen(1)), aug(images, gen(1)), aug(images, gen(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert aug(images).shape == a.shape  # no generator: the global RNG


def test_same_under_bfloat16_autocast() -> None:
    aug = BatchedImageAugment(MIXED)
    images = uint8_images(b=16)
    expected = aug(images, gen())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aug(images, gen())
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)


# --- geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uint8_hwc", "float_chw"])
def test_identity_when_everything_off(kind: str) -> None:
    images = uint8_images() if kind == "uint8_hwc" else float_images()
    out = BatchedImageAugment(OFF)(images, gen())
    torch.testing.assert_close(out, to_float_images(images), atol=1e-6, rtol=0)


def test_identity_through_the_affine_resample() -> None:
    # A (practically) zero rotation forces the grid_sample path: pixel centres must map onto
    # pixel centres, so the output equals the input up to interpolation tolerance.
    images = float_images(h=32)
    out = BatchedImageAugment(replace(OFF, rotation_p=1.0, rotation_degrees=1e-6))(images, gen())
    torch.testing.assert_close(out, images, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["uint8_hwc", "float_chw"])
def test_flip_p1_equals_torch_flip(kind: str) -> None:
    images = uint8_images() if kind == "uint8_hwc" else float_images()
    out = BatchedImageAugment(replace(OFF, flip_p=1.0))(images, gen())
    torch.testing.assert_close(out, torch.flip(to_float_images(images), dims=[-1]),
                               atol=1e-5, rtol=0)


def test_rotation_keeps_value_range_and_direction() -> None:
    # A horizontal ramp rotated by a small angle keeps its overall left-to-right increase and
    # never leaves the input's value range (reflection padding only repeats existing values).
    ramp = torch.linspace(0, 1, 32).expand(4, 3, 32, 32).contiguous()
    out = BatchedImageAugment(replace(OFF, rotation_p=1.0, rotation_degrees=10.0))(ramp, gen())
    assert out.min() >= 0 and out.max() <= 1
    assert (out[..., 16, -4:].mean(-1) > out[..., 16, :4].mean(-1)).all()
    assert not torch.allclose(out, ramp, atol=1e-3)


def test_rotation_is_rigid_in_pixel_space_for_non_square_crops() -> None:
    # Input 16x32 whose value is the squared pixel distance from its centre; the whole-image
    # 2:1 crop is squeezed into 16x16. A rigid rotation about the centre must leave a radial
    # image unchanged wherever the rotated sampling points stay inside the image.
    height, width = 16, 32
    ys = torch.arange(height) + 0.5 - height / 2
    xs = torch.arange(width) + 0.5 - width / 2
    radial = (ys[:, None] ** 2 + xs[None, :] ** 2) / 320.0
    images = radial.expand(4, 1, height, width).contiguous()
    base = replace(OFF, crop_ratio=(2.0, 2.0))
    plain = BatchedImageAugment(base)(images, gen())
    rotated = BatchedImageAugment(replace(base, rotation_p=1.0, rotation_degrees=40.0))(
        images, gen(3)
    )
    u = (torch.arange(16) + 0.5) / 8 - 1  # output pixel centres in [-1, 1]
    inside = (u[None, :] * width / 2) ** 2 + (u[:, None] * height / 2) ** 2 < 7**2
    assert not torch.allclose(rotated, plain, atol=1e-3)  # really rotated (corners differ)
    torch.testing.assert_close(rotated[..., inside], plain[..., inside], atol=2e-3, rtol=0)


def test_crop_boxes_fit_and_follow_scale_and_ratio() -> None:
    height, width, n = 32, 48, 4096
    cx, cy, w, h = _sample_crop_boxes(n, height, width, (0.08, 1.0), (3 / 4, 4 / 3),
                                      _Rng(gen(), torch.device("cpu")))
    eps = 1e-4
    assert (cx - w / 2 >= -eps).all() and (cx + w / 2 <= width + eps).all()
    assert (cy - h / 2 >= -eps).all() and (cy + h / 2 <= height + eps).all()
    full = (w == width) & (h == height)  # fallback boxes
    assert full.float().mean() < 0.05
    frac, ratio = (w * h / (height * width))[~full], (w / h)[~full]
    assert (frac >= 0.08 - eps).all() and (frac <= 1 + eps).all()
    assert (ratio >= 3 / 4 - eps).all() and (ratio <= 4 / 3 + eps).all()
    # log-uniform aspect: about half of the boxes on each side of 1.
    assert 0.4 < (ratio > 1).float().mean() < 0.6


def test_crop_falls_back_to_whole_image() -> None:
    # A 2:1 box covering the whole area never fits a square image.
    cx, cy, w, h = _sample_crop_boxes(16, 8, 8, (1.0, 1.0), (2.0, 2.0),
                                      _Rng(gen(), torch.device("cpu")))
    assert (w == 8).all() and (h == 8).all() and (cx == 4).all() and (cy == 4).all()


def test_crop_zooms_in() -> None:
    # A small crop of a horizontal ramp, resized back, spans a smaller range of values and
    # stays increasing left to right (no flip, no rotation).
    ramp = torch.linspace(0, 1, 32).expand(8, 1, 32, 32).contiguous()
    cfg = replace(OFF, crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0))
    out = BatchedImageAugment(cfg)(ramp, gen())
    span = out[:, 0, :, -1] - out[:, 0, :, 0]
    assert (span < 0.6).all() and (span > 0.4).all()
    assert (out[..., 1:] - out[..., :-1] >= -1e-6).all()


# --- colour ---------------------------------------------------------------------------------

JITTER_ONLY = replace(OFF, jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


def test_brightness_multiplies_each_sample() -> None:
    x = float_images(lo=0.05, hi=0.5)
    out = BatchedImageAugment(replace(JITTER_ONLY, brightness=0.4))(x, gen())
    factor = out / x
    per_sample = factor.flatten(1)
    torch.testing.assert_close(per_sample, per_sample[:, :1].expand_as(per_sample))
    assert (per_sample >= 0.6 - 1e-5).all() and (per_sample <= 1.4 + 1e-5).all()
    assert per_sample[:, 0].std() > 0.05


def test_contrast_blends_with_mean_gray() -> None:
    x = float_images(lo=0.3, hi=0.7)
    out = BatchedImageAugment(replace(JITTER_ONLY, contrast=0.4))(x, gen())
    mean_in = luma(x).mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(luma(out).mean(dim=(1, 2, 3), keepdim=True), mean_in)
    ratio = ((out - mean_in) / (x - mean_in)).flatten(1).median(dim=1).values
    assert (ratio >= 0.6 - 1e-4).all() and (ratio <= 1.4 + 1e-4).all()


def test_saturation_scales_chroma_around_luma() -> None:
    x = float_images(lo=0.4, hi=0.6)
    out = BatchedImageAugment(replace(JITTER_ONLY, saturation=0.4))(x, gen())
    torch.testing.assert_close(luma(out), luma(x))  # luma weights sum to 1
    s = ((out - luma(x)) / (x - luma(x))).flatten(1).median(dim=1).values
    torch.testing.assert_close(out - luma(x), s[:, None, None, None] * (x - luma(x)),
                               atol=1e-5, rtol=0)
    assert (s >= 0.6 - 1e-5).all() and (s <= 1.4 + 1e-5).all()


def test_hue_rotates_about_the_gray_axis() -> None:
    x = float_images(lo=0.4, hi=0.6)
    out = BatchedImageAugment(replace(JITTER_ONLY, hue=0.5))(x, gen())
    mean_in, mean_out = x.mean(dim=1, keepdim=True), out.mean(dim=1, keepdim=True)
    torch.testing.assert_close(mean_out, mean_in)  # channel mean kept
    torch.testing.assert_close((out - mean_out).norm(dim=1), (x - mean_in).norm(dim=1))
    assert not torch.allclose(out, x, atol=1e-3)
    gray = x[:, :1].expand(-1, 3, -1, -1)  # gray pixels carry no hue
    torch.testing.assert_close(BatchedImageAugment(replace(JITTER_ONLY, hue=0.5))(gray, gen()),
                               gray)


def test_brightness_then_contrast_compose() -> None:
    # out = k * (b * x) + (1 - k) * mean_luma(b * x) with b, k in [0.6, 1.4]: the mean luma
    # scales by b and deviations from it by k * b.
    x = float_images(b=64, lo=0.3, hi=0.5)
    out = BatchedImageAugment(replace(JITTER_ONLY, brightness=0.4, contrast=0.4))(x, gen())
    m_in = luma(x).mean(dim=(1, 2, 3), keepdim=True)
    b = luma(out).mean(dim=(1, 2, 3), keepdim=True) / m_in
    kb = ((out - b * m_in) / (x - m_in)).flatten(1).median(dim=1).values[:, None, None, None]
    torch.testing.assert_close(out, kb * (x - m_in) + b * m_in, atol=1e-4, rtol=0)
    k = kb / b
    assert (b >= 0.6 - 1e-4).all() and (b <= 1.4 + 1e-4).all()
    assert (k >= 0.6 - 1e-3).all() and (k <= 1.4 + 1e-3).all()


HALF = {
    "jitter": {"jitter_p": 0.5, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
               "hue": 0.1},
    "hue": {"jitter_p": 0.5, "hue": 0.1},
    "grayscale": {"grayscale_p": 0.5},
    "blur": {"blur_p": 0.5},
    "solarize": {"solarize_p": 0.5},
    "noise": {"noise_p": 0.5},
    "erase": {"erase_p": 0.5},
}


@pytest.mark.parametrize("op", list(HALF))
def test_unselected_samples_pass_exactly_unchanged(op: str) -> None:
    cfg = JITTER_ONLY if op in ("jitter", "hue") else OFF
    x = float_images(b=64)
    out = BatchedImageAugment(replace(cfg, **HALF[op]))(x, gen())
    unchanged = (out == x).flatten(1).all(dim=1).float().mean()
    assert 0.25 < unchanged < 0.75


def test_one_channel_jitter_skips_saturation_and_hue() -> None:
    x = float_images(c=1)
    out = BatchedImageAugment(replace(JITTER_ONLY, saturation=0.9, hue=0.5))(x, gen())
    torch.testing.assert_close(out, x, atol=0, rtol=0)
    out = BatchedImageAugment(replace(JITTER_ONLY, brightness=0.4, contrast=0.4))(x, gen())
    assert out.shape == x.shape and not torch.allclose(out, x)


def test_grayscale_p1_gives_equal_channels() -> None:
    x = float_images()
    out = BatchedImageAugment(replace(OFF, grayscale_p=1.0))(x, gen())
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    torch.testing.assert_close(out[:, :1], luma(x))


def test_grayscale_selects_about_p_of_the_samples() -> None:
    x = float_images(b=400, h=4)
    out = BatchedImageAugment(replace(OFF, grayscale_p=0.2))(x, gen())
    is_gray = (out[:, 0] == out[:, 1]).flatten(1).all(dim=1)
    assert 0.12 < is_gray.float().mean() < 0.28


def test_solarize_p1_matches_formula() -> None:
    x = float_images()
    out = BatchedImageAugment(replace(OFF, solarize_p=1.0, solarize_threshold=0.5))(x, gen())
    torch.testing.assert_close(out, torch.where(x >= 0.5, 1 - x, x), atol=0, rtol=0)


# --- blur, noise, erasing -------------------------------------------------------------------


def test_blur_reduces_variance() -> None:
    x = float_images(h=32)
    out = BatchedImageAugment(replace(OFF, blur_p=1.0, blur_sigma=(0.5, 2.0)))(x, gen())
    assert (out.flatten(1).var(dim=1) < 0.8 * x.flatten(1).var(dim=1)).all()
    torch.testing.assert_close(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.02, rtol=0)


def test_blur_of_an_impulse_has_the_sampled_sigma() -> None:
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 16, 16] = 1.0
    out = BatchedImageAugment(replace(OFF, blur_p=1.0, blur_sigma=(1.5, 1.5)))(x, gen())[0, 0]
    torch.testing.assert_close(out.sum(), torch.tensor(1.0))
    offsets = torch.arange(32.0) - 16
    for profile in (out.sum(dim=0), out.sum(dim=1)):
        assert abs((profile * offsets).sum().item()) < 1e-4
        assert abs((profile * offsets**2).sum().item() - 1.5**2) < 0.1


def test_blur_keeps_constant_images_and_unselected_samples() -> None:
    const = torch.full((4, 3, 16, 16), 0.3)
    out = BatchedImageAugment(replace(OFF, blur_p=1.0))(const, gen())
    torch.testing.assert_close(out, const)
    x = float_images(b=64)
    out = BatchedImageAugment(replace(OFF, blur_p=0.5))(x, gen())
    same = (out == x).flatten(1).all(dim=1)
    assert 0 < same.sum() < 64  # some samples untouched, some blurred


@pytest.mark.parametrize("size", [3, 16])
def test_blur_matmul_equals_depthwise_conv(size: int) -> None:
    # The two implementations (banded matmul for small images, depthwise conv for large) must
    # agree, reflect boundary included.
    x = float_images(b=5, h=size)
    kernel = _gaussian_kernels(torch.tensor([0.3, 0.8, 1.5, 2.0, 5.0]), (size - 1) // 2)
    torch.testing.assert_close(_blur_matmul(x, kernel), _blur_conv(x, kernel))


def test_noise_has_the_configured_std() -> None:
    x = torch.full((16, 3, 32, 32), 0.5)
    out = BatchedImageAugment(replace(OFF, noise_p=1.0, noise_std=0.05))(x, gen())
    assert abs((out - x).std().item() - 0.05) < 0.005
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("scale", [(0.02, 0.33), (0.1, 0.1)])
def test_erase_p1_zeroes_a_rectangle_inside_erase_scale(scale: tuple[float, float]) -> None:
    x = torch.full((64, 3, 32, 32), 0.5)
    out = BatchedImageAugment(replace(OFF, erase_p=1.0, erase_scale=scale))(x, gen())
    zero = out[:, 0] == 0
    assert torch.equal(zero, out[:, 1] == 0) and torch.equal(zero, out[:, 2] == 0)
    frac = zero.flatten(1).float().mean(dim=1)
    erased = frac > 0
    assert erased.float().mean() > 0.85  # a few may fail all tries (box too tall/wide)
    # Rounding the box sides to whole pixels moves the area a little.
    assert (frac[erased] >= scale[0] * 0.7).all() and (frac[erased] <= scale[1] * 1.1).all()
    # Each zeroed region is one axis-aligned rectangle: count = rows * cols spanned.
    rows, cols = zero.any(dim=2).sum(dim=1), zero.any(dim=1).sum(dim=1)
    assert torch.equal(zero.flatten(1).sum(dim=1), rows * cols)


# --- vectorisation --------------------------------------------------------------------------


class _CountCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.calls[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


def count_calls(config: ImageAugmentConfig, batch: int) -> Counter[str]:
    aug = BatchedImageAugment(config)
    images = uint8_images(b=batch)
    with _CountCalls() as mode:
        aug(images, gen())
    return mode.calls


def test_number_of_torch_calls_does_not_grow_with_batch() -> None:
    """No Python loop over the samples: the op sequence is the same for 4 and 64 images."""
    small, large = count_calls(ALL_ON, 4), count_calls(ALL_ON, 64)
    assert small == large
    assert sum(small.values()) < 400


def test_zero_probability_ops_cost_nothing() -> None:
    calls = count_calls(OFF, 8)
    assert not {"grid_sample", "conv2d", "rand", "randn", "einsum"} & set(calls)
    calls = count_calls(ImageAugmentConfig(), 8)  # SimCLR CIFAR: no blur, noise, erase
    assert "grid_sample" in calls and "conv2d" not in calls and "randn" not in calls
    assert "masked_fill" not in calls


def test_large_batch_runs() -> None:
    out = BatchedImageAugment(MIXED)(uint8_images(b=1024, h=32), gen())
    assert out.shape == (1024, 3, 32, 32)


# --- property test --------------------------------------------------------------------------

prob = st.sampled_from([0.0, 0.5, 1.0])


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 5), height=st.integers(1, 12), channels=st.sampled_from([1, 3]),
       output_size=st.sampled_from([None, 1, 5]), flip_p=prob, rotation_p=prob,
       jitter_p=prob, blur_p=prob, noise_p=prob, erase_p=prob, solarize_p=prob)
def test_any_config_any_size_stays_in_range(
    batch: int, height: int, channels: int, output_size: int | None, flip_p: float,
    rotation_p: float, jitter_p: float, blur_p: float, noise_p: float, erase_p: float,
    solarize_p: float,
) -> None:
    cfg = ImageAugmentConfig(flip_p=flip_p, rotation_p=rotation_p, rotation_degrees=45.0,
                             jitter_p=jitter_p, blur_p=blur_p, noise_p=noise_p,
                             erase_p=erase_p, solarize_p=solarize_p, output_size=output_size)
    images = torch.randint(0, 256, (batch, height, height, channels), dtype=torch.uint8)
    out = BatchedImageAugment(cfg)(images, gen())
    size = output_size or height
    assert out.shape == (batch, channels, size, size)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert not math.isnan(out.sum().item())
