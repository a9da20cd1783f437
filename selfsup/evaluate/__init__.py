"""Honest evaluation: frozen-feature probes against a supervised baseline.

``selfsup.evaluate`` is both this package and the API call: calling the package runs
:func:`selfsup.evaluate.dispatch.evaluate`, so ``selfsup.evaluate(run, data)`` and
``selfsup.evaluate.anomaly.knn_scores(...)`` both work (a plain function bound to the name
would hide the subpackages; issue 28). Subpackages load on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from selfsup.evaluate.dispatch import evaluate

#: The submodules reachable as attributes of the package without importing them first.
SUBMODULES = ("anomaly", "checks", "dispatch", "features", "finetune", "language", "plan",
              "probe_curve", "probes", "protocol", "quality", "sweep", "text", "zero_shot")


class _CallablePackage(types.ModuleType):
    """This package's type: a module that runs :func:`evaluate` when called."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return evaluate(*args, **kwargs)


def __getattr__(name: str) -> types.ModuleType:
    """``selfsup.evaluate.anomaly`` without an ``import selfsup.evaluate.anomaly`` first."""
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _CallablePackage
__wrapped__ = evaluate  # inspect.signature(selfsup.evaluate) reads the function's

__all__ = ["SUBMODULES", "evaluate"]
