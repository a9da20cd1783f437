"""`selfsup evaluate`: does the pre-trained encoder beat training on the labels alone?

Frozen features are extracted once; a linear probe and a kNN probe are fitted on them with their
hyper-parameters chosen on a validation split carved from the labelled training data. The
reference is the supervised baseline: the same encoder architecture trained from scratch on the
same labels, by the same engine, for the same CPU time as the pre-training took. Series runs
also get MiniRocket (evaluate/minirocket.py), the cheap reference a practitioner fits first. The
test split is touched only to score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup import atomic
from selfsup.config import PretrainConfig, build_config
from selfsup.data.base import TrainData, load_data
from selfsup.engine import fit
from selfsup.errors import SelfsupError
from selfsup.evaluate.checks import check_writable
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.finetune import IMAGE_HEAD_INIT, evaluate_finetune
from selfsup.evaluate.minirocket import minirocket_reference
from selfsup.evaluate.plan import Plan, PlanBar, format_minutes
from selfsup.evaluate.probes import knn_probe, linear_probe, stratified_split
from selfsup.methods import METHODS
from selfsup.run import RunDir, as_run, load_encoder


def subset(data: TrainData, indices: np.ndarray, source: str) -> TrainData:
    """The data restricted to ``indices`` (in memory for images; see each reader)."""
    return data.subset(indices, source)


def reader_config(
    pretrain_config: dict[str, Any], spec: dict[str, Any], **overrides: Any
) -> PretrainConfig:
    """The run's reader settings (image size, data options) for reading evaluation data."""
    values = {
        "method": pretrain_config.get("method", spec.get("method", "simclr")),
        "encoder": spec.get("name"),
        "image_size": spec.get("image_size"),
        "data_options": pretrain_config.get("data_options", {}),
    }
    extra = overrides.pop("data_options", None) or {}
    values["data_options"] = {**values["data_options"], **extra}  # e.g. split=test for --test
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(values)


def load_labelled(path: str, modality: str, config: PretrainConfig) -> TrainData:
    """Labelled data of the run's modality, read the way the run's training data was read."""
    data = load_data(modality, path, config)
    if data.labels is None:
        raise SelfsupError(
            f"{path} has no labels: evaluation needs labelled data (class sub-folders, an npz "
            "with 'labels', a label column...)"
        )
    return data


def check_matches(data: TrainData, spec: dict[str, Any]) -> None:
    """Refuse data whose shape differs from what the encoder was trained on (e.g. channels)."""
    for key, value in data.encoder_spec().items():
        if key in spec and spec[key] != value:
            raise SelfsupError(
                f"{data.source} has {key} {value}; the run's encoder expects {spec[key]}"
            )


