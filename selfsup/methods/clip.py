"""CLIP: align images and their captions in one embedding space.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision":
an image tower and a text tower, each followed by a linear projection into a shared space, and
a symmetric InfoNCE loss over the batch (each image must pick its caption, each caption its
image) with a learnable temperature, its logit scale clamped at 100. Once aligned, class names
written as captions ("a photo of a {label}.") classify images zero-shot, and text finds images.

Towers:

* image: any registered image encoder (``--encoder``, default resnet_small), from scratch or
  initialised from a selfsup image run (``image_init``), and optionally locked: LiT (Zhai et
  al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning") freezes a pre-trained
  image tower and trains only the rest. On a CPU that is the cheap choice: a locked tower runs
  forward only, without augmentation each image's features are computed once and cached, and
  the image representation learnt by self-supervision is kept intact.
* text: a local Hugging Face encoder folder (``text_init``, e.g. MiniLM), or a small BERT
  trained from scratch with a WordPiece vocabulary learnt on the captions. A pre-trained text
  tower is locked by default (``lock_text``): the engine has one learning rate, and fine-tuning
  on a few captions would overwrite the word meanings that let unseen class names work; the
  linear text projection still learns where captions go in the shared space.

Rows that share an image or a caption (captions built from labels repeat) are positives of
each other rather than false negatives (``dedup_positives``; see ``clip_loss``).

After training the run holds, beside the image tower (``encoder.safetensors``): the text tower
(``text_encoder.safetensors`` + ``text_encoder.json``), its ``tokenizer.json``, and the
projections and temperature (``clip.safetensors`` + ``clip.json``); ``selfsup.load`` of the
run then embeds both images and text in the shared space (selfsup/loading.py).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import nn

from selfsup import atomic
from selfsup.augment import to_float_images
from selfsup.errors import SelfsupError
from selfsup.methods.base import ImageMethod, StepOutput
from selfsup.methods.image_start import load_image_start, read_image_start, start_config
from selfsup.methods.losses import clip_loss
from selfsup.methods.registry import METHODS
from selfsup.models.hf_text import (
    HFTextEncoder,
    load_hf_tokenizer,
    small_bert_config,
    tokenize,
    wordpiece_tokenizer,
)
from selfsup.run import HEADS_SPEC, HEADS_WEIGHTS, TEXT_SPEC, TEXT_WEIGHTS, TOKENIZER, RunDir

if TYPE_CHECKING:
    from selfsup.config import PretrainConfig
    from selfsup.data.base import DataInfo



@dataclass
class CLIPOptions:
    text_init: str | None = None  # a Hugging Face model folder; None: a small BERT from scratch
    image_init: str | None = None  # an image encoder folder (as --init reads) starts the tower
    lock_image: bool = False  # LiT: the image tower frozen (eval mode, no gradients)
    lock_text: bool | None = None  # None: locked when text_init is given, trained otherwise
    embed_dim: int = 128  # the shared space
    init_temperature: float = 0.07  # Radford et al. 2021, sec. 2.5
    max_logit_scale: float = 100.0  # 1 / the smallest temperature (their clamp)
    max_caption_tokens: int = 32  # captions are cut here (special tokens included)
    # The from-scratch text tower: WordPiece vocabulary learnt on the captions, BERT size.
    vocab_size: int = 4096
    text_dim: int = 256
    text_layers: int = 4
    text_heads: int = 4
    image_augment: bool | None = None  # None: augment unless the image tower is locked
    cache_features: bool = True  # a locked tower's features of an image/caption computed once
    dedup_positives: bool = True  # rows sharing an image or a caption are positives

    def validate(self) -> None:
        if self.embed_dim < 1:
            raise SelfsupError(f"embed_dim must be positive, not {self.embed_dim}")
        if self.init_temperature <= 0:
            raise SelfsupError(f"init_temperature must be positive, not {self.init_temperature}")
        if self.max_logit_scale < 1:
            raise SelfsupError(f"max_logit_scale must be at least 1, not {self.max_logit_scale}")
        if 1 / self.init_temperature > self.max_logit_scale:
            raise SelfsupError(
                f"init_temperature {self.init_temperature} is below 1/max_logit_scale "
                f"({1 / self.max_logit_scale:g})"
            )
        if self.max_caption_tokens < 3:
            raise SelfsupError(
                f"max_caption_tokens must be at least 3, not {self.max_caption_tokens}"
            )


@METHODS.register("clip")
class CLIP(ImageMethod):
    """Two towers, linear projections, symmetric InfoNCE with a clamped learnable temperature."""

    Options: ClassVar[type] = CLIPOptions
    supports_init: ClassVar[bool] = False  # two towers: method options image_init, text_init
    # modality and config defaults: selfsup/catalog.py (what --help shows without torch)
    # Light augmentation: a caption may name colours and positions, so no colour jitter, no
    # grayscale, and crops that keep most of the image (CLIP itself used a random square crop).
    augment_defaults: ClassVar[dict[str, Any]] = {
        "crop_scale": (0.6, 1.0), "jitter_p": 0.0, "grayscale_p": 0.0,
    }

    def __init__(self, encoder, info, options=None, augment_options=None, channels_last=False):
        super().__init__(encoder, info, options, augment_options, channels_last)
        opts: CLIPOptions = self.options
        opts.validate()
        captions = info.extra.get("captions")
        if captions is None:
            raise SelfsupError("method 'clip' trains on paired images and captions")
        if opts.image_init:
            load_image_init(self.encoder, opts.image_init, info)
        self.text_encoder, self.tokenizer = build_text_tower(opts, captions)
        self.lock_image = opts.lock_image
        self.lock_text = opts.lock_text if opts.lock_text is not None else bool(opts.text_init)
        if self.lock_image:
            self.encoder.requires_grad_(False)
        if self.lock_text:
            self.text_encoder.requires_grad_(False)
        if self.lock_image or self.lock_text:  # locked towers are in eval mode on purpose
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start")
        self.augment_images = (
            opts.image_augment if opts.image_augment is not None else not self.lock_image
        )
        self.image_projection = nn.Linear(self.encoder.embed_dim, opts.embed_dim, bias=False)
        self.text_projection = nn.Linear(self.text_encoder.embed_dim, opts.embed_dim, bias=False)
        nn.init.normal_(self.image_projection.weight, std=self.encoder.embed_dim**-0.5)
        nn.init.normal_(self.text_projection.weight, std=self.text_encoder.embed_dim**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / opts.init_temperature)))
        self.max_length = min(opts.max_caption_tokens, self.text_encoder.max_length)

        ids, mask, _ = tokenize(self.tokenizer, captions, self.max_length)
        # Every distinct caption tokenized once; not weights, so not in the state dict.
        self.register_buffer("caption_tokens", ids, persistent=False)
        self.register_buffer("caption_mask", mask, persistent=False)
        self._image_cache: dict[str, torch.Tensor] = {}
        self._text_cache: dict[str, torch.Tensor] = {}
        self.image_count = int(info.extra.get("image_count", 0))

    # ------------------------------------------------------------------------ towers ----

    def train(self, mode: bool = True) -> CLIP:
        """Locked towers stay in eval mode (BatchNorm statistics, dropout) while the rest trains."""
        super().train(mode)
        if self.lock_image:
            self.encoder.eval()
        if self.lock_text:
            self.text_encoder.eval()
        return self

    def scale(self) -> torch.Tensor:
        """The logit scale exp(t), never above ``max_logit_scale``."""
        return self.logit_scale.clamp(max=math.log(self.options.max_logit_scale)).exp()

    def image_features(
        self, images: torch.Tensor, image_ids: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor:
        """Image-tower features (B, D_image): cached when the tower is locked and unaugmented."""
        cache = (self.lock_image and not self.augment_images and self.options.cache_features
                 and image_ids is not None and self.image_count > 0)
        if cache:
            return self._cached("_image_cache", self.image_count, image_ids,
                                lambda rows: self.encoder(self._float(images[rows])))
        x = self.views(images, 1, generator) if self.augment_images else self._float(images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.lock_image):
            return self.encoder(x)

    def text_features(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """Text-tower features (B, D_text) of captions by id: cached when the tower is locked."""
        if self.lock_text and self.options.cache_features:
            return self._cached("_text_cache", len(self.caption_tokens), caption_ids,
                                lambda rows: self._encode_captions(caption_ids[rows]))
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.lock_text):
            return self._encode_captions(caption_ids)

    def _encode_captions(self, caption_ids: torch.Tensor) -> torch.Tensor:
        ids, mask = self.caption_tokens[caption_ids], self.caption_mask[caption_ids]
        width = max(1, int(mask.sum(dim=1).max()))  # no padding beyond the batch's longest
        return self.text_encoder(ids[:, :width], mask[:, :width])

    def _float(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float_images(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def _cached(self, name: str, size: int, ids: torch.Tensor, compute) -> torch.Tensor:
        """Rows ``ids`` of a feature table filled on first use (a locked tower is a function)."""
        table = getattr(self, name)
        if "values" not in table:
            table["filled"] = torch.zeros(size, dtype=torch.bool)
        ids_cpu = ids.cpu()
        missing = (~table["filled"][ids_cpu]).nonzero().flatten()
        if len(missing):
            rows = missing.to(ids.device)
            values = compute(rows).float()
            if "values" not in table:
                table["values"] = torch.zeros(size, values.shape[1], device=values.device)
            table["values"][ids[rows]] = values
            table["filled"][ids_cpu[missing]] = True
        return table["values"][ids]

    # ------------------------------------------------------------------------ training ----

    def embed_pair(
        self, images: torch.Tensor, image_ids: torch.Tensor | None, caption_ids: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected (not yet normalised) image and caption embeddings of a batch of rows."""
        image = self.image_projection(self.image_features(images, image_ids, generator))
        text = self.text_projection(self.text_features(caption_ids))
        return image, text

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        image_ids, caption_ids = batch.get("image_ids"), batch["captions"]
        # Lightning restores each submodule's recorded mode rather than calling train(), so a
        # locked tower is put back in eval mode here (BatchNorm statistics, dropout).
        self.train(self.training)
        image, text = self.embed_pair(batch["images"], image_ids, caption_ids, generator)
        dedup = self.options.dedup_positives
        scale = self.scale()
        loss = clip_loss(image, text, scale, image_ids if dedup else None,
                         caption_ids if dedup else None)
        return StepOutput(loss=loss, embeddings=image.detach(),
                          logs={"logit_scale": scale.detach()})

    def on_train_step_end(self, progress: float) -> None:
        # Radford et al. clip the parameter itself, so it cannot drift beyond the clamp where
        # its gradient is zero and take many steps to come back.
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, math.log(self.options.max_logit_scale))

    def trivial_loss(self, batch_size: int) -> float:
        """A constant encoder makes every candidate equally likely: ln(N) in each direction
        (with shared positives as well: a uniform prediction scores ln N against any target)."""
        return math.log(batch_size)

    def resolved_options(self) -> dict[str, Any]:
        resolved = super().resolved_options()
        resolved["method_options"] = {**resolved["method_options"], "lock_text": self.lock_text,
                                      "image_augment": self.augment_images}
        return resolved

    # ------------------------------------------------------------------------ export ----

    def on_fit_end(self, run: RunDir) -> None:
        save_clip_parts(self, run.path)

    @classmethod
    def prepare_config(cls, config: PretrainConfig) -> PretrainConfig:
        """With ``image_init``, the image tower's architecture and image size are the image
        encoder's (unless the user names them): the weights can only load into the same network."""
        init = config.method_options.get("image_init")
        if not init:
            return config
        start = read_image_start(init, "image_init")
        config = start_config(config, start, "image_init")
        return dataclasses.replace(config, image_size=config.image_size or start.image_size)


