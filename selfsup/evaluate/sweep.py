"""The label-efficiency sweep: downstream quality against the number of labels, SSL vs supervised.

One accuracy on one seed does not say whether self-supervision helped; a curve does. For each
label budget (a fraction of the labelled training data, or a number of labels per class) and each
seed, a stratified label subset is drawn from the training part (never from the test split), and

- a linear probe and a kNN probe are fitted on the frozen features of that subset, their
  hyper-parameters chosen on a validation split carved (stratified) from the subset itself
  (the semi-supervised protocol of Chen et al. 2020, SimCLR sec. B.5 / Zhai et al. 2019, S4L);
- the supervised baseline, the same encoder trained from scratch on the same labels by the same
  engine, with a wall-clock (and optionally step) budget per point;
- for series, MiniRocket on the same labels (evaluate/minirocket.py), the cheap reference;

and every result is scored on the one fixed test split by accuracy and macro-F1. The summary
per budget holds the mean and the sample standard deviation over seeds, and the paired (same
seed, same labels) difference between the linear probe and the supervised baseline. Features
are extracted once; only the baselines train. Results go to ``RUN/sweep.json``; the rows of the
data behind every subset (and the test split) to ``RUN/sweep/label_subsets.npz``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup import atomic
from selfsup.augment import BatchedImageAugment, ImageAugmentConfig
from selfsup.config import build_config
from selfsup.engine import fit
from selfsup.errors import SelfsupError
from selfsup.evaluate.budgets import (  # moved there; re-exported here
    LabelBudget,
    label_subset,
    parse_budgets,
)
from selfsup.evaluate.checks import check_writable
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.finetune import (
    IMAGE_HEAD_INIT,
    FinetuneConfig,
    finetune,
    from_scratch,
    scratch_recipe,
)
from selfsup.evaluate.minirocket import minirocket_reference
from selfsup.evaluate.plan import Plan, PlanBar, Unit
from selfsup.evaluate.probes import stratified_split
from selfsup.evaluate.protocol import baseline_values, check_matches, load_labelled, reader_config
from selfsup.evaluate.quality import alignment, collapse_signals, quality_metrics
from selfsup.evaluate.scores import (  # moved there; re-exported here
    macro_f1,
    probe_subset,
    spread,
    summarise_point,
)
from selfsup.methods import METHODS
from selfsup.models import build_encoder
from selfsup.run import RunDir, as_run, load_encoder

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
EMBEDDINGS_FILE = "embeddings_sample.npz"  # test-split features for the report's 2-D map
SUBSETS_FILE = "sweep/label_subsets.npz"  # the rows of --data each point used, for audits
BASELINE_RECORD = "result.json"  # in sweep/baseline-<budget>-seed<k>/, with its key
FINETUNE_RECORD = "finetune.json"  # in sweep/finetune-<budget>-seed<k>/, with its key




# ---------------------------------------------------------------------------------------------
# The supervised baseline per point


def kept_result(record: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The result an earlier sitting kept in ``record`` for ``key``; None when there is none
    (or it was kept for another key: other labels, seed, budget or weights)."""
    if record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return saved["result"]
    return None


