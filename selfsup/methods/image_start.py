"""Image methods started from an existing encoder: ``--init`` (and CLIP's ``image_init``).

A user with a pretrained image model continues its pre-training on their own images rather than
starting from random weights. Two kinds of folder are read:

- a selfsup image encoder: a run folder or a ``selfsup export`` folder (``encoder.json`` +
  ``encoder.safetensors``), rebuilt by its registered name and options;
- a ``transformers`` ViT folder (``model_type: vit``, e.g. a ``ViTModel`` or
  ``ViTForImageClassification`` saved with ``save_pretrained``), rebuilt as selfsup's ``vit``
  (selfsup/models/vit_hf.py).

The architecture comes from the folder's JSON (``start_config`` fills ``--encoder`` and its
options before the data is read); the weights, and the normalisation the encoder was trained
with (its ``mean``/``std`` buffers), are read once, when the method is built
(``load_image_start``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from selfsup.config import PretrainConfig
from selfsup.errors import SelfsupError
from selfsup.models import DATA_SET_OPTIONS
from selfsup.models.vit_hf import read_hf_config, read_hf_vit, vit_options
from selfsup.run import RunDir, load_encoder, read_encoder_spec


@dataclass(frozen=True)
class ImageStart:
    """What a starting folder holds, read from its JSON alone (no weights)."""

    name: str  # the registered encoder
    options: dict[str, Any]  # its architecture options (DATA_SET_OPTIONS left out)
    channels: int
    image_size: int | None  # the size it was trained at, where the folder says
    transformers: bool  # a transformers ViT folder, not a selfsup one


def read_image_start(path: str | Path, flag: str = "--init") -> ImageStart:
    """The encoder in ``path``, or a message saying what the folder should hold."""
    folder = Path(path)
    if not folder.is_dir():
        raise SelfsupError(f"{flag} {folder}: not a folder")
    if (folder / "encoder.json").is_file():
        spec = read_encoder_spec(RunDir(folder))
        if spec.get("modality", "image") != "image":
            raise SelfsupError(f"{flag} {folder} holds a {spec['modality']} encoder; an image "
                               "method starts from an image encoder")
        options = spec.get("options", {})
        return ImageStart(spec["name"],
                          {k: v for k, v in options.items() if k not in DATA_SET_OPTIONS},
                          int(spec.get("channels") or options.get("in_channels") or 3),
                          spec.get("image_size"), transformers=False)
    config = folder / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise SelfsupError(f"{flag} {config} is damaged (not a JSON object)") from None
        if model_type != "vit":
            raise SelfsupError(f"{flag} {folder} is a transformers {model_type!r} model; image "
                               "methods read ViT folders (model_type 'vit') and selfsup exports")
        options = vit_options(read_hf_config(folder))
        channels = options.pop("in_channels")
        return ImageStart("vit", options, channels, options["image_size"], transformers=True)
    raise SelfsupError(
        f"{flag} {folder}: neither a selfsup image encoder (encoder.json + encoder.safetensors: "
        "a run or a `selfsup export` folder) nor a transformers ViT folder (config.json)"
    )


def start_config(config: PretrainConfig, start: ImageStart, flag: str = "--init"
                 ) -> PretrainConfig:
    """``config`` with the starting encoder's architecture (the user's options win)."""
    if config.encoder is not None and config.encoder != start.name:
        raise SelfsupError(f"{flag} holds a {start.name} encoder but --encoder is "
                           f"{config.encoder}; leave --encoder out to use its own")
    return dataclasses.replace(config, encoder=start.name,
                               encoder_options={**start.options, **config.encoder_options})


def load_image_start(encoder: nn.Module, path: str | Path, channels: int | None,
                     flag: str = "--init") -> ImageStart:
    """Copy the starting weights (and input statistics) in ``path`` into ``encoder``."""
    start = read_image_start(path, flag)
    if channels is not None and channels != start.channels:
        raise SelfsupError(f"{flag} {path} reads {start.channels}-channel images; the data "
                           f"has {channels} channel(s)")
    source = read_hf_vit(path) if start.transformers else load_encoder(RunDir(Path(path)))[0]
    try:
        encoder.load_state_dict(source.state_dict())
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise SelfsupError(
            f"{flag} {path}: its {start.name} encoder (options {start.options}) does not fit "
            f"this run's encoder ({first}); leave --encoder-option out to use its own"
        ) from None
    return start


__all__ = ["ImageStart", "load_image_start", "read_image_start",
           "start_config"]