# ---------------------------------------------------------------------------- helpers


def load_image_init(encoder: nn.Module, path: str, info: DataInfo) -> None:
    """Copy an image encoder's weights (and its input statistics) into the image tower."""
    start = load_image_start(encoder, path, info.channels, "image_init")
    if info.image_size is not None and start.image_size not in (None, info.image_size):
        raise SelfsupError(
            f"image_init {path} was trained on {start.image_size}px images but the pairs are "
            f"{info.image_size}px; pass --image-size {start.image_size}"
        )


def build_text_tower(options: CLIPOptions, captions: list[str]):
    """(HFTextEncoder, tokenizer): from a Hugging Face folder, or a small BERT from scratch."""

    if options.text_init:
        encoder = HFTextEncoder.from_folder(options.text_init)
        tokenizer = load_hf_tokenizer(options.text_init)
        return encoder, tokenizer
    if not captions:
        raise SelfsupError("no captions to learn a vocabulary from")
    tokenizer = wordpiece_tokenizer(iter(captions), options.vocab_size)
    config = small_bert_config(
        tokenizer.get_vocab_size(), dim=options.text_dim, layers=options.text_layers,
        heads=options.text_heads, max_length=options.max_caption_tokens,
    )
    return HFTextEncoder(config), tokenizer


