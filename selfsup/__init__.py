"""selfsup: self-supervised pre-training and an honest verdict on whether it helped.

    import selfsup
    run = selfsup.pretrain("simclr", "digits", minutes=1)
    selfsup.evaluate(run.path, "digits")

``import selfsup`` is light: the API names load their modules (torch, Lightning, ...) on first
use, through a module ``__getattr__`` (PEP 562), so that the command line (``selfsup.cli``,
inside this package) starts without them. ``selfsup.evaluate`` is the evaluate package, which
is callable as the API function while its subpackages stay reachable.
"""

from __future__ import annotations

import importlib
from typing import Any

from selfsup.errors import SelfsupError
from selfsup.lazy import resolve

#: Public names and where they live, imported on first access (see selfsup/lazy.py).
_DEFERRED = {
    "PretrainConfig": "selfsup.config:PretrainConfig",
    "load": "selfsup.loading:load",
    "pretrain": "selfsup.api:pretrain",
}
#: Subpackages that are public names themselves.
_SUBPACKAGES = ("evaluate",)


def __getattr__(name: str) -> Any:
    if name in _DEFERRED:
        value = resolve(_DEFERRED[name])
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = ["PretrainConfig", "SelfsupError", "evaluate", "load", "pretrain"]
__version__ = "0.1.0"
