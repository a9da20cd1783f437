"""Export an image run's encoder to a folder that loads without selfsup.

The folder holds, for every image encoder:

- ``encoder.pt2``: the encoder as a ``torch.export`` program. ``torch.export.load(path).module()``
  runs it with PyTorch alone: float RGB images in [0, 1], (B, C, S, S) at the run's image size,
  in; one embedding per image out (the normalisation is inside).
- ``encoder.json`` + ``encoder.safetensors``: selfsup's own form, which ``selfsup.load`` and
  ``selfsup pretrain IMAGE_METHOD --init`` read.

and for a ViT also a ``transformers`` folder (``config.json``, ``model.safetensors``,
``preprocessor_config.json``): ``AutoModel`` + ``AutoImageProcessor`` give the same class-token
embedding (selfsup/models/vit_hf.py). selfsup's CIFAR-stem ResNets (a 3x3 stride-1 stem, no
max-pool) have no ``transformers`` class, so they leave in the first two forms. A ``README.md``
in the folder says how to load each.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from selfsup import atomic
from selfsup.errors import SelfsupError
from selfsup.export.hf import check_out_folder
from selfsup.models.hf_text import quiet_transformers
from selfsup.models.vit import VisionTransformer
from selfsup.models.vit_hf import hf_config, to_hf_state
from selfsup.run import as_run, load_encoder

PROGRAM = "encoder.pt2"


def export_image(run_path: str | Path, out: str | Path) -> Path:
    """Write the image run's encoder to ``out`` (see the module docstring); return the path."""
    run = as_run(run_path)
    encoder, spec = load_encoder(run)
    if spec.get("modality", "image") != "image":
        raise SelfsupError(f"{run.path} holds a {spec.get('modality')} encoder, not an image one")
    check_out_folder(out)
    try:
        size, channels = int(spec["image_size"]), int(spec["channels"])
    except (KeyError, TypeError, ValueError):
        raise SelfsupError(f"{run.encoder_spec}: an image encoder needs 'image_size' and "
                           "'channels'") from None
    # A dynamic batch: one program for any number of images (PyTorch specialises sizes 0 and 1
    # when tracing, so the example batch is 2).
    example = torch.rand(2, channels, size, size)
    program = torch.export.export(encoder, (example,),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    vit = isinstance(encoder, VisionTransformer)
    with atomic.atomic_folder(out) as staging:
        shutil.copyfile(run.encoder_spec, staging / "encoder.json")
        shutil.copyfile(run.encoder_weights, staging / "encoder.safetensors")
        torch.export.save(program, staging / PROGRAM)
        if vit:
            _save_transformers(encoder, size, staging)
        (staging / "README.md").write_text(model_card(spec, vit), encoding="utf-8")
    return Path(out)


def _save_transformers(encoder: VisionTransformer, size: int, folder: Path) -> None:
    """``ViTModel`` weights and config, and the image processor that feeds it as selfsup does."""
    from transformers import ViTImageProcessor, ViTModel

    quiet_transformers()
    model = ViTModel(hf_config(encoder, size), add_pooling_layer=False)
    model.load_state_dict(to_hf_state(encoder, size))
    model.save_pretrained(folder)
    ViTImageProcessor(
        do_resize=True, size={"height": size, "width": size}, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True,
        image_mean=encoder.mean.flatten().tolist(), image_std=encoder.std.flatten().tolist(),
    ).save_pretrained(folder)


def model_card(spec: dict, vit: bool) -> str:
    """The folder's README: what the encoder is and how to load it in each form."""
    size, channels, dim = spec["image_size"], spec["channels"], spec["embed_dim"]
    kind = "RGB" if channels == 3 else f"{channels}-channel"
    card = [
        f"# {spec['name']} image encoder, pre-trained with selfsup ({spec.get('method')})",
        "",
        f"Input: {kind} images, {size}x{size}, float in [0, 1] (the encoder normalises them "
        f"itself). Output: one {dim}-d embedding per image.",
        "",
        "## PyTorch alone",
        "",
        "```python",
        "import torch",
        "",
        'encoder = torch.export.load("encoder.pt2").module()',
        f"images = torch.rand(8, {channels}, {size}, {size})  # your images, in [0, 1]",
        f"embeddings = encoder(images)  # (8, {dim})",
        "```",
        "",
    ]
    if vit:
        card += [
            "## transformers",
            "",
            "```python",
            "from transformers import AutoImageProcessor, AutoModel",
            "",
            'processor = AutoImageProcessor.from_pretrained(".")',
            'model = AutoModel.from_pretrained(".", add_pooling_layer=False)',
            'inputs = processor(images=pil_images, return_tensors="pt")',
            "embeddings = model(**inputs).last_hidden_state[:, 0]  # the class token",
            "```",
            "",
        ]
    card += [
        "## selfsup",
        "",
        '`selfsup.load(".").embed(images)` embeds image files, PIL images or uint8 arrays; '
        "`selfsup pretrain METHOD --init .` continues its pre-training on other images.",
        "",
    ]
    return "\n".join(card)


__all__ = ["export_image", "model_card"]
