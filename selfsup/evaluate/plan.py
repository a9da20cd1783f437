"""Before a long evaluation: say what will run and roughly how long, and show one progress bar
over the whole plan.

An evaluation can train a baseline and fine-tune for every label budget and seed; without a
word first, ``--labels-per-class 10,100`` looked like a hang for half an hour (issue 28). The
estimate is the sum of the configured time budgets (training ends at its budget); features
and probes come on top and are usually small beside them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("selfsup")


@dataclass(frozen=True)
class Unit:
    """One piece of the plan: its kind ("probes", "supervised baseline", ...) and its limit."""

    kind: str
    minutes: float | None = None  # its time budget; None: untimed (probes) or bounded otherwise
    limit: str | None = None  # how it is bounded when not by minutes alone, e.g. "500 steps"


def _plural(kind: str, n: int) -> str:
    """'1 fine-tuning', '6 fine-tunings', '6 supervised baselines'."""
    return f"{n} {kind}" if n == 1 else f"{n} {kind}s"


def format_minutes(value: float) -> str:
    """20 s, 5.0 min, 62 min."""
    if value < 1:
        return f"{60 * value:.0f} s"
    return f"{value:.1f} min" if value < 10 else f"{value:.0f} min"


@dataclass
class Plan:
    """The units an evaluation will run, in order, and how it reads in one line."""

    budgets: int = 1
    seeds: int = 1
    units: list[Unit] = field(default_factory=list)

    def add(self, kind: str, minutes: float | None = None, limit: str | None = None,
            times: int = 1) -> None:
        self.units.extend([Unit(kind, minutes, limit)] * times)

    @property
    def minutes(self) -> float:
        """The configured time budgets added up."""
        return sum(u.minutes or 0.0 for u in self.units)

    def describe(self) -> str:
        """'plan: 2 budgets x 3 seeds: features, probes, 6 supervised baselines of 5.0 min;
        about 30 min in all'. Units without a bound (features, probes) are named, not
        counted."""
        groups: dict[tuple[str, float | None, str | None], int] = {}
        for unit in self.units:
            key = (unit.kind, unit.minutes, unit.limit)
            groups[key] = groups.get(key, 0) + 1
        parts = []
        for (kind, minutes, limit), n in groups.items():
            if minutes is None and limit is None:
                parts.append(kind)
                continue
            timed = format_minutes(minutes) if minutes else None
            bound = " or ".join(b for b in (timed, limit) if b)
            parts.append(f"{_plural(kind, n)} of {'up to ' if limit else ''}{bound}")
        where = (f"{_plural('budget', self.budgets)} x {_plural('seed', self.seeds)}: "
                 if self.budgets * self.seeds > 1 else "")
        untimed = sum(1 for u in self.units if u.limit and not u.minutes)
        if self.minutes:
            total = f"about {format_minutes(self.minutes)} in all"
            if untimed:
                total += f", plus {untimed} bounded by steps or epochs only"
        elif untimed:
            total = "their time depends on the steps or epochs"
        else:
            total = "no training"
        return f"plan: {where}{', '.join(dict.fromkeys(parts))}; {total}"

    def announce(self) -> None:
        """Log the plan's line, before the long work starts."""
        log.info("%s", self.describe())

    def describe_kept(self, kept: list[Unit]) -> str | None:
        """'3 of the 27 training units were finished by an earlier sitting and are reused;
        about 60 min left' (None when none were): a resumed evaluation's plan, corrected."""
        if not kept:
            return None
        training = [u for u in self.units if u.minutes or u.limit]
        left = self.minutes - sum(u.minutes or 0.0 for u in kept)
        untimed = (sum(1 for u in training if not u.minutes)
                   - sum(1 for u in kept if u.limit and not u.minutes))
        if left > 1e-9:  # (float sums: what is left of all kept is 0 up to rounding)
            rest = f"about {format_minutes(left)} left"
            rest += f", plus {untimed} bounded by steps or epochs only" if untimed else ""
        elif untimed:
            rest = f"{untimed} bounded by steps or epochs only left"
        else:
            rest = "only features and probes left"
        return (f"{len(kept)} of the {len(training)} training units were finished by an "
                f"earlier sitting and are reused; {rest}")

    def announce_kept(self, kept: list[Unit]) -> None:
        """Log :meth:`describe_kept`'s line, if any unit was kept."""
        line = self.describe_kept(kept)
        if line:
            log.info("%s", line)


class PlanBar:
    """One progress bar over a plan's units (rich, on stderr), or nothing when disabled.

    ``start(label)`` names the unit now running; ``done()`` counts it. While it shows, the
    units run without bars of their own: rich shows one live display at a time. ``PlanBar()``
    shows nothing (for callers outside an evaluation).
    """

    def __init__(self, plan: Plan | None = None, enabled: bool = False) -> None:
        self.plan = plan or Plan()
        self.enabled = enabled and bool(self.plan.units)
        self.completed = 0
        self._progress = None
        self._task = None

    def __enter__(self) -> PlanBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task("evaluating", total=len(self.plan.units))
        return self

    def start(self, label: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=label)

    def done(self) -> None:
        self.completed += 1
        if self._progress is not None:
            self._progress.advance(self._task)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


__all__ = ["Plan", "PlanBar", "Unit", "format_minutes"]
