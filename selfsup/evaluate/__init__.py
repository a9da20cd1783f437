"""Honest evaluation: frozen-feature probes against a supervised baseline."""

from selfsup.evaluate.protocol import evaluate

__all__ = ["evaluate"]
