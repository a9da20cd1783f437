"""Text downstream evaluation: is continued (or from-scratch) pre-training worth it for my task?

For a text encoder (a run whose exported encoder is ``hf_text``, or a plain Hugging Face folder)
and a labelled training and test set (selfsup/data/labelled_text.py), at each label budget
(``--labels-per-class 10,100,all`` or ``--fractions``; one stratified subset per budget, drawn
from the training data only):

- **sentence embeddings**: mean-pooled token states (Reimers & Gurevych 2019), texts cut to the
  model's positions (``max_length``) with the number cut logged and recorded, never a crash;
- **linear probe and kNN** on those cached features, hyper-parameters chosen on a validation
  carve of the subset (selfsup/evaluate/probes.py);
- **fine-tuning** of the whole encoder plus a linear head (``protocol="finetune"``; the recipe of
  Devlin et al. 2019 at CPU scale: AdamW, lr 5e-5, weight decay 0.01, linear warm-up then
  cosine decay, batch 16), keeping the epoch with the best accuracy on a validation carve;
  the head starts near zero, or (``finetune_head="probe"``) as a linear probe of the frozen
  features (LP-FT, Kumar et al. 2022);

against (a) **the same architecture from scratch**, fine-tuned on the same labels with the same
budget (it needs a larger learning rate, 5e-4, having nothing pre-trained to protect), and (b)
**the starting model** before continued pre-training (the run's recorded ``init`` folder), when
there is one, probed and fine-tuned the same way. The test split only scores. Results go to
``eval.json`` with the same top-level ``linear`` / ``knn`` / ``supervised`` entries as image
evaluations (the largest budget's), so ``selfsup report`` reads them, plus one row per budget.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup import atomic
from selfsup.config import inference_precision
from selfsup.data.labelled_text import LabelledText, read_with_options
from selfsup.engine import build_trainer
from selfsup.errors import SelfsupError
from selfsup.evaluate.checks import check_csv_rows, check_writable
from selfsup.evaluate.finetune import (
    HEAD_INITS,
    FinetuneConfig,
    FinetuneModule,
    fit_keeping_best,
)
from selfsup.evaluate.plan import Plan, PlanBar
from selfsup.evaluate.probes import linear_head, stratified_split
from selfsup.evaluate.quality import quality_metrics
from selfsup.evaluate.sweep import (
    EMBEDDINGS_FILE,
    SWEEP_FILE,
    LabelBudget,
    label_subset,
    macro_f1,
    parse_budgets,
    probe_subset,
    spread,
    summarise_point,
)
from selfsup.text_models import (  # re-exported: the evaluation's public names
    TextModel,
    Tokenized,
    embed_texts,
    is_hf_folder,
    is_text_target,
    load_folder_model,
    load_run_model,
    load_text_model,
    run_init,
    text_features,
    tokenize_texts,
)

log = logging.getLogger("selfsup")

#: Fine-tuning recipe for pre-trained text encoders (BERT's: Devlin et al. 2019, appendix A.3).
TEXT_FINETUNE = {"batch_size": 16, "lr": 5e-5, "weight_decay": 0.01, "layer_decay": None,
                 "warmup_fraction": 0.1, "label_smoothing": 0.0, "val_fraction": 0.1}
#: A randomly initialised transformer needs a larger step than a pre-trained one.
SCRATCH_LR = 5e-4
#: Validation carves larger than this only cost time: the carve is capped at this many texts.
MAX_VAL = 500


# ---------------------------------------------------------------------------------------------
# Fine-tuning


class TextClassifier(nn.Module):
    """Text encoder + linear head on the mean-pooled embedding (head starts near zero)."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(encoder.embed_dim), num_classes)
        nn.init.normal_(self.head.weight, std=0.02)  # BERT's initialiser range
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(input_ids, attention_mask)))


@dataclass
class TextSplit:
    """Tokens and labels of one split, as the fine-tuning loop consumes them."""

    tokens: Tokenized
    labels: np.ndarray
    pad_id: int

    def subset(self, rows: np.ndarray) -> TextSplit:
        kept = Tokenized([self.tokens.ids[int(i)] for i in rows], self.tokens.max_length, 0)
        return TextSplit(kept, self.labels[rows], self.pad_id)


