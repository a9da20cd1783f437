"""Pretext methods, one file each, registered by name (``METHODS.get("simclr")``)."""

from selfsup.methods import simclr, supervised  # noqa: F401  (registration on import)
from selfsup.methods.base import DataInfo, Method, StepOutput
from selfsup.methods.registry import METHODS

__all__ = ["METHODS", "DataInfo", "Method", "StepOutput"]
