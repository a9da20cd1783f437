"""Honest evaluation: frozen-feature probes against a supervised baseline.

``selfsup.evaluate`` is both this package and the API call: calling the package runs
:func:`selfsup.evaluate.dispatch.evaluate`, so ``selfsup.evaluate(run, data)`` and
``selfsup.evaluate.anomaly.knn_scores(...)`` both work (a plain function bound to the name
would hide the subpackages; issue 28). Subpackages load on first use, and so does the
dispatch behind the call (a deferred reference, selfsup/lazy.py): importing one protocol module
(``selfsup.evaluate.probes``, as the engine does) runs this file first, and it must not reach
back up through the dispatch to the engine that is importing it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from selfsup.lazy import resolve

#: What calling the package runs.
EVALUATE = "selfsup.evaluate.dispatch:evaluate"

#: The submodules reachable as attributes of the package without importing them first.
SUBMODULES = ("anomaly", "checks", "dispatch", "features", "finetune", "language", "plan",
              "probe_curve", "probes", "protocol", "quality", "sweep", "text", "zero_shot")


class _CallablePackage(types.ModuleType):
    """This package's type: a module that runs :func:`evaluate` when called."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return resolve(EVALUATE)(*args, **kwargs)


def __getattr__(name: str) -> Any:
    """``selfsup.evaluate.anomaly`` without an ``import selfsup.evaluate.anomaly`` first; the
    function ``evaluate`` (and ``__wrapped__``, which inspect.signature reads) on first use."""
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in ("evaluate", "__wrapped__"):
        return resolve(EVALUATE)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["SUBMODULES", "evaluate"]