@torch.no_grad()
def classifier_predictions(
    model: nn.Module, split: TextSplit, precision: str = "32", batch_size: int = 64
) -> np.ndarray:
    """Predicted classes of ``split`` (eval mode; the mode is restored)."""
    order = np.argsort([len(x) for x in split.tokens.ids], kind="stable")
    predicted = np.zeros(len(split.labels), dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, mask = split.tokens.batch(rows, split.pad_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                predicted[rows] = model(ids, mask).argmax(1).numpy()
    finally:
        model.train(was_training)
    return predicted


class TextFinetuneModule(FinetuneModule):
    """The image fine-tuning module's schedule, budget and best-epoch keeping, for token batches
    (no augmentation: text has no cheap label-preserving one)."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        loss = F.cross_entropy(
            logits.float(), batch["labels"], label_smoothing=self.config.label_smoothing
        )
        self.log("finetune/loss", loss, prog_bar=True)
        return loss

    def keep_if_best(self, epoch: int) -> None:
        predicted = classifier_predictions(self.model, self.val_data, self.config.precision)
        accuracy = float((predicted == self.val_data.labels).mean())
        self.history.append(accuracy)
        self.checked_at_step = self.trainer.global_step
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = accuracy, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())


def text_finetune_config(**changes: Any) -> FinetuneConfig:
    """The text recipe (TEXT_FINETUNE) with ``changes``; precision 32 unless bf16 is native."""
    values = {**TEXT_FINETUNE, "precision": inference_precision("auto"), **changes}
    return FinetuneConfig(**values)


def probe_head(model: TextClassifier, fit: TextSplit, config: FinetuneConfig) -> dict[str, Any]:
    """Set ``model.head`` to a linear probe (probes.linear_head, C by 5-fold cross-validation)
    of the frozen encoder's mean-pooled features of ``fit``; returns how it was chosen."""
    features = text_features(model.encoder, fit.tokens, fit.pad_id, precision=config.precision)
    weight, bias, chosen = linear_head(features, fit.labels, model.head.out_features,
                                       seed=config.seed)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))
    return chosen


def finetune_text(
    encoder: nn.Module, train: TextSplit, test: TextSplit, num_classes: int,
    config: FinetuneConfig,
) -> dict[str, Any]:
    """Fine-tune ``encoder`` (changed in place) + a new linear head on ``train``; score test.

    A stratified validation carve (``val_fraction``, at most MAX_VAL texts) of ``train`` picks
    the epoch whose weights are kept; the budget is ``minutes`` and/or ``epochs``. With
    ``config.head_init == "probe"`` the head starts as a linear probe of the frozen encoder's
    features of the fine-tuning part (:func:`probe_head`), the validation carve unseen.
    """

    if len(train.labels) < 4:
        raise SelfsupError(f"fine-tuning needs at least 4 labelled texts, got {len(train.labels)}")
    fraction = min(config.val_fraction, MAX_VAL / len(train.labels))
    fit_idx, val_idx = stratified_split(train.labels, fraction, config.seed)
    fit, val = train.subset(fit_idx), train.subset(val_idx)
    batch_size = min(config.batch_size, len(fit_idx))

    def collate(rows: list[int]) -> dict[str, torch.Tensor]:
        ids, mask = fit.tokens.batch(rows, fit.pad_id)
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.from_numpy(fit.labels[np.asarray(rows)])}

    loader = torch.utils.data.DataLoader(
        range(len(fit_idx)), batch_size=batch_size, shuffle=True, drop_last=True,
        collate_fn=collate, generator=torch.Generator().manual_seed(config.seed),
    )
    pl.seed_everything(config.seed, verbose=False)
    model = TextClassifier(encoder.train(), num_classes)
    head = probe_head(model, fit, config) if config.head_init == "probe" else None
    module = TextFinetuneModule(model, config, val, len(loader))
    trainer = build_trainer(
        accelerator=config.accelerator, devices=config.devices, precision=config.precision,
        max_epochs=config.epochs,
        max_time=timedelta(minutes=config.minutes) if config.minutes else None,
        progress=config.progress, gradient_clip_val=1.0,
    )
    seconds = fit_keeping_best(trainer, module, model, loader)
    predicted = classifier_predictions(model, test, config.precision)
    return {
        "accuracy": float((predicted == test.labels).mean()),
        "macro_f1": macro_f1(test.labels, predicted),
        "val_accuracy": module.best_accuracy,
        "chosen_epoch": module.best_epoch,
        "val_history": module.history,
        "steps": trainer.global_step,
        "epochs": trainer.global_step / max(1, len(loader)),
        "seconds": seconds,
        "texts_per_s": trainer.global_step * batch_size / max(seconds, 1e-9),
        "num_train": len(fit_idx),
        "num_val": len(val_idx),
        "num_test": len(test.labels),
        "head": {"init": config.head_init, **(head or {})},
        "config": {k: v for k, v in dataclasses.asdict(config).items()
                   if k not in ("progress", "augment_options")},
    }


