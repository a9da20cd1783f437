"""Time-series encoders: a dilated 1-D CNN (TS2Vec) and a patch transformer (PatchTST).

Both take float series (B, C, L) and handle variable lengths: a sample is valid on its first
``lengths[i]`` steps. Lengths come either as an argument or from NaN padding (steps where every
channel is NaN count as padding), so ``encoder(inputs)`` works on the NaN-padded arrays the
series reader hands out. Both normalise each channel with statistics stored in the encoder, so
an exported encoder needs no separate preprocessing recipe.

Pooled pre-training (series of many sources, data/series.py) builds them with two switches that
MOMENT (Goswami et al. 2024) uses for the same reason: ``channel_independent`` (a one-channel
encoder that embeds each channel of a C-channel series on its own and concatenates the C
embeddings, so sets of any channel count share one encoder; set by the pooled data) and
``instance_norm`` (each series' channel z-normalised over its own valid steps, RevIN-style,
Kim et al. 2022; opt-in, ``--encoder-option instance_norm=true``). Pooled runs leave
``instance_norm`` off: it discards each series' level and scale, and on JapaneseVowels, whose
12 coefficients' levels tell the speakers apart, the train-split cross-validation accuracy of
a linear probe fell from 0.985 to 0.796 with it (benchmarks/ucr_pooled.py
--instance-norm-check).

``forward`` returns one embedding per series (B, embed_dim); ``features`` returns per-token
features (B, N, feature_dim) with a validity mask, where a token is one step (CNN) or one patch of
``token_size`` steps (transformer). The embedding is the max over each piece of a temporal
pyramid of ``pyramid`` levels: with the default 1, the max over the whole series (TS2Vec's
instance representation), so ``embed_dim == feature_dim``. Methods use ``features`` with an
optional (B, L) step mask: masked steps (or patches) are replaced by a learned mask token
before the network, which is TS2Vec's timestamp masking and the masked-patch pretext's input at
once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import SelfsupError
from selfsup.models.registry import ENCODERS

__all__ = ["DilatedCNN", "PatchTransformer", "SeriesEncoder", "lengths_from_nan"]


def lengths_from_nan(x: torch.Tensor) -> torch.Tensor:
    """Each sample's length: one past its last step where some channel is not NaN."""
    present = ~torch.isnan(x).all(dim=1)  # (B, L)
    steps = torch.arange(1, x.shape[-1] + 1, device=x.device)[None, :]
    return (present * steps).amax(dim=1).long()


