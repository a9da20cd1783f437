"""The method registry; each method file registers its class by name on import."""

from __future__ import annotations

from selfsup.registry import Registry

METHODS: Registry = Registry("method")