def train_baseline(
    run: RunDir,
    pretrain_config: dict[str, Any],
    spec: dict[str, Any],
    train: Any,
    test: Any,
    *,
    minutes: float | None,
    steps: int | None,
    seed: int,
    folder: Path,
    key: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """The run's supervised method from scratch on ``train`` (one label subset); scored on test.

    Trained by the same engine with the run's encoder, options, precision, batch size (capped by
    the subset's size) and learning rate. The result is kept in ``folder/result.json`` with its
    key, and reused when the same point is asked for again; the checkpoints are removed. An
    unfinished baseline of the same key (a sweep stopped for the night) continues from its last
    checkpoint; any other leftover is removed and the baseline starts afresh.
    """

    record = folder / BASELINE_RECORD
    kept = kept_result(record, key)
    if kept is not None:
        return kept
    started_key = folder / "started.json"  # written atomically, as result.json is
    resume = (RunDir(folder).last_checkpoint.is_file() and started_key.is_file()
              and json.loads(started_key.read_text(encoding="utf-8")) == key)
    if not resume:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        atomic.write_json(started_key, key)
    else:
        log.info("sweep: continuing the unfinished baseline in %s", folder)

    values = {**baseline_values(pretrain_config, train, minutes, seed, progress),
              "steps": steps, "monitor_size": 0}
    config = build_config({k: v for k, v in values.items() if v is not None})
    started = time.monotonic()
    trained, summary = fit(config, train, RunDir(folder), resume=resume)
    trained.eval()
    precision = config.precision
    features = torch.from_numpy(extract_features(trained.encoder, test, precision=precision))
    with torch.no_grad():
        predicted = trained.classifier(features.to(next(trained.classifier.parameters()).dtype))
    predicted = predicted.argmax(1).numpy()
    result = {
        "accuracy": float((predicted == test.labels).mean()),
        "macro_f1": macro_f1(test.labels, predicted),
        "minutes": minutes,
        "steps": summary["steps"],
        "train_seconds": summary.get("train_seconds"),  # measured: what the verdict states
        "seconds": time.monotonic() - started,
        "images_per_s": summary.get("images_per_s"),
        "resumed": resume,  # then "seconds" counts this sitting only
    }
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # only the score is kept
    atomic.write_json(record, {"key": key, "result": result})
    return result


def untrained_std_ratio(spec: dict[str, Any], data: Any, precision: str, *,
                        rows: int = 512, seed: int = 0) -> float:
    """The std ratio of the run's architecture at random init, on up to ``rows`` test inputs.

    The start a collapse is a fall from (quality.collapse_threshold): an untrained series
    encoder's embeddings already share a large common part, so a fixed 0.1 would call healthy
    series runs collapsed.
    """

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = build_encoder(spec["name"], **spec["options"]).eval()
    picked = np.sort(np.random.default_rng(seed).permutation(len(data))[:rows])
    features = extract_features(encoder, data.subset(picked, "untrained reference"),
                                precision=precision)
    return collapse_signals(torch.from_numpy(features))["std_ratio"]


@torch.inference_mode()
def view_alignment(
    encoder: torch.nn.Module, data: Any, augment_options: dict[str, Any], precision: str,
    *, rows: int = 256, seed: int = 0,
) -> float | None:
    """Wang & Isola's alignment of two augmented views of up to ``rows`` test images.

    The views come from the run's own (resolved) augmentation recipe in config.yaml, so
    "positive pair" means what the pre-training meant by it. Image runs only: None otherwise.
    """
    if getattr(data, "modality", None) != "image" or not augment_options:
        return None
    fields = ImageAugmentConfig.__dataclass_fields__
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in augment_options.items()
              if k in fields}
    augment = BatchedImageAugment(ImageAugmentConfig(**values))
    generator = torch.Generator().manual_seed(seed)
    picked = np.sort(np.random.default_rng(seed).permutation(len(data))[:rows])
    images = data.inputs(picked)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    was_training = encoder.training
    encoder.eval()
    try:
        views = [augment(images, generator) for _ in range(2)]
        with autocast:
            z1, z2 = (encoder(v).float() for v in views)
    finally:
        encoder.train(was_training)
    return alignment(z1, z2)


def _finetune(encoder: torch.nn.Module, spec: dict[str, Any], train: Any, test: Any,
              config: FinetuneConfig, folder: Path, key: dict[str, Any],
              bar: PlanBar, where: str) -> dict[str, Any]:
    """The pre-trained encoder fine-tuned end to end on one label subset for the config's
    minutes, and the same network from scratch for exactly as many steps
    (:func:`scratch_recipe`). Kept in ``folder`` with ``key`` and reused, so that
    a sweep of many hours may stop and go on, as its baselines do."""
    if spec.get("modality", "image") != "image":
        raise SelfsupError("the sweep's fine-tuning handles image encoders only for now")
    kept = folder / FINETUNE_RECORD
    earlier = kept_result(kept, key)
    if earlier is not None:
        bar.done()  # both of the plan's fine-tuning units
        bar.done()
        return earlier
    scores: dict[str, Any] = {}
    bar.start(f"fine-tuning, {where}")
    scores["finetune"] = _scores(finetune(copy.deepcopy(encoder).train(), train, test, config))
    bar.done()
    bar.start(f"fine-tuning from scratch, {where}")
    recipe = scratch_recipe(config, scores["finetune"]["steps"])
    scores["finetune_scratch"] = _scores(finetune(from_scratch(spec).train(), train, test,
                                                  recipe))
    bar.done()
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_json(kept, {"key": key, "result": scores})
    return scores