# ---------------------------------------------------------------------------------------------
# The protocol


def parse_text_budgets(
    fractions: str | list[float] | None = None, labels_per_class: str | list | None = None
) -> list[LabelBudget]:
    """Budgets as the sweep parses them; ``all`` among the labels per class means every label.
    Neither given: all labels."""
    parts: list[str] = []
    if labels_per_class is not None:
        raw = labels_per_class.split(",") if isinstance(labels_per_class, str) else labels_per_class
        parts = [str(p).strip() for p in raw if str(p).strip()]
    every = any(p.lower() == "all" for p in parts)
    counts = [p for p in parts if p.lower() != "all"]
    budgets: list[LabelBudget] = []
    if fractions is not None or counts:
        budgets = parse_budgets(fractions, counts or None)
    if every or not budgets:
        budgets.append(LabelBudget(fraction=1.0))
    return list(dict.fromkeys(budgets))


def budget_name(budget: LabelBudget) -> str:
    return "all" if budget.fraction == 1.0 else budget.name


def text_plan(budgets: int, seeds: int, *, contenders: int, finetune: bool, baseline: bool,
              minutes: float | None, epochs: int | None) -> Plan:
    """What :func:`evaluate_models` will run: the features of each contender (the model, the
    starting model), then per budget and seed the probes, the fine-tunings and the
    from-scratch baseline, each fine-tuning bounded by ``minutes`` and/or ``epochs``."""
    plan = Plan(budgets, seeds)
    plan.add("features", times=contenders)
    limit = f"{epochs} epoch{'s' if epochs != 1 else ''}" if epochs else None
    for _ in range(budgets * seeds):
        plan.add("probes")
        if finetune:
            plan.add("fine-tuning", minutes, limit)
            if contenders > 1:
                plan.add("starting-model fine-tuning", minutes, limit)
        if baseline:
            plan.add("from-scratch baseline", minutes, limit)
    return plan


def _probe(features: np.ndarray, labels: np.ndarray, rows: np.ndarray, test_x: np.ndarray,
           test_y: np.ndarray, seed: int, val_fraction: float) -> dict[str, Any]:
    return probe_subset(features[rows], labels[rows], test_x, test_y, seed, val_fraction)


