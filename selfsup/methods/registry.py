"""The method registry; each method file registers its class by name on import.

A built-in method's modality and config defaults are declared in selfsup/catalog.py (so that
``--help`` shows them without importing torch); registering sets them on the class.
"""

from __future__ import annotations

from selfsup.catalog import METHOD_CARDS
from selfsup.registry import Registry

METHODS: Registry = Registry(
    "method", {name: card.class_attributes() for name, card in METHOD_CARDS.items()})
