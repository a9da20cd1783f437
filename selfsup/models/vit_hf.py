"""selfsup's ViT as ``transformers``' ``ViTModel`` and back: one architecture, two weight layouts.

Both are pre-norm ViTs with a class token, biased query/key/value/output projections, an exact-GELU
MLP and a final LayerNorm, so a conversion renames weights and splits (or fuses) the query, key
and value matrices. Two differences are folded into the weights rather than the code:

- ``ViTModel`` adds a learned position to the class token too; selfsup's class token has none.
  Exporting gives it a zero position; importing adds the pretrained one to the class token
  (exact: the class token is the same vector in every image).
- selfsup's sin-cos positions are computed, not stored; they are exported as ``ViTModel``'s
  learned table at the grid of the run's image size, and an imported table stays a learned
  one.

Pixels: selfsup's encoders take images in [0, 1] and normalise with their own mean and std;
``ViTModel`` takes pixels its image processor has already normalised (``preprocessor_config.json``
holds the same mean and std), so the two give the same class-token embedding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from selfsup.errors import SelfsupError
from selfsup.models.hf_text import quiet_transformers
from selfsup.models.vit import VisionTransformer

# transformers 5's module names for layer ``{i}`` (checkpoints on disk keep the 4.x names;
# transformers converts them when it loads and saves).
_LAYER = {
    "ln1": "layers.{i}.layernorm_before", "ln2": "layers.{i}.layernorm_after",
    "q": "layers.{i}.attention.q_proj", "k": "layers.{i}.attention.k_proj",
    "v": "layers.{i}.attention.v_proj", "proj": "layers.{i}.attention.o_proj",
    "fc1": "layers.{i}.mlp.fc1", "fc2": "layers.{i}.mlp.fc2",
}
_OWN = {"ln1": "ln1", "ln2": "ln2", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def hf_config(encoder: VisionTransformer, image_size: int) -> Any:
    """The ``ViTConfig`` of ``encoder``'s architecture at ``image_size`` (the images it will
    read; no dropout, its LayerNorm epsilon)."""
    from transformers import ViTConfig

    width = encoder.embed_dim
    return ViTConfig(
        hidden_size=width, num_hidden_layers=len(encoder.blocks),
        num_attention_heads=encoder.blocks[0].attn.heads if len(encoder.blocks) else 1,
        intermediate_size=int(width * encoder.mlp_ratio), hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        layer_norm_eps=encoder.ln.eps, image_size=image_size,
        patch_size=encoder.patch_size, num_channels=encoder.patch_embed.in_channels,
        qkv_bias=True,
    )


def to_hf_state(encoder: VisionTransformer, image_size: int) -> dict[str, torch.Tensor]:
    """``encoder``'s weights under ``ViTModel``'s names (transformers 5), its positions those
    it gives a grid of ``image_size`` pixels (another size than its reference one, too)."""
    width = encoder.embed_dim
    grid = image_size // encoder.patch_size
    positions = encoder.positions(grid, grid).detach()
    state = {
        "embeddings.cls_token": encoder.cls_token,
        "embeddings.position_embeddings": torch.cat(
            [torch.zeros(1, 1, width), positions.to(torch.float32)], dim=1),
        "embeddings.patch_embeddings.projection.weight": encoder.patch_embed.weight,
        "embeddings.patch_embeddings.projection.bias": encoder.patch_embed.bias,
        "layernorm.weight": encoder.ln.weight, "layernorm.bias": encoder.ln.bias,
    }
    for i, block in enumerate(encoder.blocks):
        own = block.state_dict()
        for key, name in _OWN.items():
            for part in ("weight", "bias"):
                state[f"{_LAYER[key].format(i=i)}.{part}"] = own[f"{name}.{part}"]
        for part in ("weight", "bias"):
            for key, tensor in zip("qkv", own[f"attn.qkv.{part}"].split(width), strict=True):
                state[f"{_LAYER[key].format(i=i)}.{part}"] = tensor
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def vit_options(config: Any) -> dict[str, Any]:
    """The ``VisionTransformer`` arguments (but mean and std) of a ``ViTConfig``'s network;
    a clear error for what selfsup's ViT cannot express."""
    size, patch = config.image_size, config.patch_size
    if isinstance(size, list | tuple):
        size = size[0] if len(set(size)) == 1 else None
    if isinstance(patch, list | tuple):
        patch = patch[0] if len(set(patch)) == 1 else None
    if size is None or patch is None:
        raise SelfsupError("--init: only square ViT images and patches can be read")
    if config.hidden_act != "gelu":
        raise SelfsupError(f"--init: a ViT with hidden_act {config.hidden_act!r} cannot be read "
                           "(selfsup's ViT uses the exact GELU, 'gelu')")
    width = config.hidden_size
    return {"in_channels": config.num_channels, "patch_size": patch, "width": width,
            "depth": config.num_hidden_layers, "heads": config.num_attention_heads,
            "mlp_ratio": config.intermediate_size / width, "image_size": size,
            "pos_embed": "learned", "norm_eps": config.layer_norm_eps}