class SeriesEncoder(nn.Module):
    """Base of the series encoders: channel check, normalisation, length and padding handling."""

    feature_dim: int  # width of each token's feature
    token_size: int = 1  # steps per feature token
    min_length: int = 1  # the shortest series the encoder accepts

    def __init__(
        self,
        in_channels: int,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        pyramid: int = 1,
        channel_independent: bool = False,
        instance_norm: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise SelfsupError(f"a series encoder needs at least one channel, not {in_channels}")
        if channel_independent and in_channels != 1:
            raise SelfsupError(
                "a channel-independent series encoder reads one channel at a time: in_channels "
                f"must be 1, not {in_channels}"
            )
        self.channel_independent = bool(channel_independent)
        self.instance_norm = bool(instance_norm)
        if not isinstance(pyramid, int) or isinstance(pyramid, bool) or not 1 <= pyramid <= 8:
            raise SelfsupError(
                f"pyramid must be a whole number of levels from 1 to 8, not {pyramid!r}"
            )
        self.pyramid = pyramid
        mean = mean if mean is not None else [0.0] * in_channels
        std = std if std is not None else [1.0] * in_channels
        if len(mean) != in_channels or len(std) != in_channels:
            raise SelfsupError("mean/std need one value per input channel")
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1))

    def prepare(
        self, x: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised input with zeros on the padding, and the lengths (from NaN if not given)."""
        if x.ndim == 2:  # (B, L): one channel
            x = x[:, None, :]
        if x.ndim != 3:
            raise SelfsupError(f"a series batch must be (batch, channels, length), not {x.shape}")
        if x.shape[1] != self.in_channels:  # forward() splits channels first when independent
            raise SelfsupError(
                f"the encoder was built for {self.in_channels} channel(s) but the series have "
                f"{x.shape[1]}; train and evaluation data must have the same channels"
            )
        if lengths is None:
            lengths = lengths_from_nan(x)
        lengths = lengths.to(x.device).long()
        if len(lengths) and int(lengths.min()) < self.min_length:
            i = int(lengths.argmin())
            raise SelfsupError(
                f"series {i} has {int(lengths[i])} steps, fewer than the {self.min_length} this "
                f"encoder needs ({self.length_reason()}); pad it, drop it or pick a smaller "
                "patch/kernel"
            )
        valid = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
        x = (torch.nan_to_num(x.float()) - self.mean) / self.std
        x = x * valid[:, None, :]
        if self.instance_norm:
            keep = valid[:, None, :].to(x.dtype)
            count = lengths.clamp(min=1)[:, None, None].to(x.dtype)
            mean = x.sum(dim=2, keepdim=True) / count
            std = (((x - mean) * keep) ** 2).sum(dim=2, keepdim=True).div(count).sqrt()
            x = (x - mean) / std.clamp(min=1e-5) * keep
        return x, lengths

    def length_reason(self) -> str:
        return "its first convolution's kernel"

    def features(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token features (B, N, feature_dim) float32 and their validity (B, N) bool.

        Always float32, also inside the engine's bf16 autocast: on CPU, PyTorch's bf16 dilated
        Conv1d is about 15x slower than float32 (measured here), and these models are too
        small for bf16 matmuls to pay off.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._features(x.float(), lengths, mask)

    def _features(
        self, x: torch.Tensor, lengths: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, embed_dim); a channel-independent encoder given C channels returns (B, C *
        embed_dim): each channel embedded as its own series, the C embeddings concatenated."""
        if self.channel_independent and x.ndim == 3 and x.shape[1] > 1:
            batch, channels, length = x.shape
            if lengths is None:
                lengths = lengths_from_nan(x)
            flat = x.reshape(batch * channels, 1, length)
            embedded = self.pool(*self.features(flat, lengths.repeat_interleave(channels)))
            return embedded.reshape(batch, -1)
        return self.pool(*self.features(x, lengths))

    @property
    def embed_dim(self) -> int:
        """Width of a series' embedding: one feature per pyramid piece (1 + 2 + 4 + ...)."""
        return self.feature_dim * (2**self.pyramid - 1)

    def pool(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The series embedding (B, embed_dim): the max over the valid tokens of the whole
        series (TS2Vec's instance representation, Yue et al. 2022), then, for each further
        pyramid level l, of each of its 2^l equal pieces, concatenated.

        Max pooling over the whole series forgets *when* a feature fired; the pieces keep a
        coarse order, as spatial pyramid pooling does for images (Lazebnik et al. 2006, He et
        al. 2014). Each piece's max is TS2Vec's own representation of that sub-series. Pieces
        split each series' own valid length (not the padded one), and hold at least one token.
        """
        hidden = feats.masked_fill(~valid[:, :, None], float("-inf"))
        pieces = [hidden.amax(dim=1)]  # level 0: the whole series (valid tokens are a prefix)
        n = valid.sum(dim=1, keepdim=True)  # (B, 1) valid tokens per series
        tokens = torch.arange(feats.shape[1], device=feats.device)[None, :]
        for k in (2**level for level in range(1, self.pyramid)):
            for j in range(k):
                start = torch.div(j * n, k, rounding_mode="floor")
                end = torch.maximum(start + 1, -torch.div(-(j + 1) * n, k, rounding_mode="floor"))
                inside = (tokens >= start) & (tokens < end)  # (B, N)
                pieces.append(hidden.masked_fill(~inside[:, :, None], float("-inf")).amax(dim=1))
        return torch.cat(pieces, dim=1)

    def embed(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample embeddings (B, embed_dim); an alias of ``forward`` named for readers."""
        return self(x, lengths)


class _DilatedBlock(nn.Module):
    """Two dilated 'same' convolutions with GELU before each, plus a residual (TS2Vec)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int) -> None:
        super().__init__()
        pad = (kernel - 1) * dilation // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, padding=pad, dilation=dilation)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, padding=pad, dilation=dilation)
        self.project = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``keep`` (B, 1, L) zeroes the padding between the convolutions too, so nothing
        computed past a series' end reaches its valid steps."""
        out = self.conv2(F.gelu(self.conv1(F.gelu(h)) * keep))
        return (out + self.project(h)) * keep


@ENCODERS.register("dilated_cnn")
class DilatedCNN(SeriesEncoder):
    """TS2Vec's encoder (Yue et al. 2022, sec. 3.1): a per-step linear projection, then residual
    blocks of dilated convolutions (dilation 2^i), one feature vector per step.

    The padding after each length is re-zeroed after every block, so a series' features do not
    depend on how much padding follows it in a batch (the convolutions see zeros past its end
    either way). Defaults are smaller than TS2Vec's (hidden 64, depth 10, output 320) for CPU.
    """

    def __init__(
        self,
        in_channels: int,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        hidden: int = 64,
        depth: int = 6,
        embed_dim: int = 128,
        kernel_size: int = 3,
        pyramid: int = 1,
        channel_independent: bool = False,
        instance_norm: bool = False,
    ) -> None:
        super().__init__(in_channels, mean, std, pyramid, channel_independent, instance_norm)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise SelfsupError(f"kernel_size must be odd and positive, not {kernel_size}")
        if depth < 1 or hidden < 1 or embed_dim < 1:
            raise SelfsupError("depth, hidden and embed_dim must be positive")
        self.feature_dim = embed_dim  # each step's; the series embedding is pyramid-wide
        self.min_length = kernel_size
        self.input = nn.Linear(in_channels, hidden)
        self.mask_token = nn.Parameter(torch.zeros(hidden))
        widths = [hidden] * depth + [embed_dim]
        self.blocks = nn.ModuleList(
            _DilatedBlock(widths[i], widths[i + 1], kernel_size, 2**i) for i in range(depth)
        )
        self.receptive_field = 1 + sum(2 * (kernel_size - 1) * 2**i for i in range(depth))

    def _features(
        self, x: torch.Tensor, lengths: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.prepare(x, lengths)
        valid = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
        h = self.input(x.transpose(1, 2))  # (B, L, hidden)
        if mask is not None:
            h = torch.where(mask[:, :, None], self.mask_token.to(h.dtype), h)
        keep = valid[:, None, :].to(h.dtype)
        h = h.transpose(1, 2) * keep
        for block in self.blocks:
            h = block(h, keep)
        return h.transpose(1, 2), valid


def _sincos(positions: int, dim: int, device: torch.device) -> torch.Tensor:
    """1-D sine-cosine position embedding (Vaswani et al. 2017), any number of positions."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device) / max(1, half))
    angle = torch.arange(positions, device=device)[:, None] * freq[None, :]
    emb = torch.cat([angle.sin(), angle.cos()], dim=1)
    return F.pad(emb, (0, dim - emb.shape[1]))


@ENCODERS.register("patch_transformer")
class PatchTransformer(SeriesEncoder):
    """Patches of ``patch_size`` steps (all channels together) as tokens of a pre-norm
    transformer (PatchTST, Nie et al. 2023, without channel independence), with sine-cosine
    positions so any length works. Patches past a series' end are masked out of attention; a
    partial last patch is zero-filled. Pooled by the max over valid patches.
    """

    def __init__(
        self,
        in_channels: int,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        patch_size: int = 8,
        embed_dim: int = 128,
        depth: int = 3,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        pyramid: int = 1,
        channel_independent: bool = False,
        instance_norm: bool = False,
    ) -> None:
        super().__init__(in_channels, mean, std, pyramid, channel_independent, instance_norm)
        if patch_size < 1:
            raise SelfsupError(f"patch_size must be positive, not {patch_size}")
        if embed_dim % heads:
            raise SelfsupError(f"embed_dim {embed_dim} must be a multiple of heads {heads}")
        self.feature_dim = embed_dim  # each patch's; the series embedding is pyramid-wide
        self.token_size = patch_size
        self.min_length = patch_size
        self.patch = nn.Linear(in_channels * patch_size, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))
        layer = nn.TransformerEncoderLayer(
            embed_dim,
            heads,
            int(embed_dim * mlp_ratio),
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)

    def length_reason(self) -> str:
        return f"one patch of {self.token_size} steps"

    def _features(
        self, x: torch.Tensor, lengths: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.prepare(x, lengths)
        p = self.token_size
        batch, channels, length = x.shape
        tokens = -(-length // p)
        x = F.pad(x, (0, tokens * p - length))
        patches = x.view(batch, channels, tokens, p).permute(0, 2, 1, 3).reshape(batch, tokens, -1)
        h = self.patch(patches)
        if mask is not None:  # a patch is masked when its first step is
            patch_mask = F.pad(mask, (0, tokens * p - length))[:, ::p]
            h = torch.where(patch_mask[:, :, None], self.mask_token.to(h.dtype), h)
        h = h + _sincos(tokens, self.feature_dim, x.device).to(h.dtype)[None]
        valid = torch.arange(tokens, device=x.device)[None, :] * p < lengths[:, None]
        h = self.blocks(h, src_key_padding_mask=~valid)
        return self.norm(h), valid