def evaluate_run(
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
    compile: str = "auto",
    finetune_head: str = IMAGE_HEAD_INIT,
) -> dict[str, Any]:
    """Probe an image or series run's frozen encoder and train the supervised baseline; write
    ``eval.json``. :func:`selfsup.evaluate.dispatch.evaluate` sends text and CLIP runs to their
    own protocols and everything else here.

    With ``finetune_minutes``, also the fine-tuning protocol (selfsup/evaluate/finetune.py).
    ``data_options`` change the run's reader options for both files (``test_options`` for
    ``test`` only), e.g. ``{"split": "test"}`` to read a UCR file's test half. ``compile``
    (auto|on|off): torch.compile the feature extraction and fine-tuning
    (selfsup/compiling.py says where ``auto`` compiles).
    """

    run = as_run(run_path)
    check_writable(run.path, "eval.json and the baseline")  # now, not after the baseline
    encoder, spec = load_encoder(run)
    pretrain_config = run.read_config()
    summary = run.read_summary()
    minutes = baseline_minutes or summary["train_seconds"] / 60
    modality = spec.get("modality", "image")
    plan = evaluation_plan(minutes if baseline else None, finetune_minutes, finetune_fractions,
                           baseline, minirocket=modality == "series")
    plan.announce()
    reader = reader_config(
        pretrain_config, spec, skip_bad=skip_bad, progress=progress, cache_dir=cache_dir,
        data_options=data_options,
    )
    test_reader = reader_config(
        pretrain_config, spec, skip_bad=skip_bad, progress=progress, cache_dir=cache_dir,
        data_options={**(data_options or {}), **(test_options or {})},
    )
    labelled = load_labelled(data, modality, reader)
    check_matches(labelled, spec)
    if test is None:
        train_idx, test_idx = stratified_split(labelled.labels, test_fraction, seed)
        train = subset(labelled, train_idx, f"{data} (train part)")
        test_data = subset(labelled, test_idx, f"{data} (held-out {test_fraction:.0%})")
        test_source = f"{test_fraction:.0%} of {data}, stratified, seed {seed}"
    else:
        train = labelled
        test_data = load_labelled(test, modality, test_reader)
        check_matches(test_data, spec)
        test_source = test
        if getattr(test_data, "class_names", None) != getattr(train, "class_names", None):
            raise SelfsupError(
                f"{test} has classes {test_data.class_names}, {data} has {train.class_names}"
            )

    with PlanBar(plan, progress) as bar:  # its units run without bars of their own
        result = _measure(run, spec, encoder, summary, pretrain_config, train, test_data,
                          data=data, test_source=test_source, baseline=baseline,
                          minutes=minutes, val_fraction=val_fraction, seed=seed,
                          finetune_minutes=finetune_minutes,
                          finetune_fractions=finetune_fractions, compile=compile,
                          finetune_head=finetune_head, bar=bar)
    atomic.write_json(run.eval, result)
    return result


def evaluation_plan(baseline_minutes: float | None, finetune_minutes: float | None,
                    finetune_fractions: tuple[float, ...], baseline: bool,
                    minirocket: bool = False) -> Plan:
    """What :func:`evaluate` will run: the probes, MiniRocket for series, the baseline, the
    fine-tunings."""
    plan = Plan()
    plan.add("probes")
    if minirocket:
        plan.add("MiniRocket reference")
    if baseline_minutes is not None:
        plan.add("supervised baseline", baseline_minutes)
    if finetune_minutes is not None:
        for _ in finetune_fractions:
            plan.add("fine-tuning", finetune_minutes)
            if baseline:
                plan.add("from-scratch fine-tuning", finetune_minutes)
    return plan


def _measure(run: RunDir, spec: dict[str, Any], encoder: torch.nn.Module,
             summary: dict[str, Any], pretrain_config: dict[str, Any], train: TrainData,
             test_data: TrainData, *, data: str, test_source: str, baseline: bool,
             minutes: float, val_fraction: float, seed: int, finetune_minutes: float | None,
             finetune_fractions: tuple[float, ...], compile: str, finetune_head: str,
             bar: PlanBar) -> dict[str, Any]:
    """The evaluation's long part, unit by unit of its plan; returns eval.json's record."""
    precision = pretrain_config.get("precision", "bf16")
    bar.start("features and probes")
    train_x = extract_features(encoder, train, precision=precision, compile=compile)
    test_x = extract_features(encoder, test_data, precision=precision, compile=compile)
    fit_idx, val_idx = stratified_split(train.labels, val_fraction, seed)
    split = (
        train_x[fit_idx], train.labels[fit_idx],
        train_x[val_idx], train.labels[val_idx],
        test_x, test_data.labels,
    )
    linear = linear_probe(*split, seed=seed)
    knn = knn_probe(*split)
    bar.done()

    result: dict[str, Any] = {
        "run": str(run.path),
        "method": spec["method"],
        "encoder": spec["name"],
        "train_data": data,
        "test_data": test_source,
        "num_train": len(train),
        "num_val_for_probe_choices": len(val_idx),
        "num_test": len(test_data),
        "num_classes": train.num_classes,
        "chance_accuracy": float(np.bincount(test_data.labels).max() / len(test_data)),
        "pretrain_seconds": summary["train_seconds"],
        "linear": linear.as_dict(),
        "knn": knn.as_dict(),
    }
    if train.modality == "series":  # on the whole labelled train part; ridge alpha by its LOO-CV
        bar.start("MiniRocket reference")
        result["minirocket"] = minirocket_reference(train, test_data, seed=seed)
        bar.done()
    if baseline:
        bar.start(f"supervised baseline ({format_minutes(minutes)})")
        result["supervised"] = supervised_baseline(
            run, pretrain_config, train, test_data, minutes, seed, progress=False
        )
        bar.done()
        result["linear_over_supervised"] = (
            linear.accuracy / result["supervised"]["accuracy"]
            if result["supervised"]["accuracy"] > 0
            else None
        )
    if finetune_minutes is not None:
        result["finetune"] = evaluate_finetune(
            encoder, spec, train, test_data, minutes=finetune_minutes,
            fractions=finetune_fractions, seed=seed, baseline=baseline, precision=precision,
            progress=False, compile=compile, head_init=finetune_head, bar=bar,
        )
    return result


