"""``selfsup evaluate``'s one entry: the run's kind picks the protocol set.

- a text run (an ``hf_text`` encoder: mlm, span) or a Hugging Face folder: probes and
  fine-tuning per label budget, against the same architecture from scratch and the starting
  model (selfsup/evaluate/text.py);
- a CLIP run (modality ``image_text``): zero-shot classification and retrieval, its image
  tower probed too (selfsup/evaluate/zero_shot.py);
- an image or series run: linear probe, kNN, optional fine-tuning, and the supervised
  baseline (selfsup/evaluate/protocol.py).

The protocols sit below this module and never import it or each other's entry points.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfsup.errors import SelfsupError
from selfsup.evaluate.checks import check_csv_rows, check_writable
from selfsup.evaluate.finetune import IMAGE_HEAD_INIT
from selfsup.evaluate.protocol import evaluate_run
from selfsup.evaluate.text import evaluate_text
from selfsup.evaluate.zero_shot import evaluate_clip
from selfsup.run import RunDir, as_run, load_encoder
from selfsup.text_models import is_text_target


def run_modality(run: RunDir) -> str:
    """The modality the run's encoder was trained on (``encoder.json``); a damaged or missing
    export is named by :func:`load_encoder`."""
    try:
        spec = json.loads(run.encoder_spec.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        spec = None
    if not isinstance(spec, dict):
        spec = load_encoder(run)[1]
    return str(spec.get("modality", "image"))


def evaluate(
    run_path: str | Path,
    data: str,
    test: str | None = None,
    *,
    baseline: bool = True,
    baseline_minutes: float | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
    progress: bool = True,
    cache_dir: str | None = None,
    finetune_minutes: float | None = None,
    finetune_fractions: tuple[float, ...] = (1.0,),
    data_options: dict[str, Any] | None = None,
    test_options: dict[str, Any] | None = None,
    clip_options: dict[str, Any] | None = None,
    text_options: dict[str, Any] | None = None,
    compile: str = "auto",
    finetune_head: str = IMAGE_HEAD_INIT,
) -> dict[str, Any]:
    """Evaluate a run (or a Hugging Face folder) with its modality's protocols; the result is
    also written to the run (``eval.json``). ``clip_options`` are the CLIP protocol's
    (``pairs``, ``class_names``, ``templates``, ``subsets``, ``probes``); ``text_options`` the
    text protocol's (``labels_per_class``, ``fractions``, ``finetune_epochs``, ``max_length``,
    ``test_size``, ``train_size``, ``start``, ``out``); ``compile`` (auto|on|off) is for
    image, series and CLIP runs' feature extraction and fine-tuning; the rest are
    :func:`selfsup.evaluate.protocol.evaluate_run`'s."""
    if is_text_target(run_path):
        if compile != "auto":
            raise SelfsupError("--compile applies to image, series and CLIP runs: text "
                               "evaluation runs eagerly (its batches change width)")
        options = dict(text_options or {})
        if "fractions" not in options and tuple(finetune_fractions) != (1.0,):
            options["fractions"] = list(finetune_fractions)
        return evaluate_text(
            run_path, data, test, baseline=baseline, seed=seed, progress=progress,
            protocol="probes" if finetune_minutes is None else "finetune",
            finetune_minutes=finetune_minutes or baseline_minutes or 5.0,
            data_options=data_options, test_options=test_options, **options,
        )
    if text_options:
        raise SelfsupError(f"{run_path} is not a text run: text evaluation options do not apply")
    run = as_run(run_path)
    check_writable(run.path, "eval.json and the baseline")  # now, not after the baseline
    if run_modality(run) == "image_text":
        if (clip_options or {}).get("pairs"):
            check_csv_rows(clip_options["pairs"])  # a ragged row would shift its caption
        return evaluate_clip(
            run_path, data, test, baseline=baseline, baseline_minutes=baseline_minutes,
            test_fraction=test_fraction, val_fraction=val_fraction, seed=seed,
            skip_bad=skip_bad, progress=progress, cache_dir=cache_dir, compile=compile,
            **(clip_options or {}),
        )
    if clip_options:
        raise SelfsupError(
            f"{run.path} is not a CLIP run: zero-shot and retrieval options do not apply"
        )
    return evaluate_run(
        run_path, data, test, baseline=baseline, baseline_minutes=baseline_minutes,
        test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, skip_bad=skip_bad,
        progress=progress, cache_dir=cache_dir, finetune_minutes=finetune_minutes,
        finetune_fractions=finetune_fractions, data_options=data_options,
        test_options=test_options, compile=compile, finetune_head=finetune_head,
    )


__all__ = ["evaluate", "run_modality"]
