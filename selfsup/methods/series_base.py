"""What every series method shares: its augmentation config, the length check, the batch."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from selfsup.augment.series import SeriesAugment, SeriesAugmentConfig
from selfsup.config import options_dataclass
from selfsup.errors import SelfsupError
from selfsup.methods.base import DataInfo, Method


class SeriesMethod(Method):
    """A method on series batches {"series": (B, C, L), "lengths": (B,)}.

    ``augment_defaults`` override :class:`SeriesAugmentConfig`'s defaults for this method; the
    user's ``augment_options`` win over both.
    """

    # modality (series): each method's card in selfsup/catalog.py
    default_encoder: ClassVar[str] = "dilated_cnn"
    baseline_method: ClassVar[str] = "supervised-series"
    augment_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        encoder: torch.nn.Module,
        info: DataInfo,
        options: dict[str, Any] | None = None,
        augment_options: dict[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__(encoder, info, options, augment_options, channels_last)
        self.augment = SeriesAugment(self.augment_config(augment_options or {}))
        shortest = info.extra.get("min_length")
        needed = getattr(encoder, "min_length", 1)
        if shortest is not None and shortest < needed:
            source, index = info.extra.get("source"), info.extra.get("shortest_index")
            where = f"{source}: " if source else ""
            which = f"series {index}" if index is not None else "the shortest series"
            raise SelfsupError(
                f"{where}{which} has {shortest} steps, fewer than the {needed} the encoder "
                f"needs ({encoder.length_reason()}); choose a smaller patch_size/kernel_size "
                "or drop the short series"
            )

    @classmethod
    def augment_config(cls, augment_options: dict[str, Any]) -> SeriesAugmentConfig:
        values = {**cls.augment_defaults, **augment_options}
        return options_dataclass(SeriesAugmentConfig, values, "augment_options")

    @classmethod
    def check_augment_options(cls, augment_options: dict[str, Any]) -> None:
        cls.augment_config(augment_options)

    def resolved_options(self) -> dict[str, Any]:
        return {**super().resolved_options(),
                "augment_options": dataclasses.asdict(self.augment.config)}

    @staticmethod
    def unpack(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["series"].float()
        lengths = batch.get("lengths")
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[-1], dtype=torch.long)
        return x, lengths.long()
