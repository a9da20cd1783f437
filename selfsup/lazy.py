"""Deferred references: ``"selfsup.module:name"`` resolved with importlib when first used.

The command line and the package's top level name what they call as such strings, so that
``selfsup --help`` and ``import selfsup`` load neither torch nor Lightning: the module behind a
name is imported only when the name is used (a verb runs, ``selfsup.pretrain`` is called).

This is the package's one way to defer an import; there are no function-local
``from selfsup ...`` imports. A deferred reference is still an import: the import-graph test
(``tests/test_import_graph.py``) reads every ``"selfsup.<module>:<name>"`` string constant as an
edge to ``<module>``, so a cycle cannot hide behind one.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

#: The form of a deferred reference, as the import-graph test recognises it.
REFERENCE = re.compile(r"^selfsup(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def resolve(reference: str) -> Any:
    """The object ``"package.module:name"`` refers to, importing the module if need be."""
    if not REFERENCE.match(reference):
        raise ValueError(f"not a deferred reference 'selfsup.module:name': {reference!r}")
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


__all__ = ["REFERENCE", "resolve"]
