"""Label budgets and the stratified label subsets drawn for them, shared by the image sweep and the
text evaluation: a budget is a fraction of the labels or a count per class."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from selfsup.errors import SelfsupError

# ---------------------------------------------------------------------------------------------
# Label budgets and subsets


@dataclass(frozen=True)
class LabelBudget:
    """How many labels one point of the curve gets: a fraction of the pool, or k per class."""

    fraction: float | None = None
    per_class: int | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.per_class is None):
            raise SelfsupError("a label budget is either a fraction or a number per class")
        if self.fraction is not None and not (0 < self.fraction <= 1):
            raise SelfsupError(f"label fraction must lie in (0, 1], got {self.fraction}")
        if self.per_class is not None and self.per_class < 1:
            raise SelfsupError(f"labels per class must be at least 1, got {self.per_class}")

    @property
    def name(self) -> str:
        """'1%', '100%', '10/class': for tables, plots and the verdict."""
        if self.fraction is not None:
            return f"{self.fraction * 100:g}%"
        return f"{self.per_class}/class"

    @property
    def tag(self) -> str:
        """A file-name-safe form of the name."""
        return re.sub(r"[^0-9a-z]+", "_", self.name.replace("%", "pct").replace("/", "per"))


def parse_budgets(
    fractions: str | list[float] | None = None, labels_per_class: str | list[int] | None = None
) -> list[LabelBudget]:
    """Budgets from '0.01,0.1,1' and/or '1,10,100' strings (or lists), smallest first."""

    def items(value: str | list | None, what: str) -> list[str]:
        if value is None:
            return []
        parts = value.split(",") if isinstance(value, str) else list(value)
        if not [p for p in parts if str(p).strip()]:
            raise SelfsupError(f"{what}: no values given")
        return [str(p).strip() for p in parts if str(p).strip()]

    budgets: list[LabelBudget] = []
    for text in items(fractions, "--fractions"):
        try:
            value = float(text)
        except ValueError:
            raise SelfsupError(f"--fractions: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise SelfsupError(f"--fractions: {text!r} is not a finite number")
        budgets.append(LabelBudget(fraction=value))
    for text in items(labels_per_class, "--labels-per-class"):
        try:
            budgets.append(LabelBudget(per_class=int(text)))
        except ValueError:
            raise SelfsupError(f"--labels-per-class: {text!r} is not a whole number") from None
    if not budgets:
        raise SelfsupError("the sweep needs --fractions or --labels-per-class")
    unique = list(dict.fromkeys(budgets))
    return sorted(unique, key=lambda b: (b.per_class is None, b.per_class or b.fraction))


def label_subset(
    labels: np.ndarray, budget: LabelBudget, seed: int, *, min_per_class: int = 2
) -> np.ndarray:
    """Sorted positions of a stratified label subset of ``labels``; a new draw for every seed.

    Each class c with n_c examples gets round(fraction * n_c) of them (or ``per_class``), but at
    least ``min_per_class`` so that a validation example can be carved from it, and at most n_c.
    Within a class the draw is a random permutation from (seed, class), so subsets of one seed
    are not nested across budgets by accident of ordering, and differ between seeds.
    """
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if budget.fraction is not None:
            want = int(round(budget.fraction * len(members)))
        else:
            want = int(budget.per_class)
        want = min(len(members), max(min_per_class, want))
        rng = np.random.default_rng([seed, int(c)])
        chosen.append(rng.permutation(members)[:want])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


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
