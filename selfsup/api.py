"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from selfsup.config import PretrainConfig, build_config, resolve_config
from selfsup.data.base import load_data
from selfsup.engine import check_options, fit, with_default_encoder
from selfsup.errors import DiskFull, SelfsupError
from selfsup.evaluate import evaluate
from selfsup.evaluate.probe_curve import probe_curve_callback
from selfsup.evaluate.text import evaluate_text_model as run
from selfsup.lock import run_lock
from selfsup.methods import METHODS
from selfsup.run import RunDir, default_run_name

log = logging.getLogger("selfsup")

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

    overrides = {"method": method, "data": data, **options}
    if resume:
        run, resolved = _resumed_config(overrides)
    else:
        resolved = resolve_config(config, overrides)
        # The method's own defaults (e.g. a language model's smaller batch) under the user's.
        method_defaults = METHODS.get(resolved.method).config_defaults
        if resolved.data is None:
            raise SelfsupError(
                "no data given: name it with --data (a folder, file or prepared shards); "
                "--data digits trains on scikit-learn's built-in digits, as the demo does"
            )
        if resolved.init and not METHODS.get(resolved.method).supports_init:
            raise SelfsupError(f"method {resolved.method!r} cannot start from --init")
        if resolved.init:  # a pretrained start wants other defaults (e.g. a smaller lr)
            method_defaults = {**method_defaults,
                               **METHODS.get(resolved.method).init_config_defaults}
        if method_defaults:
            resolved = resolve_config(config, overrides, defaults=method_defaults)
        if resolved.out is None:
            resolved = dataclasses.replace(resolved, out=str(default_run_name(resolved.method)))
        run = RunDir(Path(resolved.out))
    if not resume:  # e.g. CLIP's image tower from an image run
        resolved = METHODS.get(resolved.method).prepare_config(resolved)
    resolved = with_default_encoder(resolved)
    check_options(resolved)  # a typo in a nested option fails now, not after decoding the data
    created = make_run_folder(run.path)
    try:
        with run_lock(run.path):  # a live run's folder is refused before it is read
            if resume:
                # A damaged checkpoint is refused before anything is written.
                checkpoint = read_checkpoint(run)
                if finished(run, resolved, checkpoint):
                    log.info("%s already finished (%d steps): nothing to do; give a larger "
                             "budget (--steps, --epochs, --minutes) to train on", run.path,
                             checkpoint.get("global_step", 0))
                    return run
                del checkpoint  # Lightning reads it again; do not hold two copies in memory
            elif run.last_checkpoint.exists() or run.summary.exists():
                raise SelfsupError(
                    f"{run.path} already holds a run; continue it with --resume or choose --out"
                )
            if probe_data is not None:  # read now: a bad probe file fails before any training

                if METHODS.get(resolved.method).modality != "text":
                    raise SelfsupError("--probe-data (the probe curve) is for text methods only")
                length = int(resolved.data_options.get("block_size") or 128)  # what it sees
                callbacks = [*(callbacks or []), probe_curve_callback(
                    probe_data, probe_every, seed=resolved.seed, max_length=length)]
            data_set = load_data(METHODS.get(resolved.method).modality, resolved.data, resolved,
                                 METHODS.get(resolved.method))
            try:
                fit(resolved, data_set, run, resume=resume, callbacks=callbacks)
            except DiskFull as error:  # an atomic write found the disk full
                raise SelfsupError(_write_failure(run, OSError(
                    errno.ENOSPC, os.strerror(errno.ENOSPC), error.path))) from None
            except OSError as error:  # a full disk, a quota, a disk gone read-only mid-run
                raise SelfsupError(_write_failure(run, error)) from None
    except BaseException:
        if created:
            _remove_unfinished(run)
        raise
    return run


#: The errors of writing that are the machine's state, not a bug: said in words, not a trace.
_WRITE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EIO: "an input/output error"}


