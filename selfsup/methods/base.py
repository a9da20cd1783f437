"""The method seam: a pretext task owns its views, heads and loss; the engine owns the rest.

A method never sees devices, precision, logging or checkpoints. It receives a raw batch of its
modality (uint8 images, token windows, series; labels only if it declares ``needs_labels``),
makes its views or masks, and returns a loss. :class:`Method` is modality-free;
:class:`ImageMethod` adds the batched image augmentations every image method shares.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from selfsup.augment import BatchedImageAugment, ImageAugmentConfig, progressive_size
from selfsup.config import PretrainConfig, options_dataclass
from selfsup.data.base import DataInfo  # defined with the readers, which fill it in
from selfsup.errors import SelfsupError
from selfsup.methods.image_start import load_image_start, read_image_start, start_config
from selfsup.models import ImageEncoder

log = logging.getLogger("selfsup")

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from selfsup.run import RunDir

# BYOL's asymmetric augmentation (Grill et al. 2020, table 6), shared by the methods that
# adopted it (MoCo v3, DINO, Barlow Twins): colour jitter with a weaker saturation and hue, and
# view 2 solarized with probability 0.2. Its Gaussian blur (probability 1.0 / 0.1) is left out,
# as in solo-learn's CIFAR recipes: at 32x32 a sigma of up to 2 pixels erases the object. For
# large images add it back with augment_options blur_p (it then applies to both views).
BYOL_COLOUR: dict[str, Any] = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}
BYOL_VIEWS: tuple[dict[str, Any], ...] = ({"solarize_p": 0.0}, {"solarize_p": 0.2})


@dataclass
class StepOutput:
    """A training step's loss, the encoder embeddings of one view (for monitors), and logs."""

    loss: torch.Tensor
    embeddings: torch.Tensor | None = None
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)


@dataclass
class NoOptions:
    """For methods without options of their own."""


