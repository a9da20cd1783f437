"""``torch.compile`` for the engine's training step: on where it pays, eager where it cannot.

Inductor on a CPU fuses what lies between the matmuls and convolutions (norms, activations,
rotary, the loss) into generated C++; the first step pays for the compilation (15-40 s here),
every later step runs the fused code. ``--compile auto`` turns it on only for runs long enough
to win that time back (:data:`AUTO_MIN_SECONDS`, :data:`AUTO_MIN_STEPS`;
benchmarks/compiled_steps.py measures what it buys per method family), and only where a C++
compiler is on the PATH. A compilation that fails is one message naming what failed and the
flag that turns it off, never inductor's traceback; under ``auto`` the run warns and goes on
eagerly.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import torch

from selfsup.errors import SelfsupError

log = logging.getLogger("selfsup")

CHOICES = ("auto", "on", "off")
#: ``auto`` compiles a run budgeted at least this long (minutes) ...
AUTO_MIN_SECONDS = 180.0
#: ... or at least this many optimiser steps: compiling costs about as much as 50-300 steps.
AUTO_MIN_STEPS = 500


def compiler_missing(device: str = "cpu") -> str | None:
    """Why inductor cannot compile here, or None when it can (a C++ compiler for CPU code)."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python"
    if device == "cpu":
        compiler = os.environ.get("CXX") or "g++"
        if shutil.which(compiler) is None:
            return f"no C++ compiler ({compiler!r} is not on the PATH; set CXX to one)"
    return None


def _decide(choice: str, *, wanted: bool, device: str, eager_what: str) -> str:
    """What :func:`resolve` and :func:`resolve_extraction` share: the choice checked, ``off``
    (and ``auto`` where it is not ``wanted``) eager, a missing compiler an error under ``on``
    and a warning under ``auto``."""
    if choice not in CHOICES:
        raise SelfsupError(f"compile must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "off" or (choice == "auto" and not wanted):
        return "off"
    missing = compiler_missing(device)
    if missing and choice == "on":
        raise SelfsupError(f"--compile on: {missing}; run with --compile off")
    if missing:
        log.warning("--compile auto: %s, so %s", missing, eager_what)
        return "off"
    return "on"


def resolve(choice: str, *, minutes: float | None, steps: int | None, device: str = "cpu",
            pays: bool = True) -> str:
    """``on`` or ``off`` for a run's ``--compile`` choice; ``steps`` is the step budget (from
    ``--steps`` or ``--epochs``), None when only minutes bound the run; ``pays``: False where
    compiling this method was measured not to pay (``auto`` is then off)."""
    # The first limit reached ends a run, so every limit given must be long enough.
    limits = [minutes * 60 >= AUTO_MIN_SECONDS] if minutes is not None else []
    limits += [steps >= AUTO_MIN_STEPS] if steps is not None else []
    return _decide(choice, wanted=pays and bool(limits) and all(limits), device=device,
                   eager_what="the run trains eagerly")


#: Feature extraction compiles under ``auto`` from this many images. Compiled, extraction ran
#: 1.02-1.13x as fast here after 9-17 s of compiling (benchmarks/compiled_eval.py): that pays
#: from 79,000 images for ResNet-18, 370,000 for vit_tiny and 690,000 for resnet_small, so
#: evaluation sets of CIFAR's size stay eager.
AUTO_MIN_IMAGES = 500_000


def resolve_extraction(choice: str, *, samples: int, images: bool, device: str = "cpu") -> str:
    """``on`` or ``off`` for embedding ``samples`` inputs; ``images``: the inputs are image
    batches (other inputs, such as texts of changing width, stay eager under ``auto``)."""
    return _decide(choice, wanted=images and samples >= AUTO_MIN_IMAGES, device=device,
                   eager_what="features are extracted eagerly")


def compile_errors() -> tuple[type[BaseException], ...]:
    """What dynamo and inductor raise when they cannot compile (not errors of the model)."""
    return (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError,
            torch._inductor.exc.CppCompileError, torch._inductor.exc.InvalidCxxCompiler)


def failure_message(name: str, error: BaseException) -> str:
    """One line for a failed compilation: what failed, the first line of why, the way out."""
    reason = next((line.strip() for line in str(error).splitlines() if line.strip()),
                  type(error).__name__)
    if len(reason) > 300:
        reason = reason[:300] + "..."
    return (f"torch.compile could not compile {name} ({type(error).__name__}: {reason}); "
            "run with --compile off")


class CompiledStep:
    """``fn`` compiled on its first call, that call timed and logged.

    ``strict`` (``--compile on``): a failure is a :class:`SelfsupError`. Otherwise (``auto``)
    it is a warning, and this and every later call run ``fn`` eagerly.
    """

    def __init__(self, fn: Callable[..., Any], name: str, *, strict: bool,
                 dynamic: bool | None = False, budgeted: bool = True) -> None:
        self.eager = fn
        self.compiled = torch.compile(fn, dynamic=dynamic)
        self.name = name
        self.strict = strict
        self.budgeted = budgeted  # whether its time counts against a run's budget (the log)
        self.failed = False
        self.first_call_seconds: float | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return self.eager(*args, **kwargs)
        if self.first_call_seconds is not None:
            return self.compiled(*args, **kwargs)
        started = time.monotonic()
        try:
            out = self.compiled(*args, **kwargs)
        except compile_errors() as error:
            if self.strict:
                raise SelfsupError(failure_message(self.name, error)) from None
            log.warning("%s; training eagerly", failure_message(self.name, error))
            self.failed = True
            return self.eager(*args, **kwargs)
        self.first_call_seconds = time.monotonic() - started
        log.info("compiled %s in %.1f s%s", self.name, self.first_call_seconds,
                 " (counted in the run's budget)" if self.budgeted else "")
        return out
