"""A small Vision Transformer (Dosovitskiy et al. 2021), sized for 32x32 images and CPU budgets.

Patches of ``patch_size`` pixels (4 for 32x32 images: an 8x8 grid, as ViT-on-CIFAR setups use)
are linearly embedded, a class token is prepended, pre-norm blocks (LayerNorm -> attention,
LayerNorm -> MLP, each residual) mix them, and the class token after a final LayerNorm is the
embedding. Attention goes through ``F.scaled_dot_product_attention``, which picks the fastest
kernel available.

Positions: fixed 2-D sin-cos embeddings by default (MoCo v3, Chen, Xie, He 2021, sec. 5, found
them as good as learned ones, and they need no weights), or a learned table (``pos_embed=
"learned"``). Either way a grid that differs from the reference one (``image_size //
patch_size``), e.g. DINO's small local crops, is mapped onto the same coordinate range, as
DINO does by interpolating its learned table: a local crop reads as the whole view, coarser.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.models.base import ImageEncoder
from selfsup.models.registry import ENCODERS


class Attention(nn.Module):
    """Multi-head self-attention: one linear map to queries, keys and values, one back."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, tokens, head_dim)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(batch, tokens, width))


class MLP(nn.Module):
    """Linear -> GELU -> Linear, ``mlp_ratio`` times wider in the middle."""

    def __init__(self, width: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = Attention(width, heads)
        self.ln2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C): non-overlapping p x p patches, row-major over the grid,
    each flattened pixel-row by pixel-row with the channels innermost (MAE's layout)."""
    batch, channels, height, width = images.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
    rows, cols = height // p, width // p
    x = images.reshape(batch, channels, rows, p, cols, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * cols, p * p * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: (B, N, p*p*C) -> (B, C, H, W)."""
    batch, count, size = patches.shape
    p = patch_size
    rows, cols = height // p, width // p
    if rows * cols != count or size % (p * p):
        raise ValueError(
            f"{count} patches of {size} values do not tile a {height}x{width} image with "
            f"patch size {p}"
        )
    channels = size // (p * p)
    x = patches.reshape(batch, rows, cols, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, height, width)


def sincos_2d(rows: torch.Tensor, cols: torch.Tensor, width: int) -> torch.Tensor:
    """(len(rows) * len(cols), width) 2-D sin-cos embeddings of grid coordinates, row-major:
    a quarter of the channels each for sin/cos of the row and of the column, at frequencies
    1 / 10000^(i / (width/4)) (Vaswani et al. 2017, per axis)."""
    if width % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, not {width}")
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, device=rows.device) / quarter)
    y, x = torch.meshgrid(rows.float(), cols.float(), indexing="ij")
    y = y.reshape(-1, 1) * omega
    x = x.reshape(-1, 1) * omega
    return torch.cat([torch.sin(y), torch.cos(y), torch.sin(x), torch.cos(x)], dim=1)


class VisionTransformer(ImageEncoder):
    """ViT with a class token; ``forward`` returns the class token's (B, width) embedding."""

    def __init__(
        self,
        in_channels: int = 3,
        patch_size: int = 4,
        width: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        image_size: int = 32,
        pos_embed: str = "sincos",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(in_channels, mean, std)
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', not {pos_embed!r}")
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} (the reference size of the position embeddings) is "
                f"not a multiple of patch_size {patch_size}"
            )
        self.patch_size = patch_size
        self.grid = image_size // patch_size  # the reference grid that positions are scaled to
        self.embed_dim = width
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        if pos_embed == "learned":
            self.pos_table = nn.Parameter(torch.zeros(1, self.grid * self.grid, width))
            nn.init.trunc_normal_(self.pos_table, std=0.02)
        else:
            self.register_parameter("pos_table", None)
        self.mlp_ratio = mlp_ratio
        self.blocks = nn.Sequential(
            *(Block(width, heads, mlp_ratio, norm_eps) for _ in range(depth))
        )
        self.ln = nn.LayerNorm(width, eps=norm_eps)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def positions(self, rows: int, cols: int) -> torch.Tensor:
        """(1, rows*cols, width) position embeddings of a rows x cols patch grid."""
        if self.pos_table is not None:
            table = self.pos_table
            if (rows, cols) == (self.grid, self.grid):
                return table
            square = table.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
            resized = F.interpolate(square, size=(rows, cols), mode="bicubic", align_corners=False)
            return resized.flatten(2).transpose(1, 2)
        # Patch centres in reference-grid units: the same span whatever the grid's size.
        device = self.cls_token.device
        y = (torch.arange(rows, device=device) + 0.5) * (self.grid / rows) - 0.5
        x = (torch.arange(cols, device=device) + 0.5) * (self.grid / cols) - 0.5
        return sincos_2d(y, x, self.embed_dim).unsqueeze(0)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All tokens after the final LayerNorm, (B, 1 + patches, width); index 0 is the class
        token."""
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size "
                f"{self.patch_size}"
            )
        x = self.patch_embed(self.normalise(images))  # (B, width, rows, cols)
        rows, cols = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self.positions(rows, cols).to(x.dtype)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return self.ln(self.blocks(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens(images)[:, 0]

    # --- masked image modelling (MAE) ----------------------------------------------------

    def embed_patch_pixels(self, patches: torch.Tensor) -> torch.Tensor:
        """Embed already-cut, normalised pixel patches (B, K, p*p*C in ``patchify`` order) with
        the patch-embedding weights: the same map as ``patch_embed`` applied to those patches
        alone, so that pixels of patches left out never enter the encoder."""
        weight = self.patch_embed.weight.permute(0, 2, 3, 1).flatten(1)  # (width, p*p*C)
        return F.linear(patches, weight.to(patches.dtype), self.patch_embed.bias)

    def encode_subset(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1 + K, width) after the final LayerNorm, computed from the class token and
        the K patches whose row-major grid indices are in ``keep`` (B, K) only.

        This is MAE's encoder (He et al. 2022, sec. 3): positions are added before the subset
        is taken, and the blocks run on 1 + K tokens rather than 1 + all, which is where the
        masking saves its compute.
        """
        rows, cols = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        patches = patchify(self.normalise(images), self.patch_size)  # (B, N, p*p*C)
        index = keep.unsqueeze(-1)
        visible = torch.gather(patches, 1, index.expand(-1, -1, patches.shape[-1]))
        x = self.embed_patch_pixels(visible)
        positions = self.positions(rows, cols).to(x.dtype).expand(x.shape[0], -1, -1)
        x = x + torch.gather(positions, 1, index.expand(-1, -1, x.shape[-1]))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return self.ln(self.blocks(x))


# The general form, every size an option: what a transformers ViT folder given to --init is
# rebuilt as (selfsup/models/vit_hf.py), e.g. width 768, depth 12, heads 12, patch 16, 224.
ENCODERS.register("vit")(VisionTransformer)


@ENCODERS.register("vit_tiny")
def vit_tiny(
    in_channels: int = 3, width: int = 192, depth: int = 12, heads: int = 3, **options
) -> VisionTransformer:
    """ViT-Tiny (DeiT, Touvron et al. 2021): width 192, 12 blocks, 3 heads; patch 4 for 32x32."""
    return VisionTransformer(in_channels, width=width, depth=depth, heads=heads, **options)


@ENCODERS.register("vit_small")
def vit_small(
    in_channels: int = 3, width: int = 384, depth: int = 12, heads: int = 6, **options
) -> VisionTransformer:
    """ViT-Small (DeiT): width 384, 12 blocks, 6 heads; patch 4 for 32x32."""
    return VisionTransformer(in_channels, width=width, depth=depth, heads=heads, **options)


def is_vit(encoder: nn.Module) -> bool:
    """Whether a method should use its paper's ViT settings rather than its ResNet ones."""
    return isinstance(encoder, VisionTransformer)


__all__ = [
    "VisionTransformer",
    "is_vit",
    "patchify",
    "sincos_2d",
    "unpatchify",
    "vit_small",
    "vit_tiny",
]