def _write_failure(run: RunDir, error: OSError) -> str:
    if error.errno not in _WRITE_ERRORS:
        raise error
    where = f" ({error.filename})" if error.filename else ""
    kept = (f"the last complete checkpoint is {run.last_checkpoint}; free space and continue "
            f"with --resume --out {run.path}" if run.last_checkpoint.is_file()
            else "no checkpoint had been written, so nothing of the run is kept")
    return f"could not write the run {run.path}: {_WRITE_ERRORS[error.errno]}{where}; {kept}"


def make_run_folder(path: Path) -> bool:
    """Create the run directory (and its parents); True if this call created it.

    A file in the way, or a disk that refuses writes, is a message, not a traceback.
    """
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == path else f"lies under {parent}, which is a file"
            raise SelfsupError(f"--out {path} {what}; name a folder for the run")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = _WRITE_ERRORS.get(error.errno or 0, error.strerror or str(error))
        raise SelfsupError(f"cannot create the run directory {path}: {reason}") from None
    return created


def _resumed_config(overrides: dict[str, Any]) -> tuple[RunDir, PretrainConfig]:
    """The saved config of the run in ``overrides['out']``, with the budget and display
    options the user may change on resume."""
    out = overrides.get("out")
    if not out:
        raise SelfsupError("--resume needs --out naming the run to continue")
    run = RunDir(Path(out))
    if not run.path.is_dir():
        raise SelfsupError(f"nothing to resume: {run.path} is not a run directory")
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
    try:
        return run, build_config(values)
    except SelfsupError as error:
        raise SelfsupError(f"{run.config} cannot be resumed: {error}") from None


def read_checkpoint(run: RunDir) -> dict[str, Any]:
    """The run's last checkpoint, loaded whole: a truncated or foreign file is refused here,
    before ``--resume`` rewrites config.yaml or opens a new log folder."""
    if not run.last_checkpoint.is_file():
        raise SelfsupError(f"nothing to resume: {run.last_checkpoint} does not exist")
    try:
        checkpoint = torch.load(run.last_checkpoint, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises RuntimeError, EOFError, pickle errors ...
        raise SelfsupError(
            f"{run.last_checkpoint} is damaged and cannot be resumed ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'unreadable'}); start a new run "
            "with another --out"
        ) from None
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise SelfsupError(f"{run.last_checkpoint} is not a selfsup checkpoint; start a new run "
                           "with another --out")
    return checkpoint


def finished(run: RunDir, config: PretrainConfig, checkpoint: dict[str, Any]) -> bool:
    """Whether the run's final files are all written and its checkpoint is at the end of the
    (possibly extended) budget: resuming it would only rewrite good files with empty ones."""
    try:
        summary = run.read_summary()
    except (SelfsupError, ValueError):
        return False
    if not (run.encoder_weights.is_file() and run.encoder_spec.is_file()):
        return False
    if summary.get("stopped_early"):
        return True
    step = int(checkpoint.get("global_step", 0))
    epoch = int(checkpoint.get("epoch", 0))
    timer = checkpoint.get("callbacks", {}).get("Timer", {}).get("time_elapsed", {})
    reached = [
        config.steps is not None and step >= config.steps,
        config.epochs is not None and epoch >= config.epochs,
        config.minutes is not None and float(timer.get("train", 0.0)) >= 60 * config.minutes,
    ]
    return any(reached)


def _remove_unfinished(run: RunDir) -> None:
    """Remove a run folder this call created when the run failed before its first complete
    checkpoint (bad data, a full disk, Ctrl-C in the first minutes): nothing in it can be
    resumed or used, and a half-written run only clutters the user's runs."""
    if not run.last_checkpoint.is_file():
        shutil.rmtree(run.path, ignore_errors=True)


def evaluate_text_model(model: str | Path, data: str, test: str | None = None,
                        **options: Any) -> dict[str, Any]:
    """Evaluate a text model without a run, e.g. a Hugging Face folder as the starting model:
    probes (and fine-tuning) per label budget against the same architecture from scratch.
    See :func:`selfsup.evaluate.text.evaluate_text_model` for the options."""

    return run(model, data, test, **options)


__all__ = ["PretrainConfig", "evaluate", "evaluate_text_model", "pretrain"]
