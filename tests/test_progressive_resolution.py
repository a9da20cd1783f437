"""Progressive resolution: small views early, full size by a fraction of the budget."""

from __future__ import annotations

import pytest
import torch

from selfsup.augment import ImageAugmentConfig, progressive_size
from selfsup.data.base import DataInfo
from selfsup.errors import SelfsupError
from selfsup.methods import METHODS
from selfsup.models import build_encoder


def test_the_schedule_grows_in_steps_of_8_to_the_full_size_at_until() -> None:
    sizes = [progressive_size(p, 16, 32, 0.5) for p in (0.0, 0.2, 0.25, 0.49, 0.5, 0.9, 1.0)]
    assert sizes == [16, 16, 24, 24, 32, 32, 32]
    assert progressive_size(0.0, 32, 32, 0.5) == 32  # nothing to grow
    assert progressive_size(0.3, 16, 36, 1.0) == 16  # 22 rounds down to 16, not below it


def _simclr(**augment) -> torch.nn.Module:
    encoder = build_encoder("resnet_small", in_channels=3, width=4)
    info = DataInfo(channels=3, image_size=32, num_images=64)
    return METHODS.get("simclr")(encoder, info, augment_options=augment)


def test_views_follow_the_schedule_and_the_step_trains_at_each_size() -> None:
    method = _simclr(progressive_min_size=16, progressive_until=0.5)
    images = torch.rand(8, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    for progress, side in ((0.0, 16), (0.3, 24), (0.6, 32)):
        method.on_train_step_start(progress)
        assert method.views(images, 2, generator).shape == (16, 3, side, side)
        out = method.training_step({"images": images}, generator)
        assert torch.isfinite(out.loss) and out.embeddings.shape == (8, method.encoder.embed_dim)
    # Off by default: the views keep the images' size whatever the progress.
    plain = _simclr()
    plain.on_train_step_start(0.0)
    assert plain.views(images, 1, generator).shape[-1] == 32


def test_bad_settings_and_a_method_that_cannot_take_it_are_refused() -> None:
    with pytest.raises(SelfsupError, match="progressive_min_size"):
        ImageAugmentConfig(progressive_min_size=4).validate()
    with pytest.raises(SelfsupError, match="progressive_until"):
        ImageAugmentConfig(progressive_until=0.0).validate()
    encoder = build_encoder("vit_tiny", in_channels=3)
    with pytest.raises(SelfsupError, match="MAE does not take progressive_min_size"):
        METHODS.get("mae")(encoder, DataInfo(channels=3, image_size=32, num_images=64),
                           augment_options={"progressive_min_size": 16})