def from_hf_model(model: Any, mean: list[float], std: list[float]) -> VisionTransformer:
    """A selfsup ViT holding ``model``'s (a ``ViTModel``'s) weights, normalising with
    ``mean`` and ``std`` as its image processor did."""
    encoder = VisionTransformer(**vit_options(model.config), mean=mean, std=std)
    encoder.load_state_dict(from_hf_state(model.state_dict(), encoder))
    return encoder


def from_hf_state(hf: dict[str, torch.Tensor], encoder: VisionTransformer
                  ) -> dict[str, torch.Tensor]:
    """``ViTModel`` weights (transformers 5's names) under ``encoder``'s names."""
    first = _LAYER["q"].format(i=0) + ".weight"
    if len(encoder.blocks) and first not in hf:  # transformers 4 named its modules otherwise
        raise SelfsupError(f"--init: the ViT's weights lack {first}; reading a transformers "
                           "ViT needs transformers 5 or later")
    positions = hf["embeddings.position_embeddings"]
    state = dict(encoder.state_dict())  # the mean and std buffers stay as built
    state.update({
        "cls_token": hf["embeddings.cls_token"] + positions[:, :1],
        "pos_table": positions[:, 1:],
        "patch_embed.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "ln.weight": hf["layernorm.weight"], "ln.bias": hf["layernorm.bias"],
    })
    width = encoder.embed_dim
    for i in range(len(encoder.blocks)):
        for key, name in _OWN.items():
            for part in ("weight", "bias"):
                state[f"blocks.{i}.{name}.{part}"] = hf[f"{_LAYER[key].format(i=i)}.{part}"]
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat(
            [hf[f"{_LAYER[key].format(i=i)}.weight"] for key in "qkv"])
        biases = [hf.get(f"{_LAYER[key].format(i=i)}.bias") for key in "qkv"]
        state[f"blocks.{i}.attn.qkv.bias"] = torch.cat(
            [torch.zeros(width) if bias is None else bias for bias in biases])
    return state


def read_hf_config(folder: str | Path) -> Any:
    """The ``ViTConfig`` of a transformers ViT folder, without its weights."""
    from transformers import ViTConfig

    quiet_transformers()
    try:
        return ViTConfig.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise _unreadable(folder, error) from None


def _unreadable(folder: str | Path, error: Exception) -> SelfsupError:
    return SelfsupError(f"--init {folder}: not a readable transformers ViT folder "
                        f"({str(error).splitlines()[0][:200]})")


def read_hf_vit(folder: str | Path) -> VisionTransformer:
    """A transformers ViT folder (``ViTModel`` or ``ViTForImageClassification``) as selfsup's
    ViT; its ``preprocessor_config.json`` gives the mean and std (else ViT's 0.5 and 0.5)."""
    from transformers import ViTModel

    quiet_transformers()
    folder = Path(folder)
    processor = folder / "preprocessor_config.json"
    try:
        settings = json.loads(processor.read_text()) if processor.is_file() else {}
        model = ViTModel.from_pretrained(folder, add_pooling_layer=False)
    except (OSError, ValueError) as error:
        raise _unreadable(folder, error) from None
    channels = model.config.num_channels
    mean = list(settings.get("image_mean") or [0.5] * channels)
    std = list(settings.get("image_std") or [0.5] * channels)
    return from_hf_model(model.eval(), mean, std)


__all__ = ["from_hf_model", "from_hf_state", "hf_config", "read_hf_config", "read_hf_vit",
           "to_hf_state", "vit_options"]