def save_clip_parts(method: CLIP, folder: Path) -> None:
    """The text tower, its tokenizer, the projections and the temperature, beside the image
    tower the engine exports."""
    text = method.text_encoder
    state = {k: v.detach().contiguous().cpu() for k, v in text.state_dict().items()}
    with atomic.atomic_path(folder / TEXT_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    atomic.write_json(folder / TEXT_SPEC, {"name": "hf_text", **text.config_dict(),
                                           "embed_dim": text.embed_dim})
    atomic.write_text(folder / TOKENIZER, method.tokenizer.to_str())
    heads = {
        "image_projection": method.image_projection.weight.detach().contiguous().cpu(),
        "text_projection": method.text_projection.weight.detach().contiguous().cpu(),
        "logit_scale": method.scale().detach().reshape(1).cpu(),
    }
    with atomic.atomic_path(folder / HEADS_WEIGHTS) as tmp:
        save_file(heads, str(tmp))
    atomic.write_json(folder / HEADS_SPEC, {
        "embed_dim": method.options.embed_dim,
        "max_caption_tokens": method.max_length,
        "logit_scale": float(method.scale().detach()),
        "text_init": method.options.text_init,
        "image_init": method.options.image_init,
        "lock_image": method.lock_image,
        "lock_text": method.lock_text,
    })
