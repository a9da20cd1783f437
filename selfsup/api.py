"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import dataclasses
import shutil
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
    probe_data: str | Path | None = None,
    probe_every: int = 100,
    **options: Any,
) -> RunDir:
    """Pre-train ``method`` on ``data``; returns the run directory (see :mod:`selfsup.run`).

    ``options`` are :class:`PretrainConfig` fields; ``config`` is a YAML recipe holding any of
    them. With ``resume=True`` and ``out`` naming an existing run, training continues from its
    last checkpoint with its saved config (only the budget and display options may change).
    ``callbacks`` are extra Lightning callbacks (your own monitors), added to the engine's.
    ``probe_data`` (labelled text, text methods): the probe curve, a linear probe on its frozen
    embeddings every ``probe_every`` steps, logged as ``probe_acc`` and kept in
    ``RUN/probe_curve.json`` (selfsup/evaluate/probe_curve.py).
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
        if resolved.init and not getattr(METHODS.get(resolved.method), "supports_init", False):
            raise SelfsupError(f"method {resolved.method!r} cannot start from --init")
        if resolved.init:  # a pretrained start wants other defaults (e.g. a smaller lr)
            init_defaults = getattr(METHODS.get(resolved.method), "init_config_defaults", {})
            method_defaults = {**method_defaults, **init_defaults}
        if method_defaults:
            resolved = resolve_config(config, overrides, defaults=method_defaults)
        if resolved.out is None:
            resolved = dataclasses.replace(resolved, out=str(default_run_name(resolved.method)))
        run = RunDir(Path(resolved.out))
        if run.last_checkpoint.exists() or run.summary.exists():
            raise SelfsupError(
                f"{run.path} already holds a run; continue it with --resume or choose --out"
            )
    prepare = getattr(METHODS.get(resolved.method), "prepare_config", None)
    if prepare is not None and not resume:  # e.g. CLIP's image tower from an image run
        resolved = prepare(resolved)
    resolved = with_default_encoder(resolved)
    check_options(resolved)  # a typo in a nested option fails now, not after decoding the data
    created = not run.path.exists()
    run.path.mkdir(parents=True, exist_ok=True)
    try:
        if probe_data is not None:  # read now: a bad probe file fails before any training
            from selfsup.evaluate.probe_curve import probe_curve_callback

            if METHODS.get(resolved.method).modality != "text":
                raise SelfsupError("--probe-data (the probe curve) is for text methods only")
            length = int(resolved.data_options.get("block_size") or 128)  # what the method sees
            callbacks = [*(callbacks or []), probe_curve_callback(
                probe_data, probe_every, seed=resolved.seed, max_length=length)]
        data_set = load_data(METHODS.get(resolved.method).modality, resolved.data, resolved)
        fit(resolved, data_set, run, resume=resume, callbacks=callbacks)
    except BaseException:
        if created:
            _remove_if_no_files(run.path)
        raise
    return run


def _remove_if_no_files(path: Path) -> None:
    """Remove a run folder this call created when a failure left no file in it (bad data, a
    series too short for the encoder): an empty folder only clutters the user's runs."""
    if not any(p.is_file() for p in path.rglob("*")):
        shutil.rmtree(path, ignore_errors=True)


def evaluate_text_model(model: str | Path, data: str, test: str | None = None,
                        **options: Any) -> dict[str, Any]:
    """Evaluate a text model without a run, e.g. a Hugging Face folder as the starting model:
    probes (and fine-tuning) per label budget against the same architecture from scratch.
    See :func:`selfsup.evaluate.text.evaluate_text_model` for the options."""
    from selfsup.evaluate.text import evaluate_text_model as run

    return run(model, data, test, **options)


__all__ = ["PretrainConfig", "evaluate", "evaluate_text_model", "pretrain"]
