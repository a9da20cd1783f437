"""Series readers, augmentations, encoders, the TS2Vec loss and the series methods."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.augment.series import (
    SeriesAugment,
    SeriesAugmentConfig,
    block_mask,
    jitter,
    random_crop,
    scaling,
    segment_permutation,
    time_mask,
)
from selfsup.data.series import load_series
from selfsup.errors import SelfsupError
from selfsup.evaluate.anomaly import knn_scores, roc_auc
from selfsup.methods.base import DataInfo
from selfsup.methods.ts_contrast import (
    TSContrast,
    hierarchical_contrastive_loss,
    overlapping_crops,
)
from selfsup.methods.ts_mask import TSMask
from selfsup.models.series import DilatedCNN, PatchTransformer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def padded_batch(lengths: list[int], channels: int = 2, seed: int = 0):
    g = gen(seed)
    width = max(lengths)
    x = torch.randn(len(lengths), channels, width, generator=g)
    lens = torch.tensor(lengths)
    x = x * (torch.arange(width)[None, :] < lens[:, None])[:, None, :]
    return x, lens


# ------------------------------------------------------------------------------------------
# Readers


def test_npz_train_test_layout_with_lengths(tmp_path):
    x = np.random.default_rng(0).normal(size=(4, 3, 10)).astype(np.float32)
    lengths = np.array([10, 7, 5, 10], dtype=np.int32)
    for i, n in enumerate(lengths):
        x[i, :, n:] = np.nan
    path = tmp_path / "set.npz"
    np.savez(path, X_train=x, y_train=np.array([0, 1, 0, 2], np.uint8), len_train=lengths,
             X_test=x[:2], y_test=np.array([1, 1], np.uint8), len_test=lengths[:2],
             class_labels=np.array(["a", "b", "c"]))
    data = load_series(path, {"split": "train"})
    assert data.values.shape == (4, 3, 10) and data.channels == 3
    assert data.lengths.tolist() == [10, 7, 5, 10]
    assert data.num_classes == 3 and data.labels.tolist() == [0, 1, 0, 2]
    assert np.isfinite(data.values).all() and (data.values[2, :, 5:] == 0).all()
    inputs = data.inputs(np.array([1, 2]))  # NaN after each length, trimmed to the longest
    assert inputs.shape == (2, 3, 7) and torch.isnan(inputs[1, :, 5:]).all()
    assert not torch.isnan(inputs[0]).any()
    batch = data.batch_dataset(with_labels=True).__getitems__([2, 1])
    assert batch["series"].shape == (2, 3, 7) and batch["lengths"].tolist() == [5, 7]
    assert batch["labels"].tolist() == [0, 1]
    assert len(load_series(path, {"split": "test"})) == 2


def test_npz_channel_mismatch_between_train_and_test(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, X_train=np.zeros((3, 2, 8), np.float32), X_test=np.zeros((3, 3, 8), np.float32))
    with pytest.raises(SelfsupError, match="X_train has 2 channel.*X_test has 3"):
        load_series(path)
    a = load_series(_npz(tmp_path / "a.npz", np.zeros((3, 2, 8), np.float32)))
    b = load_series(_npz(tmp_path / "b.npz", np.zeros((3, 1, 8), np.float32)))
    with pytest.raises(SelfsupError, match="same channels"):
        a.check_compatible(b)


def _npz(path: Path, x: np.ndarray, **extra) -> Path:
    np.savez(path, X=x, **extra)
    return path


def test_npz_plain_layout_infers_lengths_and_refuses_inner_nan(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(2, 6)  # 2-D: one channel
    x[1, 4:] = np.nan  # padding
    data = load_series(_npz(tmp_path / "p.npz", x, y=np.array(["up", "down"])))
    assert data.values.shape == (2, 1, 6) and data.lengths.tolist() == [6, 4]
    assert data.class_names == ["down", "up"] and data.labels.tolist() == [1, 0]
    x[0, 2] = np.nan  # a gap inside series 0
    path = _npz(tmp_path / "gap.npz", x)
    with pytest.raises(SelfsupError, match="series 0 has a missing value .* step 2.*fill="):
        load_series(path)
    filled = load_series(path, {"fill": "linear"})
    assert filled.values[0, 0, 2] == pytest.approx(2.0)  # halfway between 1 and 3
    assert load_series(path, {"fill": "zero"}).values[0, 0, 2] == 0.0
    assert load_series(path, {"fill": "ffill"}).values[0, 0, 2] == 1.0
    with pytest.raises(SelfsupError, match="fill must be one of"):
        load_series(path, {"fill": "mean"})
    with pytest.raises(SelfsupError, match="unknown series data option"):
        load_series(path, {"colour": "red"})


def test_csv_wide_with_labels_and_ragged_rows(tmp_path):
    good = tmp_path / "wide.csv"
    good.write_text("label,t0,t1,t2,t3\nA,1,2,3,4\nB,5,6,7,8\nA,0,0,1,1\n")
    data = load_series(good, {"label_column": "label"})
    assert data.values.shape == (3, 1, 4)
    assert data.values[1, 0].tolist() == [5, 6, 7, 8]
    assert data.class_names == ["A", "B"] and data.labels.tolist() == [0, 1, 0]

    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2,3,4\n5,6,7\n")
    with pytest.raises(SelfsupError, match="line 2: the row holds 3 values .* length column"):
        load_series(ragged)
    with_len = tmp_path / "with_len.csv"
    with_len.write_text("n,a,b,c,d\n4,1,2,3,4\n3,5,6,7,\n")
    data = load_series(with_len, {"length_column": "n"})
    assert data.lengths.tolist() == [4, 3] and data.values[1, 0].tolist() == [5, 6, 7, 0]
    bad = tmp_path / "text.csv"
    bad.write_text("1,2,3\n4,x,6\n")
    with pytest.raises(SelfsupError, match="line 2: 'x' is not a number"):
        load_series(bad)


def test_parquet_wide(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"y": [1, 0], "s0": [0.5, 1.5], "s1": [1.0, None], "s2": [2.0, 3.0]})
    path = tmp_path / "wide.parquet"
    pq.write_table(table, path)
    with pytest.raises(SelfsupError, match="series 1 has a missing value .* step 1"):
        load_series(path, {"label_column": "y"})
    data = load_series(path, {"label_column": "y", "fill": "linear"})
    assert data.values[1, 0].tolist() == [1.5, 2.25, 3.0] and data.labels.tolist() == [1, 0]


def test_csv_long_form_multichannel_variable_length(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text(
        "id,time,ax,ay,label\n"
        "s1,2,3.0,30,walk\n"
        "s2,0,9.0,90,run\n"
        "s1,0,1.0,10,walk\n"
        "s1,1,2.0,20,walk\n"
        "s2,1,8.0,80,run\n"
    )
    opts = {"id_column": "id", "time_column": "time", "value_columns": "ax,ay",
            "label_column": "label"}
    data = load_series(path, opts)
    assert data.values.shape == (2, 2, 3) and data.lengths.tolist() == [3, 2]
    assert data.values[0].tolist() == [[1, 2, 3], [10, 20, 30]]  # sorted by time
    assert data.values[1, :, :2].tolist() == [[9, 8], [90, 80]]
    assert data.class_names == ["run", "walk"] and data.labels.tolist() == [1, 0]
    dup = tmp_path / "dup.csv"
    dup.write_text("id,time,v\na,0,1\na,0,2\n")
    with pytest.raises(SelfsupError, match="two rows at time"):
        load_series(dup, {"id_column": "id", "time_column": "time"})
    with pytest.raises(SelfsupError, match="no value column 'vz'"):
        load_series(path, {**opts, "value_columns": "vz"})


@pytest.mark.skipif(not SHARED.exists(), reason="shared time-series data absent")
def test_shared_ucr_and_mnist1d_layouts():
    vowels = load_series(SHARED / "ucr_JapaneseVowels.npz", {"split": "test"})
    assert vowels.channels == 12 and vowels.lengths.min() >= 7 and vowels.num_classes == 9
    assert np.isfinite(vowels.values).all()
    mnist = load_series(SHARED / "mnist1d.npz")
    assert mnist.values.shape == (4000, 1, 40) and mnist.num_classes == 10


# ------------------------------------------------------------------------------------------
# Augmentations


def test_augmentations_keep_shapes_and_padding():
    x, lens = padded_batch([12, 7, 3, 12], channels=3)
    pad = (torch.arange(12)[None, :] >= lens[:, None])[:, None, :].expand_as(x)
    for out in (jitter(x, lens, 0.5, gen()), scaling(x, lens, 0.5, gen()),
                segment_permutation(x, lens, 5, gen()), time_mask(x, lens, 0.5, 2, gen())[0]):
        assert out.shape == x.shape
        assert (out[pad] == 0).all()
    config = SeriesAugmentConfig(crop_p=0.5, permute_p=0.5, mask_p=0.5)
    out, new_lens = SeriesAugment(config)(x, lens, gen(1))
    assert out.shape[:2] == x.shape[:2] and (new_lens <= lens).all() and (new_lens >= 1).all()
    after = torch.arange(out.shape[-1])[None, :] >= new_lens[:, None]
    assert (out.transpose(1, 2)[after] == 0).all()


def test_random_crop_is_a_window_of_the_valid_part():
    x = torch.arange(40, dtype=torch.float32).view(2, 1, 20) + 1
    lens = torch.tensor([20, 9])
    x[1, :, 9:] = 0
    out, sizes = random_crop(x, lens, (0.3, 0.6), gen(3))
    for i in range(2):
        window = out[i, 0, : sizes[i]]
        start = int(window[0] - x[i, 0, 0])
        assert torch.equal(window, x[i, 0, start : start + sizes[i]])
        assert start + sizes[i] <= lens[i] and (out[i, 0, sizes[i]:] == 0).all()


def test_segment_permutation_reorders_values_per_sample():
    x = torch.arange(30, dtype=torch.float32).view(1, 1, 30).repeat(4, 2, 1)
    lens = torch.tensor([30, 30, 17, 2])
    x = x * (torch.arange(30)[None, :] < lens[:, None])[:, None, :]
    out = segment_permutation(x, lens, 4, gen(5))
    for i in range(4):
        n = int(lens[i])
        assert sorted(out[i, 0, :n].tolist()) == list(range(n))  # a permutation of the steps
        assert torch.equal(out[i, 0], out[i, 1])  # channels move together
    assert not torch.equal(out[0], out[1])  # per-sample randomness


@pytest.mark.parametrize("ratio", [0.15, 0.4, 0.75])
def test_block_mask_covers_the_requested_ratio(ratio):
    lens = torch.tensor([64, 40, 13, 64])
    mask = block_mask(lens, 64, ratio, 4, gen(2))
    blocks = (lens + 3) // 4
    per_block = mask.view(4, 16, 4).any(dim=2)
    expected = torch.round(blocks.float() * ratio).long().clamp(min=1)
    assert per_block.sum(dim=1).tolist() == expected.tolist()
    assert not (mask & (torch.arange(64)[None, :] >= lens[:, None])).any()
    # masked blocks are whole (up to the series' end)
    full = per_block.repeat_interleave(4, dim=1) & (torch.arange(64)[None, :] < lens[:, None])
    assert torch.equal(mask, full)


# ------------------------------------------------------------------------------------------
# Encoders


@pytest.mark.parametrize("make", [
    lambda: DilatedCNN(2, hidden=8, depth=3, embed_dim=16),
    lambda: PatchTransformer(2, patch_size=4, embed_dim=16, depth=2, heads=2),
    lambda: DilatedCNN(2, hidden=8, depth=3, embed_dim=16, pyramid=3),
    lambda: PatchTransformer(2, patch_size=4, embed_dim=16, depth=2, heads=2, pyramid=2),
])
def test_encoders_ignore_padding_and_read_nan_padding(make):
    torch.manual_seed(0)
    enc = make().eval()
    x, lens = padded_batch([16, 9], channels=2)
    with torch.no_grad():
        both = enc(x, lens)
        alone = enc(x[1:, :, :9], lens[1:])
        nan_padded = x.clone()
        nan_padded[1, :, 9:] = float("nan")
        from_nan = enc(nan_padded)
        feats, valid = enc.features(x, lens)
    assert both.shape == (2, 16 * (2**enc.pyramid - 1)) == (2, enc.embed_dim)
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both, from_nan, atol=1e-5, rtol=1e-5)
    assert feats.shape[0] == 2 and valid[1].sum() == -(-9 // enc.token_size)


def test_pyramid_pool_takes_the_max_over_whole_halves_and_quarters_of_each_length():
    enc = DilatedCNN(1, hidden=4, depth=1, embed_dim=3, pyramid=3)
    torch.manual_seed(0)
    feats = torch.randn(3, 8, 3)
    valid = torch.arange(8)[None, :] < torch.tensor([8, 5, 2])[:, None]
    pooled = enc.pool(feats, valid)
    assert pooled.shape == (3, 21) and torch.isfinite(pooled).all()
    # 8 valid steps: the pieces are the adaptive max pools over 1, 2 and 4 equal parts
    whole = torch.cat([F.adaptive_max_pool1d(feats[:1].transpose(1, 2), k).transpose(1, 2)
                       .flatten(1) for k in (1, 2, 4)], dim=1)
    torch.testing.assert_close(pooled[:1], whole)
    # 5 valid steps: halves [0, 3) [2, 5); quarters [0, 2) [1, 3) [2, 4) [3, 5); padding unseen
    pieces = [(0, 5), (0, 3), (2, 5), (0, 2), (1, 3), (2, 4), (3, 5)]
    expected = torch.cat([feats[1, a:b].amax(0) for a, b in pieces])
    torch.testing.assert_close(pooled[1], expected)
    # 2 valid steps: every piece still holds one
    pieces = [(0, 2), (0, 1), (1, 2), (0, 1), (0, 1), (1, 2), (1, 2)]
    torch.testing.assert_close(pooled[2], torch.cat([feats[2, a:b].amax(0) for a, b in pieces]))
    # one level is TS2Vec's max over the series, as wide as a step's feature
    plain = DilatedCNN(1, hidden=4, depth=1, embed_dim=3)
    assert plain.embed_dim == plain.feature_dim == 3
    torch.testing.assert_close(plain.pool(feats, valid), pooled[:, :3])
    for bad in (0, -1, 9, 1.5, True):
        with pytest.raises(SelfsupError, match="pyramid must be a whole number of levels from"):
            DilatedCNN(1, pyramid=bad)


def test_encoders_refuse_wrong_channels_and_short_series():
    enc = PatchTransformer(3, patch_size=8, embed_dim=16, depth=1, heads=2)
    with pytest.raises(SelfsupError, match="built for 3 channel.*have 2"):
        enc(torch.zeros(2, 2, 16))
    with pytest.raises(SelfsupError, match="series 1 has 5 steps, fewer than the 8"):
        enc(torch.zeros(2, 3, 16), torch.tensor([16, 5]))
    info = DataInfo(channels=3, num_images=4, length=16, extra={"min_length": 5})
    with pytest.raises(SelfsupError, match="shortest series has 5 steps.*patch"):
        TSMask(enc, info)


# ------------------------------------------------------------------------------------------
# TS2Vec loss against a direct computation


def _reference_pair_loss(z: torch.Tensor) -> torch.Tensor:
    """TS2Vec's formulation: drop the diagonal with tril/triu, then -log_softmax at the
    partner; average of the two halves."""
    m = z.shape[1] // 2
    sim = z @ z.transpose(1, 2)
    logits = torch.tril(sim, diagonal=-1)[:, :, :-1] + torch.triu(sim, diagonal=1)[:, :, 1:]
    logits = -F.log_softmax(logits, dim=-1)
    i = torch.arange(m)
    return (logits[:, i, m + i - 1].mean() + logits[:, m + i, i].mean()) / 2


def _reference_hierarchical(z1, z2, alpha):
    total, levels = 0.0, 0
    while True:
        t = z1.shape[1]
        inst = _reference_pair_loss(torch.cat([z1, z2], 0).transpose(0, 1))
        total = total + alpha * inst
        if t > 1:
            total = total + (1 - alpha) * _reference_pair_loss(torch.cat([z1, z2], 1))
        levels += 1
        if t == 1:
            return total / levels
        z1 = F.max_pool1d(z1.transpose(1, 2), 2).transpose(1, 2)
        z2 = F.max_pool1d(z2.transpose(1, 2), 2).transpose(1, 2)


@pytest.mark.parametrize("steps", [1, 5, 8])
def test_hierarchical_loss_matches_reference(steps):
    g = gen(7)
    z1, z2 = torch.randn(3, steps, 6, generator=g), torch.randn(3, steps, 6, generator=g)
    got = hierarchical_contrastive_loss(z1, z2, alpha=0.3)
    torch.testing.assert_close(got, _reference_hierarchical(z1, z2, 0.3))


def test_overlapping_crops_contain_the_overlap():
    lens = torch.tensor([50, 23, 31, 23])
    for unit in (1, 4):
        c = overlapping_crops(lens, unit, 2, gen(unit))
        o = int(c["overlap"])
        assert o % unit == 0 and 2 <= o <= 23
        assert (c["eleft"] <= c["left"]).all() and (c["right"] - c["left"] == o).all()
        assert (c["eright"] >= c["right"]).all() and (c["eright"] <= lens).all()
        assert (c["left"] % unit == 0).all() and (c["eleft"] % unit == 0).all()


# ------------------------------------------------------------------------------------------
# Methods: a few optimiser steps on a tiny problem


def _train(method, x, lens, steps=4):
    opt = torch.optim.AdamW(method.parameters(), lr=3e-3)
    g, losses = gen(0), []
    for _ in range(steps):
        out = method.training_step({"series": x, "lengths": lens}, g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    return losses, out


@pytest.mark.parametrize("method_class,encoder", [
    (TSContrast, lambda: DilatedCNN(2, hidden=8, depth=2, embed_dim=16)),
    (TSContrast, lambda: PatchTransformer(2, patch_size=4, embed_dim=16, depth=1, heads=2)),
    (TSMask, lambda: DilatedCNN(2, hidden=8, depth=2, embed_dim=16)),
    (TSMask, lambda: PatchTransformer(2, patch_size=4, embed_dim=16, depth=1, heads=2)),
    (TSContrast, lambda: DilatedCNN(2, hidden=8, depth=2, embed_dim=16, pyramid=2)),
    (TSMask, lambda: PatchTransformer(2, patch_size=4, embed_dim=16, depth=1, heads=2,
                                      pyramid=2)),
])
def test_methods_train_on_variable_lengths(method_class, encoder):
    torch.manual_seed(0)
    x, lens = padded_batch([32, 20, 12, 28, 32, 16], channels=2)
    info = DataInfo(channels=2, num_images=6, length=32, extra={"min_length": 12})
    method = method_class(encoder(), info)
    losses, out = _train(method, x, lens)
    assert all(np.isfinite(losses)) and out.embeddings.shape == (6, method.encoder.embed_dim)
    if method_class is TSMask:
        errors = method.reconstruction_error(x, lens)
        assert errors.shape == (6,) and (errors > 0).all()


def test_ts_contrast_exports_the_average_of_its_iterates():
    torch.manual_seed(0)
    x, lens = padded_batch([16, 12, 16, 10], channels=2)
    info = DataInfo(channels=2, num_images=4, length=16, extra={"min_length": 10})
    method = TSContrast(DilatedCNN(2, hidden=4, depth=1, embed_dim=8), info)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    iterates = []
    for _ in range(3):
        loss = method.training_step({"series": x, "lengths": lens}, gen(1)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_train_step_end(0.5)
        iterates.append(method.encoder.input.weight.detach().clone())
    assert all(p.grad is None for p in method.averaged.parameters())
    method.on_fit_end(None)
    torch.testing.assert_close(method.encoder.input.weight, torch.stack(iterates).mean(0))


def test_anomaly_scores_and_roc_auc():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(50, 8)) + np.array([5.0] + [0.0] * 7)
    query = np.concatenate([rng.normal(size=(10, 8)) + np.array([5.0] + [0] * 7),
                            rng.normal(size=(10, 8)) - np.array([5.0] + [0] * 7)])
    scores = knn_scores(normal, query, k=3)
    assert roc_auc(scores, [0] * 10 + [1] * 10) > 0.95
    assert roc_auc([0.1, 0.2, 0.3], [1, 0, 0]) == 0.0
    with pytest.raises(SelfsupError, match="both normal and anomalous"):
        roc_auc([0.1, 0.2], [0, 0])


class _MaskSpy(torch.nn.Module):
    """Wraps an encoder and records the timestamp mask each ``features`` call receives."""

    def __init__(self, encoder):
        super().__init__()
        self.inner, self.masks = encoder, []
        self.embed_dim, self.min_length = encoder.embed_dim, encoder.min_length

    def features(self, x, lengths=None, mask=None):
        self.masks.append((mask, lengths))
        return self.inner.features(x, lengths, mask)

    def pool(self, feats, valid):
        return self.inner.pool(feats, valid)


def test_ts_contrast_masks_only_when_asked():
    """Off by default (it made MNIST-1D features worse than random init); with mask_p the share
    of masked valid steps is about p, and padding is never masked."""
    torch.manual_seed(0)
    x, lens = padded_batch([64, 40, 64, 50] * 8, channels=2)
    info = DataInfo(channels=2, num_images=32, length=64, extra={"min_length": 40})
    plain = TSContrast(_MaskSpy(DilatedCNN(2, hidden=4, depth=1, embed_dim=8)), info,
                       {"average": False})
    plain.training_step({"series": x, "lengths": lens}, gen(0))
    assert plain.options.mask_p == 0.0 and plain.encoder.masks[0][0] is None
    masked = TSContrast(_MaskSpy(DilatedCNN(2, hidden=4, depth=1, embed_dim=8)), info,
                        {"average": False, "mask_p": 0.3})
    masked.training_step({"series": x, "lengths": lens}, gen(0))
    mask, view_lens = masked.encoder.masks[0]
    valid = torch.arange(mask.shape[1])[None, :] < view_lens[:, None]
    assert not (mask & ~valid).any()
    share = mask[valid].float().mean().item()
    assert abs(share - 0.3) < 0.03, share
