"""SetFit-style few-label classification (Tunstall et al. 2022, "Efficient Few-Shot Learning
Without Prompts"): fine-tune the sentence encoder contrastively on pairs built from the labelled
subset, then fit a logistic-regression head on its fine-tuned embeddings of the same subset.

- **Pairs** (:func:`make_pairs`, SetFit's generation): ``iterations`` rounds (SetFit's R, 20);
  in each, every labelled text is paired once with another text of its class (target 1) and once
  with a text of another class (target 0), so positives and negatives are balanced, about R of
  each per text. Only the labelled subset is ever paired: the test split only scores. A class
  with a single labelled text has no partner of its own: that text appears in negative pairs and
  in the head's fit only.
- **Loss**: SetFit's CosineSimilarityLoss, the squared error between a pair's cosine
  similarity and its target (:func:`cosine_similarity_loss`).
- **Budget**: SetFit's one epoch over the pairs (AdamW, lr 2e-5, weight decay 0.01, 10% linear
  warm-up then linear decay, gradient norm 1, 16 pairs a step), bounded by ``max_pairs``,
  ``max_steps`` and ``minutes``, whichever ends first; the schedule follows the furthest along
  of them (the engine's rule), so a run cut by the clock still decays. ``max_pairs`` (default
  1,920) keeps R = 20 exactly up to 48 labelled texts (8 per class on SST-2 and on TREC's six
  classes) and caps larger subsets at 120 steps (its pairs kept round by round, so every text
  keeps the same share): MiniLM took 50 s for TREC's 120 steps at 8 per class on 2 busy CPU
  cores (benchmarks/results/text_probe_recipe.md); 64 per class on TREC would otherwise be
  15,360 pairs, 960 steps, about 7 minutes there.
- **Head**: SetFit's own, scikit-learn's LogisticRegression with its defaults (C = 1) on the
  fine-tuned sentence embeddings. Nothing is chosen, so nothing is validated: a C chosen by
  cross-validation over the texts the encoder has just been trained to separate would score on
  texts it has memorised, not on new ones.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import nn

from selfsup.errors import SelfsupError
from selfsup.evaluate.scores import macro_f1
from selfsup.evaluate.text_finetune import TextSplit
from selfsup.text_models import text_features


@dataclass
class SetFitConfig:
    """One SetFit-style run: the pairs, the contrastive fine-tuning's budget, the head."""

    iterations: int = 20  # SetFit's R: rounds of pair generation
    max_pairs: int | None = 1920  # positives + negatives; None: all R rounds
    batch_size: int = 16  # pairs per step
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    minutes: float | None = 5.0
    max_steps: int | None = None
    head_c: float = 1.0
    precision: str = "32"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("iterations", "max_pairs", "batch_size", "lr", "minutes", "max_steps",
                     "head_c"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise SelfsupError(f"SetFit: {name} must be positive, not {value}")
        if self.max_pairs is not None and self.max_pairs < 2:
            raise SelfsupError(f"SetFit: max_pairs must be at least 2, not {self.max_pairs}")
        if not 0 <= self.warmup_fraction < 1:
            raise SelfsupError(f"SetFit: warmup_fraction must be in [0, 1), not "
                               f"{self.warmup_fraction}")


def make_pairs(labels: np.ndarray, iterations: int = 20, seed: int = 0,
               max_pairs: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, target): row indices into ``labels`` of each pair and its target (1.0
    same class, 0.0 different), positives first, ordered round by round (see the module
    docstring). ``max_pairs`` keeps the first rounds, half the pairs positive and half negative.
    Refused: fewer than two classes, or no class with two texts."""
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) == 0:
        raise SelfsupError("SetFit pairs need a non-empty 1-D label vector")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise SelfsupError(f"SetFit pairs need labelled texts of two classes at least; all "
                           f"{len(y)} are of class {classes[0]!r}")
    if counts.max() < 2:
        raise SelfsupError("SetFit pairs need a class with two labelled texts at least (a "
                           "positive pair); every class has one")
    rng = np.random.default_rng(seed)
    members = {c: np.flatnonzero(y == c) for c in classes}
    others = {c: np.flatnonzero(y != c) for c in classes}
    pos: list[tuple[int, int]] = []
    neg: list[tuple[int, int]] = []
    for _ in range(int(iterations)):
        for i in rng.permutation(len(y)):
            same = members[y[i]]
            if len(same) > 1:  # a partner of its class other than itself
                j = same[rng.integers(len(same) - 1)]
                pos.append((int(i), int(j if j != i else same[-1])))
            neg.append((int(i), int(rng.choice(others[y[i]]))))
    if max_pairs is not None:
        half = max(1, int(max_pairs) // 2)
        pos, neg = pos[:half], neg[:half]
    pairs = np.asarray(pos + neg, dtype=np.int64)
    target = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.float32)
    return pairs[:, 0], pairs[:, 1], target


def cosine_similarity_loss(first: torch.Tensor, second: torch.Tensor,
                           target: torch.Tensor) -> torch.Tensor:
    """SetFit's CosineSimilarityLoss: mean squared error between cos(first, second) and the
    pair's target (1 same class, 0 different), in float32 whatever the autocast."""
    cosine = F.cosine_similarity(first.float(), second.float(), dim=-1)
    return F.mse_loss(cosine, target.float())


def _warmup_linear(progress: float, warmup: float) -> float:
    """sentence-transformers' WarmupLinear multiplier: up to 1 over ``warmup``, then to 0."""
    if progress < warmup:
        return (progress + 1e-3) / warmup
    return max(0.0, (1 - progress) / max(1e-9, 1 - warmup))


def sentence_vectors(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The sentence embeddings a training step compares: the encoder's own (pooled as its
    pipeline says; normalisation does not change a cosine)."""
    return encoder(ids, mask)


def contrastive_finetune(encoder: nn.Module, split: TextSplit, config: SetFitConfig
                         ) -> dict[str, Any]:
    """Fine-tune ``encoder`` (in place, train mode: dropout on) on the pairs of ``split``;
    returns what was done (pairs, steps, seconds, the loss, what ended it)."""
    first, second, target = make_pairs(split.labels, config.iterations, config.seed,
                                       config.max_pairs)
    order = np.random.default_rng(config.seed).permutation(len(target))
    steps_planned = math.ceil(len(order) / config.batch_size)
    if config.max_steps is not None:
        steps_planned = min(steps_planned, int(config.max_steps))
    optimiser = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad],
                                  lr=config.lr, weight_decay=config.weight_decay)
    torch.manual_seed(config.seed)  # dropout
    encoder.train()
    losses: list[float] = []
    started, stopped_by = time.monotonic(), "pairs"
    step = 0
    for step in range(steps_planned):
        elapsed = time.monotonic() - started
        if config.minutes is not None and elapsed >= config.minutes * 60:
            stopped_by = "minutes"
            break
        progress = max(step / steps_planned,
                       elapsed / (config.minutes * 60) if config.minutes else 0.0)
        for group in optimiser.param_groups:
            group["lr"] = config.lr * _warmup_linear(progress, config.warmup_fraction)
        rows = order[step * config.batch_size:(step + 1) * config.batch_size]
        ids, mask = split.tokens.batch(np.concatenate([first[rows], second[rows]]),
                                       split.pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            vectors = sentence_vectors(encoder, ids, mask)
        loss = cosine_similarity_loss(vectors[:len(rows)], vectors[len(rows):],
                                      torch.from_numpy(target[rows]))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        optimiser.step()
        losses.append(float(loss.detach()))
    else:
        step = steps_planned
        if config.max_steps is not None and steps_planned == config.max_steps:
            stopped_by = "max_steps"
    encoder.eval()
    positives = int(target.sum())
    return {"pairs": {"positive": positives, "negative": int(len(target) - positives),
                      "per_text": len(target) / len(split.labels)},
            "steps": int(step), "steps_planned": int(steps_planned),
            "pairs_seen": int(min(step * config.batch_size, len(target))),
            "seconds": time.monotonic() - started, "stopped_by": stopped_by,
            "loss_first": losses[0] if losses else None,
            "loss_last": float(np.mean(losses[-10:])) if losses else None}


def _fit_head(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x, y)


def setfit_text(encoder: nn.Module, train: TextSplit, test: TextSplit, config: SetFitConfig
                ) -> dict[str, Any]:
    """The SetFit-style protocol on one labelled subset: contrastive fine-tuning of ``encoder``
    (changed in place) on its pairs, then the logistic head on its embeddings; scored on test.
    Refused (one message): texts that are all identical, which no pair can tell apart."""
    if len({tuple(ids.tolist()) for ids in train.tokens.ids}) < 2:
        raise SelfsupError(f"SetFit: all {len(train.labels)} labelled texts are identical "
                           "(after tokenisation): no pair can tell them apart")
    fit = contrastive_finetune(encoder, train, config)
    began = time.monotonic()
    train_x = text_features(encoder, train.tokens, train.pad_id, precision=config.precision)
    head = _fit_head(train_x, train.labels, config.head_c, config.seed)
    test_x = text_features(encoder, test.tokens, test.pad_id, precision=config.precision)
    predicted = head.predict(test_x)
    return {
        "accuracy": float((predicted == test.labels).mean()),
        "macro_f1": macro_f1(test.labels, predicted),
        **fit,
        "seconds": fit["seconds"] + time.monotonic() - began,
        "train_seconds": fit["seconds"],
        "num_train": int(len(train.labels)),
        "num_test": int(len(test.labels)),
        "head": {"C": config.head_c, "what": "logistic regression, SetFit's default C"},
        "config": asdict(config),
    }


__all__ = ["SetFitConfig", "contrastive_finetune", "cosine_similarity_loss", "make_pairs",
           "setfit_text"]
