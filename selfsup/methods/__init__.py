"""Pretext methods, one file each, registered by name (``METHODS.get("simclr")``)."""

from selfsup.methods import (  # noqa: F401  (registration on import)
    barlowtwins,
    byol,
    clip,
    dino,
    gpt,
    mae,
    mlm,
    mocov2,
    mocov3,
    simclr,
    simcse,
    simsiam,
    span,
    supervised,
    supervised_series,
    ts_contrast,
    ts_mask,
    tsdae,
    vicreg,
)
from selfsup.methods.base import DataInfo, ImageMethod, Method, StepOutput
from selfsup.methods.registry import METHODS

__all__ = ["METHODS", "DataInfo", "ImageMethod", "Method", "StepOutput"]
