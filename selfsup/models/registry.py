"""The encoder registry; encoders register themselves by name on import."""

from __future__ import annotations

from selfsup.registry import Registry

ENCODERS: Registry = Registry("encoder")