def evaluate_models(
    model: TextModel,
    train: LabelledText,
    test: LabelledText,
    *,
    start: TextModel | None = None,
    budgets: list[LabelBudget] | None = None,
    finetune: bool = False,
    baseline: bool = True,
    finetune_minutes: float | None = 5.0,
    finetune_epochs: int | None = None,
    finetune_head: str = "random",
    scratch_lr: float = SCRATCH_LR,
    max_length: int | None = 128,
    batch_size: int = 64,
    seed: int = 0,
    seeds: int = 1,
    val_fraction: float = 0.2,
    progress: bool = False,
    embeddings_out: Path | None = None,
) -> dict[str, Any]:
    """The text protocol for ``model`` (and ``start``, and from scratch) on ``train``/``test``.

    Every budget is run for ``seeds`` label subsets (seeds ``seed``, ``seed + 1``, ...): each
    budget's row holds the first seed's full detail, and under ``runs`` / ``summary`` every
    seed's scores and their mean and spread, in the form of the image sweep (sweep.py), so that
    :func:`text_sweep` turns the record into a ``sweep.json``. Texts are embedded once for all.
    The label-free metrics of the model's test embeddings go to ``quality``; with
    ``embeddings_out``, a sample of those embeddings (for the report's map) is written there.
    Returns the eval.json record (see the module docstring); writes nothing else.
    """
    started = time.monotonic()
    budgets = budgets or [LabelBudget(fraction=1.0)]
    train_y, test_y = np.asarray(train.labels), np.asarray(test.labels)
    num_classes = max(train.num_classes, test.num_classes)
    if len(np.unique(train_y)) < 2:
        raise SelfsupError(f"{train.source}: the labels hold a single class")
    if int(seeds) < 1:
        raise SelfsupError(f"--seeds must be at least 1, got {seeds}")
    if finetune_head not in HEAD_INITS:
        raise SelfsupError(f"--finetune-head must be one of {', '.join(HEAD_INITS)}, "
                           f"not {finetune_head!r}")
    draws = [seed + k for k in range(int(seeds))]
    subsets = {(budget_name(b), s): label_subset(train_y, b, s) for b in budgets for s in draws}
    needed = np.unique(np.concatenate(list(subsets.values())))
    position = np.full(len(train_y), -1, dtype=np.int64)
    position[needed] = np.arange(len(needed))
    needed_texts = [train.texts[i] for i in needed]

    contenders: dict[str, TextModel] = {"model": model}
    if start is not None:
        contenders["start"] = start
    plan = text_plan(len(budgets), len(draws), contenders=len(contenders), finetune=finetune,
                     baseline=baseline, minutes=finetune_minutes, epochs=finetune_epochs)
    plan.announce()
    with PlanBar(plan, progress) as bar:  # its units run without bars of their own
        embeddings: dict[str, dict[str, Any]] = {}
        features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        tokens: dict[str, tuple[Tokenized, Tokenized]] = {}
        for name, contender in contenders.items():
            bar.start(f"features of {contender.source}")
            info: dict[str, Any] = {}
            made: list[tuple[Tokenized, np.ndarray]] = []
            for split, texts in (("train", needed_texts), ("test", test.texts)):
                began = time.monotonic()
                tokenized = tokenize_texts(contender, texts, max_length,
                                           what=f"{split} texts ({name})")
                vectors = text_features(contender.encoder, tokenized, contender.pad_id,
                                        batch_size=batch_size)
                seconds = time.monotonic() - began
                info[split] = {"texts": len(texts), "truncated": tokenized.truncated,
                               "max_length": tokenized.max_length, "seconds": seconds,
                               "texts_per_s": len(texts) / max(seconds, 1e-9)}
                made.append((tokenized, vectors))
            tokens[name] = (made[0][0], made[1][0])
            features[name] = (made[0][1], made[1][1])
            embeddings[name] = info
            bar.done()
            log.info("%s: embedded %d texts at %.1f texts/s (at most %d tokens)", contender.source,
                     len(needed) + len(test_y),
                     (len(needed) + len(test_y)) / max(info["train"]["seconds"]
                                                       + info["test"]["seconds"], 1e-9),
                     info["test"]["max_length"])

        def splits(name: str, pad_id: int, local: np.ndarray) -> tuple[TextSplit, TextSplit]:
            train_tokens, test_tokens = tokens[name]
            return (TextSplit(train_tokens, train_y[needed], pad_id).subset(local),
                    TextSplit(test_tokens, test_y, pad_id))

        base_config = text_finetune_config(minutes=finetune_minutes, epochs=finetune_epochs,
                                           seed=seed, progress=False, head_init=finetune_head)
        # From scratch the features are random: a probe of them is no head start.
        scratch_config = dataclasses.replace(base_config, lr=scratch_lr, head_init="random")
        rows_out = []
        for budget in budgets:
            name = budget_name(budget)
            runs: list[dict[str, Any]] = []
            detail: dict[str, Any] | None = None
            for s in draws:
                rows = subsets[name, s]
                local = position[rows]
                row: dict[str, Any] = {"budget": name, "fraction": budget.fraction,
                                       "labels_per_class": budget.per_class,
                                       "num_labels": int(len(rows))}
                where = f"{name} labels, seed {s}"
                bar.start(f"probes, {where}")
                for kind in contenders:
                    train_x, test_x = features[kind]
                    row[kind] = _probe(train_x, train_y[needed], local, test_x, test_y, s,
                                       val_fraction)
                bar.done()
                if finetune:
                    for kind, contender in contenders.items():
                        tr, te = splits(kind, contender.pad_id, local)
                        log.info("fine-tuning %s on %s", contender.source, where)
                        bar.start(f"fine-tuning {kind}, {where}")
                        row[kind]["finetune"] = finetune_text(
                            copy.deepcopy(contender.encoder), tr, te, num_classes,
                            dataclasses.replace(base_config, seed=s))
                        bar.done()
                if baseline:
                    fresh = model.fresh(s)
                    tr, te = splits("model", fresh.pad_id, local)  # the same tokenizer
                    log.info("training the same architecture from scratch on %s", where)
                    bar.start(f"from scratch, {where}")
                    row["scratch"] = {"finetune": finetune_text(
                        fresh.encoder, tr, te, num_classes,
                        dataclasses.replace(scratch_config, seed=s))}
                    bar.done()
                row["gains"] = _gains(row)
                runs.append(_seed_scores(row, s))
                detail = detail or row  # the first seed's row keeps its full detail
            detail["runs"] = runs
            detail["summary"] = summarise_point(runs)
            rows_out.append(detail)

    test_x = features["model"][1]
    if embeddings_out is not None:
        sample = np.random.default_rng(0).permutation(len(test_x))[:2000]
        with atomic.atomic_path(embeddings_out) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, features=test_x[sample], labels=test_y[sample])
    last = rows_out[-1]
    result: dict[str, Any] = {
        "method": None,
        "encoder": "hf_text",
        "modality": "text",
        "model": model.source,
        "start_model": start.source if start is not None else None,
        "train_data": train.source,
        "test_data": test.source,
        "num_train": int(len(train_y)),
        "num_test": int(len(test_y)),
        "num_classes": int(num_classes),
        "class_names": train.class_names,
        "chance_accuracy": float(np.bincount(test_y).max() / len(test_y)),
        "max_length": int(min(max_length or model.max_length, model.max_length)),
        "truncated": {k: {s: v[s]["truncated"] for s in v} for k, v in embeddings.items()},
        "embedding": embeddings,
        "seed": seed,
        "seeds": int(seeds),
        "val_fraction": val_fraction,
        "protocol": "finetune" if finetune else "probes",
        "finetune_config": {**dataclasses.asdict(base_config), "scratch_lr": scratch_lr},
        "budgets": rows_out,
        "quality": {k: v for k, v in quality_metrics(test_x).items() if k != "per_dimension_std"},
        # The largest budget's scores, where image evaluations keep theirs (for the report).
        "budget": last["budget"],
        "linear": last["model"]["linear"],
        "knn": last["model"]["knn"],
    }
    if baseline:
        result["supervised"] = {**last["scratch"]["finetune"],
                                "minutes": finetune_minutes or 0.0,
                                "what": "same architecture from scratch, fine-tuned on the labels"}
        sup = result["supervised"]["accuracy"]
        result["linear_over_supervised"] = result["linear"]["accuracy"] / sup if sup > 0 else None
    result["seconds"] = time.monotonic() - started
    return result