def _scores(result: dict[str, Any]) -> dict[str, Any]:
    """What a sweep point keeps of one fine-tuning."""
    return {"accuracy": result["accuracy"], "macro_f1": None, "steps": result["steps"],
            "seconds": result["seconds"], "val_accuracy": result["val_accuracy"]}


def _kept_units(folder: Path, units: list[tuple], finetune_minutes: float | None,
                minutes: float | None, steps: int | None) -> list[Unit]:
    """The plan's units whose results an earlier sitting kept in ``folder`` for these keys
    (``units``: per point its budget, seed, rows, fine-tuning key and baseline key)."""
    kept: list[Unit] = []
    for budget, seed, _, tune, base in units:
        name = f"{budget.tag}-seed{seed}"
        if tune is not None and kept_result(folder / f"finetune-{name}" / FINETUNE_RECORD,
                                            tune) is not None:
            kept += [Unit("fine-tuning", finetune_minutes),
                     Unit("from-scratch fine-tuning", finetune_minutes)]
        if base is not None and kept_result(folder / f"baseline-{name}" / BASELINE_RECORD,
                                            base) is not None:
            kept.append(Unit("supervised baseline", minutes, f"{steps} steps" if steps else None))
    return kept


# ---------------------------------------------------------------------------------------------
# The sweep


def _baseline_method(baseline: bool, pretrain_config: dict[str, Any], spec: dict[str, Any],
                     modality: str) -> tuple[bool, str | None]:
    """Whether a baseline can be trained for this run's method, and a note when it cannot."""
    if not baseline:
        return False, None
    name = METHODS.get(pretrain_config.get("method", spec.get("method", "simclr")))
    if name.baseline_method is not None:
        return True, None
    note = f"no supervised baseline method for {modality} runs yet"  # e.g. text
    log.warning("sweep: %s; probes only", note)
    return False, note


def sweep_plan(budgets: int, seeds: int, *, minutes: float | None, steps: int | None,
               finetune_minutes: float | None, minirocket: bool = False) -> Plan:
    """What :func:`sweep` will run: features once, then per budget and seed the probes,
    MiniRocket (series), the fine-tuning and the baseline (``minutes`` and ``steps`` None: no
    baseline)."""
    plan = Plan(budgets, seeds)
    plan.add("features")
    for _ in range(budgets * seeds):
        plan.add("probes")
        if minirocket:
            plan.add("MiniRocket reference")
        if finetune_minutes is not None:
            plan.add("fine-tuning", finetune_minutes)
            plan.add("from-scratch fine-tuning", finetune_minutes)
        if minutes is not None or steps is not None:
            plan.add("supervised baseline", minutes,
                     f"{steps} step{'s' if steps != 1 else ''}" if steps else None)
    return plan


