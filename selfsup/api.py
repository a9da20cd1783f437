"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from selfsup.config import PretrainConfig, build_config, resolve_config
from selfsup.data.base import load_data
from selfsup.errors import SelfsupError
from selfsup.evaluate import evaluate
from selfsup.run import RunDir, default_run_name

# Options that may change when a run is resumed (the budget may be extended, display toggled).
RESUMABLE_OVERRIDES = {"minutes", "epochs", "steps", "progress", "checkpoint_minutes",
                       "checkpoint_steps", "num_workers", "cache_dir"}


def pretrain(
    method: str | None = None,
    data: str | None = None,
    *,
    config: str | Path | None = None,
    resume: bool = False,
    callbacks: list[Any] | None = None,
    **options: Any,
) -> RunDir:
    """Pre-train ``method`` on ``data``; returns the run directory (see :mod:`selfsup.run`).

    ``options`` are :class:`PretrainConfig` fields; ``config`` is a YAML recipe holding any of
    them. With ``resume=True`` and ``out`` naming an existing run, training continues from its
    last checkpoint with its saved config (only the budget and display options may change).
    ``callbacks`` are extra Lightning callbacks (your own monitors), added to the engine's.
    """
    from selfsup.engine import check_options, fit, with_default_encoder
    from selfsup.methods import METHODS

    overrides = {"method": method, "data": data, **options}
    out = overrides.get("out")
    if resume:
        if not out:
            raise SelfsupError("--resume needs --out naming the run to continue")
        run = RunDir(Path(out))
        saved = run.read_config()
        changed = {
            k for k, v in overrides.items()
            if v is not None and k not in RESUMABLE_OVERRIDES and k != "out" and saved.get(k) != v
        }
        if changed:
            raise SelfsupError(
                f"--resume keeps the run's saved config; these options differ from it: "
                f"{', '.join(sorted(changed))}"
            )
        values = {**saved, **{k: v for k, v in overrides.items()
                              if v is not None and k in RESUMABLE_OVERRIDES}}
        if any(overrides.get(k) for k in ("minutes", "epochs", "steps")):
            values.update({k: overrides.get(k) for k in ("minutes", "epochs", "steps")})
        resolved = build_config(values)
    else:
        resolved = resolve_config(config, overrides)
        # The method's own defaults (e.g. a language model's smaller batch) under the user's.
        method_defaults = METHODS.get(resolved.method).config_defaults
        if method_defaults:
            resolved = resolve_config(config, overrides, defaults=method_defaults)
        if resolved.out is None:
            resolved = dataclasses.replace(resolved, out=str(default_run_name(resolved.method)))
        run = RunDir(Path(resolved.out))
        if run.last_checkpoint.exists() or run.summary.exists():
            raise SelfsupError(
                f"{run.path} already holds a run; continue it with --resume or choose --out"
            )
    resolved = with_default_encoder(resolved)
    check_options(resolved)  # a typo in a nested option fails now, not after decoding the data
    run.path.mkdir(parents=True, exist_ok=True)
    data_set = load_data(METHODS.get(resolved.method).modality, resolved.data, resolved)
    fit(resolved, data_set, run, resume=resume, callbacks=callbacks)
    return run


__all__ = ["PretrainConfig", "evaluate", "pretrain"]