def _seed_scores(row: dict[str, Any], seed: int) -> dict[str, Any]:
    """One seed's scores of the model under the image sweep's protocol names: the probes, its
    fine-tuning, and the from-scratch training as the supervised baseline."""
    model = row["model"]
    scores: dict[str, Any] = {"seed": seed, "num_labels": row["num_labels"],
                              "linear": model["linear"], "knn": model["knn"]}
    keep = ("accuracy", "macro_f1", "steps", "seconds", "val_accuracy")
    if "finetune" in model:
        scores["finetune"] = {k: model["finetune"].get(k) for k in keep}
    if "scratch" in row:
        scores["supervised"] = {k: row["scratch"]["finetune"].get(k) for k in keep}
    if "start" in row:
        scores["start"] = {p: {k: v.get(k) for k in keep} for p, v in row["start"].items()
                           if isinstance(v, dict) and "accuracy" in v}
    return scores


def budget_accuracy(row: dict[str, Any], kind: str, protocol: str) -> dict[str, Any] | None:
    """Mean and spread over seeds of one contender's test accuracy in a budget's row (kind
    'model', 'start' or 'scratch'; protocol 'linear', 'knn' or 'finetune'); None if not run."""
    runs = row.get("runs") or [_seed_scores(row, row.get("seed", 0))]
    values = []
    for scores in runs:
        if kind == "scratch":
            found = scores.get("supervised") if protocol == "finetune" else None
        elif kind == "start":
            found = (scores.get("start") or {}).get(protocol)
        else:
            found = scores.get(protocol)
        if found is None:
            return None
        values.append(found["accuracy"])
    return spread(values)