def baseline_values(
    pretrain_config: dict[str, Any],
    train: TrainData,
    minutes: float | None,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """The supervised baseline's config: the run's method's baseline, with the run's encoder,
    data options, precision, batch (at most the labelled set) and lr; shared by the sweep."""

    method = METHODS.get(pretrain_config.get("method", "simclr"))
    if method.baseline_method is None:
        raise SelfsupError(f"method {method.__name__} has no supervised baseline; evaluate with "
                           "--no-baseline")
    return {
        "method": method.baseline_method,
        "data": train.source,
        "minutes": minutes,
        "batch_size": min(int(pretrain_config.get("batch_size", 256)), len(train)),
        "encoder": pretrain_config.get("encoder") or method.default_encoder,
        "encoder_options": pretrain_config.get("encoder_options", {}),
        "data_options": pretrain_config.get("data_options", {}),
        "precision": pretrain_config.get("precision", "bf16"),
        "channels_last": pretrain_config.get("channels_last", True),
        # The run's engine: a compiled run's baseline compiles too (auto for older runs).
        "compile": pretrain_config.get("compile", "auto"),
        "lr": pretrain_config.get("lr", 2e-3),
        "seed": seed,
        "progress": progress,
        "checkpoint_minutes": max(2.0, (minutes or 10.0) / 5),
    }


def supervised_baseline(
    run: RunDir,
    pretrain_config: dict[str, Any],
    train: TrainData,
    test: TrainData,
    minutes: float,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """The same encoder from scratch on the labels for ``minutes``; its test accuracy.

    Kept in ``<run>/baseline/``; a finished baseline with the same data, budget and seed is
    reused rather than retrained.
    """

    key = {
        "train": train.source,
        "num_train": len(train),
        "test": test.source,
        "minutes": round(minutes, 3),
        "seed": seed,
        "encoder": pretrain_config.get("encoder"),
        "encoder_options": pretrain_config.get("encoder_options", {}),
    }
    record = run.path / "baseline.json"
    if record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return saved["result"]

    config = build_config(
        baseline_values(pretrain_config, train, minutes, seed, progress)
    )
    baseline_run = RunDir(run.path / "baseline")
    baseline_run.path.mkdir(parents=True, exist_ok=True)
    trained, summary = fit(config, train, baseline_run)
    trained.eval()
    features = torch.from_numpy(
        extract_features(trained.encoder, test, precision=config.precision)
    )
    with torch.no_grad():
        predicted = trained.classifier(features).argmax(1).numpy()
    result = {
        "accuracy": float((predicted == test.labels).mean()),
        "minutes": minutes,
        "train_seconds": summary["train_seconds"],  # measured: what the verdict states
        "steps": summary["steps"],
        "images_per_s": summary["images_per_s"],
        "run": str(baseline_run.path),
    }
    atomic.write_json(record, {"key": key, "result": result})
    return result
