"""Exports of trained models to other ecosystems (Hugging Face ``transformers``)."""

from selfsup.export.hf import export_hf

__all__ = ["export_hf"]