def text_sweep(result: dict[str, Any]) -> dict[str, Any]:
    """The ``sweep.json`` of a text evaluation: the same record as an image sweep's, so that
    ``selfsup report`` draws the label-efficiency curve and states the verdict unchanged."""
    baseline = result.get("supervised") is not None
    return {
        "run": result.get("run"),
        "method": result.get("method"),
        "encoder": result.get("encoder"),
        "modality": "text",
        "train_data": result["train_data"],
        "test_data": result["test_data"],
        "num_train_pool": result["num_train"],
        "num_test": result["num_test"],
        "num_classes": result["num_classes"],
        "chance_accuracy": result["chance_accuracy"],
        "seeds": result.get("seeds", 1),
        "val_fraction": result["val_fraction"],
        "pretrain_seconds": result.get("pretrain_seconds"),
        "baseline": ({"minutes": result["finetune_config"].get("minutes"),
                      "epochs": result["finetune_config"].get("epochs")} if baseline else None),
        "baseline_note": (None if baseline else "no from-scratch baseline was asked for"),
        "baseline_what": "the same architecture from scratch, fine-tuned on the same labels",
        "points": [{"budget": row["budget"], "fraction": row["fraction"],
                    "labels_per_class": row["labels_per_class"],
                    "num_labels": float(np.mean([r["num_labels"] for r in row["runs"]])),
                    "runs": row["runs"], "summary": row["summary"]}
                   for row in result["budgets"]],
        "quality": result.get("quality"),
    }


def _gains(row: dict[str, Any]) -> dict[str, float]:
    """Accuracy differences (in [0, 1] units) that answer the question directly."""
    gains: dict[str, float] = {}
    model = row["model"]
    if "start" in row:
        gains["linear_over_start"] = (model["linear"]["accuracy"]
                                      - row["start"]["linear"]["accuracy"])
        if "finetune" in model and "finetune" in row["start"]:
            gains["finetune_over_start"] = (model["finetune"]["accuracy"]
                                            - row["start"]["finetune"]["accuracy"])
    if "scratch" in row:
        scratch = row["scratch"]["finetune"]["accuracy"]
        gains["linear_over_scratch"] = model["linear"]["accuracy"] - scratch
        if "finetune" in model:
            gains["finetune_over_scratch"] = model["finetune"]["accuracy"] - scratch
    return gains


def read_splits(
    data: str, test: str | None, *, data_options: dict[str, Any] | None = None,
    test_options: dict[str, Any] | None = None, test_fraction: float = 0.2, seed: int = 0,
    test_size: int | None = None, train_size: int | None = None,
) -> tuple[LabelledText, LabelledText]:
    """(train, test) labelled text; without ``test``, a stratified ``test_fraction`` of ``data``.
    ``train_size`` / ``test_size`` take fixed seeded random subsets (recorded in the source).
    A CSV with ragged rows is refused (:func:`check_csv_rows`)."""
    check_csv_rows(data, data_options)
    if test is not None:
        check_csv_rows(test, {**(data_options or {}), **(test_options or {})})
    labelled = read_with_options(data, data_options)
    if test is None:
        fit_idx, test_idx = stratified_split(labelled.labels, test_fraction, seed)
        train = labelled.subset(fit_idx, f"{data} (train part)")
        held = labelled.subset(test_idx, f"{test_fraction:.0%} of {data}, stratified, seed {seed}")
    else:
        train = labelled
        held = read_with_options(test, {**(data_options or {}), **(test_options or {})},
                                 class_names=labelled.class_names)
    return train.sample(train_size, seed, "--train-size"), held.sample(test_size, seed,
                                                                       "--test-size")