class Method(nn.Module):
    """Base class of every method. Subclasses set ``Options`` and implement ``training_step``.

    ``modality`` picks the reader (selfsup/data/base.py) and ``default_encoder`` the encoder
    used when the user names none; ``baseline_method`` is the supervised method that
    `selfsup evaluate` trains as this method's reference (None: there is none, as for text,
    whose evaluation trains the same architecture from scratch instead).

    Every attribute and hook a caller may use is declared here with its default; a method
    overrides what it needs and callers never probe for one.
    """

    Options: ClassVar[type] = NoOptions
    # A registered method's modality, config_defaults and init_config_defaults come from its
    # card in selfsup/catalog.py (set on registration, so --help reads them without torch);
    # the values here are the defaults of a method without a card.
    modality: ClassVar[str] = "image"
    default_encoder: ClassVar[str] = "resnet_small"
    baseline_method: ClassVar[str | None] = "supervised"
    needs_labels: ClassVar[bool] = False
    # PretrainConfig defaults that suit this method better (e.g. batch size, lr); the user's
    # recipe and options win over them.
    config_defaults: ClassVar[dict[str, Any]] = {}
    # Whether ``--init`` (a pretrained Hugging Face folder) may start the run, and the config
    # defaults such a start wants over ``config_defaults`` (a smaller lr, say).
    supports_init: ClassVar[bool] = False
    init_config_defaults: ClassVar[dict[str, Any]] = {}
    # How --compile treats the step's input shapes (torch.compile's ``dynamic``): False, a graph
    # per shape (fixed-size images; a few sizes under progressive resolution); None, a
    # dimension turns dynamic once it changes (text padded to each batch's longest, whose width
    # changes every step: one recompile, where static shapes recompile for every new width).
    compile_dynamic: ClassVar[bool | None] = False
    # Whether --compile auto may compile this method's step (on stays the user's to ask for):
    # False where compiling was measured not to pay, e.g. a pretrained text encoder whose step
    # is its matmuls (benchmarks/text_compile.py).
    compile_auto: ClassVar[bool] = True

    @classmethod
    def prepare_config(cls, config: PretrainConfig) -> PretrainConfig:
        """The config of a new run, completed from what only this method knows (CLIP's image
        tower from an image run); called once, before the data is read. Default: unchanged."""
        return config

    def trivial_loss(self, batch_size: int) -> float | None:
        """The loss a collapsed (constant) encoder scores at this global batch, which the
        collapse alarm watches for; None where the method has no such value."""
        return None

    def __init__(
        self,
        encoder: nn.Module,
        info: DataInfo,
        options: dict[str, Any] | None = None,
        augment_options: dict[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.info = info
        self.options = options_dataclass(
            self.Options, options or {}, f"options of method {type(self).__name__}"
        )
        self.augment_options = dict(augment_options or {})
        self.channels_last = channels_last

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        raise NotImplementedError

    def on_train_step_start(self, progress: float) -> None:
        """Before each step's forward pass (schedules that change what trains)."""

    def on_train_step_end(self, progress: float) -> None:
        """Per-step hook (EMA teachers, schedules); ``progress`` goes 0 -> 1 over the budget."""

    def freeze_encoder(self, frozen: bool, what: str) -> None:
        """Stop (or restart) the encoder's training while a new head or decoder (``what``)
        warms up; its weights stay in the optimiser, which skips a weight without a gradient
        (AdamW neither moves nor decays it)."""
        if frozen == getattr(self, "encoder_frozen", False):
            return
        if frozen and torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise SelfsupError(f"the {what} warm-up runs in a single process only")
        self.encoder.requires_grad_(not frozen)
        self.encoder_frozen = frozen
        log.info("%s warm-up %s", what, "started: encoder frozen" if frozen
                 else "over: the encoder trains")

    def callbacks(self, run: RunDir) -> list[pl.Callback]:
        """Extra Lightning callbacks for this method's run (e.g. MAE's reconstruction images)."""
        return []

    def on_fit_end(self, run: RunDir) -> None:
        """After training, before the encoder is exported: write method-specific artefacts."""

    def resolved_options(self) -> dict[str, Any]:
        """The method's options with defaults filled in, recorded in the run's config.yaml."""
        return {"method_options": dataclasses.asdict(self.options)}

    @classmethod
    def check_augment_options(cls, augment_options: dict[str, Any]) -> None:
        """Refuse bad augmentation options before the data is read (image methods check theirs)."""
        if augment_options:
            raise ValueError(f"method takes no augment_options: {', '.join(augment_options)}")


class ImageMethod(Method):
    """An image method: batched augmentations (selfsup/augment) and the view recipes."""

    # Overrides of ImageAugmentConfig's defaults that suit this method (the user's win over them).
    augment_defaults: ClassVar[dict[str, Any]] = {}
    # Asymmetric recipes (BYOL, Grill et al. 2020, table 6): further defaults for view 0, 1, ...
    # of ``views`` (cycled when there are more views). The user's augment_options still win.
    view_augment_defaults: ClassVar[tuple[dict[str, Any], ...]] = ()
    # Whether the method's views go through ``views`` (so progressive_min_size can size them).
    progressive_resolution: ClassVar[bool] = True
    # --init: an image encoder folder (a selfsup run or export, a transformers ViT) to continue.
    supports_init: ClassVar[bool] = True

    @classmethod
    def prepare_config(cls, config: PretrainConfig) -> PretrainConfig:
        """With ``--init``, the encoder's architecture is the starting one's."""
        if not config.init:
            return config
        return start_config(config, read_image_start(config.init))

    def __init__(
        self,
        encoder: ImageEncoder,
        info: DataInfo,
        options: dict[str, Any] | None = None,
        augment_options: dict[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__(encoder, info, options, augment_options, channels_last)
        if info.extra.get("init"):  # the weights, and the normalisation they were trained with
            load_image_start(encoder, info.extra["init"], info.channels)
        user = augment_options or {}
        self.augment = _build_augment({**self.augment_defaults, **user})
        # A plain list: augmentations hold no weights, and the state dict stays as it was.
        self.view_augments = [
            _build_augment({**self.augment_defaults, **overrides, **user})
            for overrides in self.view_augment_defaults
        ]
        # Progressive resolution: the side of this step's views (None: the recipe's own).
        self.view_size: int | None = None
        progressive = self.augment.config.progressive_min_size is not None
        if progressive and not self.progressive_resolution:
            raise SelfsupError(f"{type(self).__name__} does not take progressive_min_size: "
                               "its views are not sized by the shared view recipe")

    def on_train_step_start(self, progress: float) -> None:
        config = self.augment.config
        if config.progressive_min_size is not None:
            full = config.output_size or self.info.image_size
            if full is not None:
                self.view_size = progressive_size(progress, config.progressive_min_size, full,
                                                  config.progressive_until)

    def resolved_options(self) -> dict[str, Any]:
        return {**super().resolved_options(),
                "augment_options": dataclasses.asdict(self.augment.config)}

    @classmethod
    def check_augment_options(cls, augment_options: dict[str, Any]) -> None:
        values = {**cls.augment_defaults, **augment_options}
        options_dataclass(ImageAugmentConfig, values, "augment_options").validate()

    def views(
        self,
        images: torch.Tensor,
        count: int,
        generator: torch.Generator,
        augment: BatchedImageAugment | None = None,
    ) -> torch.Tensor:
        """``count`` independently augmented views of the batch, stacked view-major (count*B).

        View i uses ``augment`` if given, else the method's recipe for view i
        (``view_augment_defaults``), else the method's one recipe.
        """
        recipes = [augment] if augment is not None else self.view_augments or [self.augment]
        return self._stack([recipes[i % len(recipes)](images, generator, self.view_size)
                            for i in range(count)])

    def augment_variant(self, **changes: Any) -> BatchedImageAugment:
        """The method's augmentation with some fields changed (e.g. multi-crop's local crops)."""
        return BatchedImageAugment(dataclasses.replace(self.augment.config, **changes))

    def multi_crop(
        self,
        images: torch.Tensor,
        generator: torch.Generator,
        global_views: int,
        local_augment: BatchedImageAugment,
        local_views: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Multi-crop (SwAV, Caron et al. 2020, sec. 3.3; DINO): ``global_views`` views at the
        data's size, as ``views`` makes them, and ``local_views`` crops by ``local_augment``
        (smaller areas at a smaller ``output_size``; see :meth:`augment_variant`).

        Two stacks, each view-major, because one tensor holds one image size; the local stack
        is None when ``local_views`` is 0. Small crops add views for little compute: a 16x16
        crop costs a quarter of a 32x32 one.
        """
        global_stack = self.views(images, global_views, generator)
        if local_views == 0:
            return global_stack, None
        local_stack = self._stack([local_augment(images, generator) for _ in range(local_views)])
        return global_stack, local_stack

    def _stack(self, views: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.cat(views)
        if self.channels_last:
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        return stacked



def _build_augment(values: dict[str, Any]) -> BatchedImageAugment:
    return BatchedImageAugment(options_dataclass(ImageAugmentConfig, values, "augment_options"))