def sweep(
    run_path: str | Path,
    data: str,
    test: str | None = None,
    *,
    fractions: str | list[float] | None = None,
    labels_per_class: str | list[int] | None = None,
    seeds: int = 3,
    baseline: bool = True,
    baseline_minutes: float | None = None,
    baseline_steps: int | None = None,
    finetune_minutes: float | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    skip_bad: bool = False,
    progress: bool = True,
    cache_dir: str | None = None,
    data_options: dict[str, Any] | None = None,
    test_options: dict[str, Any] | None = None,
    compile: str = "auto",
    finetune_head: str = IMAGE_HEAD_INIT,
) -> dict[str, Any]:
    """Run the label-efficiency sweep for the run's encoder; write and return ``sweep.json``.

    Without ``test`` a stratified ``test_fraction`` of ``data`` (seed 0, the same for every seed
    of the sweep) is the test split; the label subsets come from the rest. The baseline budget
    per point is ``baseline_minutes`` (default: the pre-training's wall-clock time) and, if
    given, ``baseline_steps``, whichever is reached first. With ``finetune_minutes`` (image
    runs), each point also fine-tunes a copy of the encoder on the subset for that long
    (selfsup/evaluate/finetune.py; accuracy only). ``compile`` (auto|on|off): the feature
    extraction's and fine-tuning's torch.compile (selfsup/compiling.py).
    """
    budgets = parse_budgets(fractions, labels_per_class)
    if int(seeds) < 1:
        raise SelfsupError(f"--seeds must be at least 1, got {seeds}")
    if baseline_minutes is not None and not baseline_minutes > 0:
        raise SelfsupError(f"--baseline-minutes must be positive, got {baseline_minutes}")
    run = as_run(run_path)
    encoder, spec = load_encoder(run)
    # A kept fine-tuning is reused only for these weights (a run folder may be rebuilt from a
    # kept copy, as benchmarks/cifar10_sweep.py does across machines).
    weights_digest = hashlib.sha256(run.encoder_weights.read_bytes()).hexdigest()[:16]
    pretrain_config = run.read_config()
    summary = run.read_summary()
    check_writable(run.path, "sweep.json and the baselines")
    modality = spec.get("modality", "image")
    reader = reader_config(pretrain_config, spec, skip_bad=skip_bad, progress=progress,
                           cache_dir=cache_dir,
                           data_options=data_options)
    test_reader = reader_config(pretrain_config, spec, skip_bad=skip_bad, progress=progress,
                                cache_dir=cache_dir,
                                data_options={**(data_options or {}), **(test_options or {})})
    started = time.monotonic()
    baseline, baseline_note = _baseline_method(baseline, pretrain_config, spec, modality)
    minutes = baseline_minutes
    if minutes is None and baseline_steps is None:
        minutes = summary["train_seconds"] / 60
    plan = sweep_plan(len(budgets), int(seeds), minutes=minutes if baseline else None,
                      steps=baseline_steps if baseline else None,
                      finetune_minutes=finetune_minutes, minirocket=modality == "series")
    plan.announce()

    labelled = load_labelled(data, modality, reader)
    check_matches(labelled, spec)
    if test is None:
        pool_idx, test_idx = stratified_split(labelled.labels, test_fraction, 0)
        subsets = {"test": test_idx}
        train = labelled.subset(pool_idx, f"{data} (train part)")
        test_data = labelled.subset(test_idx, f"{data} (held-out {test_fraction:.0%})")
        test_source = f"{test_fraction:.0%} of {data}, stratified, seed 0"
    else:
        train = labelled
        pool_idx = np.arange(len(labelled))
        subsets = {}  # the test rows are those of the --test data
        test_data = load_labelled(test, modality, test_reader)
        check_matches(test_data, spec)
        test_source = test
    train_y, test_y = np.asarray(train.labels), np.asarray(test_data.labels)

    # Every point's label subset and the keys its kept results must match; what an earlier
    # sitting finished is said before the hours start, so a resumed sweep's plan reads true.
    units = []
    for budget in budgets:
        for seed in range(int(seeds)):
            rows = label_subset(train_y, budget, seed)
            common = {"train": train.source, "test": test_source, "budget": budget.name,
                      "seed": seed}
            tune = None if finetune_minutes is None else {
                **common, "rows_sum": int(rows.sum()), "num_labels": int(len(rows)),
                "minutes": finetune_minutes, "scratch": "the pre-trained run's steps",
                "head": finetune_head, "encoder": weights_digest}
            base = None if not baseline else {
                **common, "num_labels": int(len(rows)), "minutes": minutes,
                "steps": baseline_steps, "rows_sum": int(rows.sum())}
            units.append((budget, seed, rows, tune, base))
    folder = run.path / "sweep"
    plan.announce_kept(_kept_units(folder, units, finetune_minutes, minutes, baseline_steps))

    precision = pretrain_config.get("precision", "bf16")
    with PlanBar(plan, progress) as bar:  # its units run without bars of their own
        bar.start("features")
        train_x = extract_features(encoder, train, precision=precision, compile=compile)
        test_x = extract_features(encoder, test_data, precision=precision, compile=compile)
        bar.done()
        feature_seconds = time.monotonic() - started
        points = []
        for budget in budgets:
            runs = []
            for _, seed, rows, tune, base in (u for u in units if u[0] is budget):
                subsets[f"{budget.tag}_seed{seed}"] = pool_idx[rows]
                where = f"{budget.name} labels, seed {seed}"
                bar.start(f"probes, {where}")
                entry: dict[str, Any] = {
                    "seed": seed,
                    "num_labels": int(len(rows)),
                    **probe_subset(train_x[rows], train_y[rows], test_x, test_y, seed,
                                   val_fraction),
                }
                bar.done()
                if modality == "series":  # the cheap reference, on the same label subset
                    bar.start(f"MiniRocket reference, {where}")
                    entry["minirocket"] = minirocket_reference(
                        train.subset(rows, train.source), test_data, seed=seed)
                    bar.done()
                if finetune_minutes is not None:
                    config = FinetuneConfig(minutes=finetune_minutes, seed=seed,
                                            precision=precision, compile=compile,
                                            head_init=finetune_head)
                    entry.update(_finetune(
                        encoder, spec, train.subset(rows, train.source), test_data, config,
                        folder / f"finetune-{budget.tag}-seed{seed}", tune, bar, where))
                if base is not None:
                    bar.start(f"supervised baseline, {where}")
                    entry["supervised"] = train_baseline(
                        run, pretrain_config, spec,
                        train.subset(rows, f"{train.source}, {where}"),
                        test_data, minutes=minutes, steps=baseline_steps, seed=seed,
                        folder=folder / f"baseline-{budget.tag}-seed{seed}",
                        key=base, progress=False,
                    )
                    bar.done()
                runs.append(entry)
                log.info("sweep %s seed %d (%d labels): linear %.4f, kNN %.4f%s", budget.name,
                         seed, len(rows), entry["linear"]["accuracy"], entry["knn"]["accuracy"],
                         f", supervised {entry['supervised']['accuracy']:.4f}" if baseline
                         else "")
            points.append({
                "budget": budget.name,
                "fraction": budget.fraction,
                "labels_per_class": budget.per_class,
                "num_labels": spread([r["num_labels"] for r in runs])["mean"],
                "runs": runs,
                "summary": summarise_point(runs),
            })

    sample = np.random.default_rng(0).permutation(len(test_x))[:2000]
    with atomic.atomic_path(run.path / EMBEDDINGS_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, features=test_x[sample], labels=test_y[sample])
    with atomic.atomic_path(run.path / SUBSETS_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **subsets)
    untrained = untrained_std_ratio(spec, test_data, precision)
    quality = {k: v for k, v in quality_metrics(test_x, reference=untrained).items()
               if k != "per_dimension_std"}
    aligned = view_alignment(encoder, test_data, pretrain_config.get("augment_options") or {},
                             precision)
    if aligned is not None:
        quality["alignment"] = aligned
    result = {
        "run": str(run.path),
        "method": spec.get("method"),
        "encoder": spec.get("name"),
        "modality": modality,
        "train_data": data,
        "test_data": test_source,
        "num_train_pool": int(len(train_y)),
        "num_test": int(len(test_y)),
        "num_classes": int(len(np.unique(np.concatenate([train_y, test_y])))),
        "chance_accuracy": float(np.bincount(test_y).max() / len(test_y)),
        "seeds": int(seeds),
        "val_fraction": val_fraction,
        "pretrain_seconds": summary.get("train_seconds"),
        "baseline": ({"minutes": minutes, "steps": baseline_steps} if baseline else None),
        "baseline_note": baseline_note,
        "finetune_minutes": finetune_minutes,
        "feature_seconds": feature_seconds,
        "seconds": time.monotonic() - started,
        "quality": quality,
        "label_subsets": SUBSETS_FILE,
        "points": points,
    }
    atomic.write_json(run.path / SWEEP_FILE, result)
    return result


__all__ = ["LabelBudget", "label_subset", "macro_f1", "parse_budgets", "probe_subset", "spread",
           "summarise_point", "sweep", "sweep_plan", "train_baseline"]