def evaluate_text_model(
    model: str | Path | TextModel,
    data: str,
    test: str | None = None,
    *,
    start: str | Path | TextModel | None = None,
    out: str | Path | None = None,
    fractions: str | list[float] | None = None,
    labels_per_class: str | list | None = None,
    protocol: str = "probes",
    baseline: bool = True,
    finetune_minutes: float | None = 5.0,
    finetune_epochs: int | None = None,
    finetune_head: str = "random",
    max_length: int | None = 128,
    seed: int = 0,
    seeds: int = 1,
    test_size: int | None = None,
    train_size: int | None = None,
    data_options: dict[str, Any] | None = None,
    test_options: dict[str, Any] | None = None,
    progress: bool = False,
    embeddings_out: Path | None = None,
) -> dict[str, Any]:
    """Evaluate a text model (a Hugging Face folder, an hf_text run, or a loaded TextModel)
    without reading any run state: e.g. MiniLM as the starting model. Writes ``out/eval.json``
    when ``out`` is given."""
    if protocol not in ("probes", "finetune"):
        raise SelfsupError(f"protocol must be 'probes' or 'finetune', not {protocol!r}")
    if out is not None:
        check_writable(out, "eval.json", hint="choose another --out")
    loaded = model if isinstance(model, TextModel) else load_text_model(model)
    start_model = (start if isinstance(start, TextModel) or start is None
                   else load_text_model(start))
    train, held = read_splits(data, test, data_options=data_options, test_options=test_options,
                              seed=seed, test_size=test_size, train_size=train_size)
    result = evaluate_models(
        loaded, train, held, start=start_model,
        budgets=parse_text_budgets(fractions, labels_per_class), finetune=protocol == "finetune",
        baseline=baseline, finetune_minutes=finetune_minutes, finetune_epochs=finetune_epochs,
        finetune_head=finetune_head, max_length=max_length, seed=seed, seeds=seeds,
        progress=progress,
        embeddings_out=embeddings_out,
    )
    result["run"] = str(out) if out is not None else loaded.source
    result["method"] = "hf-folder" if is_hf_folder(loaded.source) else result["method"]
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic.write_json(Path(out) / "eval.json", result)
    return result


def evaluate_text_run(
    run_path: str | Path,
    data: str,
    test: str | None = None,
    *,
    start: bool | str | Path = True,
    **options: Any,
) -> dict[str, Any]:
    """`selfsup evaluate RUN` for an hf_text run: the run's encoder, against the same
    architecture from scratch and (``start=True``) the run's recorded ``init`` folder, if any;
    writes RUN/eval.json, and RUN/sweep.json (:func:`text_sweep`) for the report."""
    check_writable(run_path, "eval.json and sweep.json")
    model, spec, config = load_run_model(run_path)
    start_model = None
    if start is True:
        init = run_init(config)
        if init is not None:
            if Path(init).is_dir():
                start_model = load_folder_model(init)
            else:
                log.warning("the run's starting model %s is gone; no comparison with it", init)
    elif start:
        start_model = load_text_model(start)
    # The labelled files are read with their own options (text/label fields), not the corpus's.
    run = Path(run_path)
    result = evaluate_text_model(model, data, test, start=start_model,
                                 embeddings_out=run / EMBEDDINGS_FILE, **options)
    summary_path = run / "pretrain.json"
    if summary_path.is_file():
        import json

        result["pretrain_seconds"] = json.loads(summary_path.read_text()).get("train_seconds")
    result.update({"run": str(run), "method": spec.get("method") or config.get("method"),
                   "init": run_init(config)})
    atomic.write_json(run / "eval.json", result)
    atomic.write_json(run / SWEEP_FILE, text_sweep(result))
    return result


def evaluate_text(target: str | Path, data: str, test: str | None = None,
                  **options: Any) -> dict[str, Any]:
    """Either a run (see :func:`evaluate_text_run`) or a Hugging Face folder (``out``, if
    given, receives eval.json)."""
    if is_hf_folder(target):
        options.pop("start", None)
        return evaluate_text_model(target, data, test, **options)
    options.pop("out", None)
    return evaluate_text_run(target, data, test, **options)


__all__ = [
    "TextClassifier",
    "TextModel",
    "Tokenized",
    "embed_texts",
    "evaluate_models",
    "evaluate_text",
    "evaluate_text_model",
    "evaluate_text_run",
    "finetune_text",
    "is_text_target",
    "load_text_model",
    "parse_text_budgets",
    "read_splits",
    "text_features",
    "tokenize_texts",
]
