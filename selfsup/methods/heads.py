"""Heads that sit on top of an encoder during pre-training and are thrown away afterwards."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import SelfsupError


class ProjectionHead(nn.Sequential):
    """MLP ``(Linear -> [BatchNorm] -> ReLU) x (layers - 1) -> Linear [-> BatchNorm]``.

    SimCLR's non-linear projection g(h) (Chen et al. 2020, sec. 4.2): the loss is better applied
    after such a head, while the representation before it (h) transfers better. The same shape,
    sized differently, is MoCo v2's head (no BatchNorm), BYOL's and MoCo v3's projector, and
    Barlow Twins' and VICReg's 3-layer "expander". ``last_batch_norm`` adds a BatchNorm without
    affine parameters after the output layer, as MoCo v3 does (Chen, Xie, He 2021, sec. 4).
    Linear layers followed by BatchNorm have no bias (BatchNorm removes it anyway).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        if layers < 1:
            raise ValueError("a projection head needs at least one layer")
        modules: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            modules.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                modules.append(nn.BatchNorm1d(hidden_dim))
            modules.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        modules.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
        if last_batch_norm:
            modules.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*modules)


class PredictionHead(ProjectionHead):
    """BYOL's predictor q (Grill et al. 2020, sec. 3.1): Linear -> BatchNorm -> ReLU -> Linear,
    ``dim -> hidden_dim -> dim``, on the online branch only.

    The asymmetry it creates between the online and the target branch is what keeps BYOL and
    MoCo v3 from collapsing to a constant without negatives.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__(dim, hidden_dim, dim, layers=2)


class DINOHead(nn.Module):
    """DINO's head (Caron et al. 2021, sec. 3.1 and appendix): a 3-layer MLP with GELU to a
    ``bottleneck_dim`` vector, L2-normalised, then a weight-normalised linear layer to
    ``out_dim`` prototype scores.

    The last layer's rows are normalised to length 1 on every call: weight normalisation with
    its gain frozen at 1, the paper's default (``norm_last_layer``), which it found to stabilise
    training. The scores are cosines, later divided by temperatures as low as 0.04, so they are
    computed in float32 even under bf16 autocast (a bf16 cosine is off by up to ~0.004).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        layers: int = 3,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError("a DINO head needs at least one MLP layer")
        modules: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            modules += [nn.Linear(dim, hidden_dim), nn.GELU()]
            dim = hidden_dim
        modules.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*modules)
        self.prototypes = nn.Linear(bottleneck_dim, out_dim, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.mlp(features)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.normalize(x.float(), dim=-1)
            return F.linear(x, F.normalize(self.prototypes.weight.float(), dim=1))


class SentenceDecoder(nn.Module):
    """A causal Transformer decoder whose cross-attention memory is one vector per text
    (TSDAE's light decoder: the text is rebuilt from its sentence vector alone)."""

    def __init__(self, dim: int, layers: int, heads: int, max_length: int) -> None:
        super().__init__()
        self.positions = nn.Embedding(max_length, dim)
        self.norm = nn.LayerNorm(dim)
        layer = nn.TransformerDecoderLayer(dim, heads, 4 * dim, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(dim))

    def forward(self, inputs: torch.Tensor, padding: torch.Tensor, sentence: torch.Tensor
                ) -> torch.Tensor:
        """States (B, T, D) from input embeddings (B, T, D), True where padded, and the
        sentence vectors (B, D): the memory is (B, 1, D)."""
        length = inputs.shape[1]
        x = self.norm(inputs + self.positions(torch.arange(length, device=inputs.device)))
        causal = torch.ones(length, length, dtype=torch.bool, device=inputs.device).triu(1)
        return self.layers(x, sentence.unsqueeze(1).to(x.dtype), tgt_mask=causal,
                           tgt_is_causal=True, tgt_key_padding_mask=padding)


def tied_decoder(model: nn.Module) -> nn.Module:
    """A causal copy of a ``transformers`` encoder with cross-attention added, sharing every
    weight of ``model`` (TSDAE's tie, Wang et al. 2021): only the cross-attention is new."""
    config = copy.deepcopy(model.config)
    config.is_decoder, config.add_cross_attention = True, True
    decoder = type(model)(config)
    if getattr(model, "pooler", 0) is None:  # built without one: no unused weights
        decoder.pooler = None
    new = set(dict(decoder.named_parameters())) - set(dict(model.named_parameters()))
    if not new:
        raise SelfsupError(f"a tied decoder: {type(model).__name__} has no cross-attention")
    for name, weight in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        setattr(decoder.get_submodule(owner), leaf, weight)
    return decoder
