"""`selfsup report RUN` and `selfsup compare RUN...`: one self-contained HTML file each.

Everything the page shows is read from the run directory (config.yaml, pretrain.json,
metrics.csv, eval.json, sweep.json, embeddings_sample.npz, and optional artefacts such as
reconstruction.png, generated samples or zero-shot results); images are inlined as base64 PNG, so
the file can be mailed or archived alone. The verdict at the top is computed from the numbers,
never written by hand: it says "worse" when self-supervision is worse.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from selfsup import atomic
from selfsup.data.base import load_data
from selfsup.errors import SelfsupError
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.protocol import reader_config
from selfsup.evaluate.text import budget_accuracy
from selfsup.methods import METHODS
from selfsup.report import plots
from selfsup.run import RunDir, load_encoder

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
# A gap smaller than this (in accuracy, 0.1 points) is reported as "matches".
TIE = 0.001

# Marks <body data-images="ok"> once every <img> has decoded with a non-zero width, or "broken"
# naming the count that failed; the browser test reads it back with --dump-dom.
IMAGE_CHECK = """
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute("data-images", bad.length ? "broken" : "ok");
  document.body.setAttribute("data-images-total", String(imgs.length));
  document.body.setAttribute("data-images-broken", String(bad.length));
});
</script>
"""

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.verdict { background: #f4f8ff; border-left: 5px solid #1f77b4; padding: 0.8em 1em;
           font-size: 1.08em; }
.verdict.warn { background: #fff7ef; border-left-color: #ff7f0e; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f5f5f5; } img { max-width: 100%; } .note { color: #666; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
details summary { cursor: pointer; }
"""


# ---------------------------------------------------------------------------------------------
# The verdict


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _points(x: float) -> str:
    return f"{100 * abs(x):.1f}"


def _stat(summary: dict[str, Any], *keys: str) -> dict[str, Any] | None:
    node: Any = summary
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict) or node.get("mean") is None:
        return None
    return node


def _budget_words(point: dict[str, Any]) -> str:
    n = point.get("num_labels")
    count = f" ({n:,.0f} labels)" if n is not None else ""
    if point.get("fraction") is not None:
        if point["fraction"] >= 1:
            return f"all the labels{count}"
        return f"{point['budget']} of the labels{count}"
    return f"{point['labels_per_class']} labels per class{count}"


def _below_chance(accuracy: float | None, chance: float | None) -> bool:
    """A baseline at or below chance (within TIE) has not learned: no reference to beat."""
    return accuracy is not None and chance is not None and accuracy <= chance + TIE


def _not_learned(accuracy: float, chance: float, more_time: str = "--baseline-minutes") -> str:
    return (f"the supervised baseline did not learn ({_pct(accuracy)}, at or below chance "
            f"{_pct(chance)}), so it is no reference and this says nothing about whether "
            f"self-supervision helped; give it more time ({more_time})")


def _compare_sentence(point: dict[str, Any], seeds: int, chance: float | None = None,
                      more_time: str = "--baseline-minutes") -> str | None:
    """'With 1% of the labels, SSL + linear probe beats supervised training by X ± Y points'."""
    s = point["summary"]
    gap = _stat(s, "linear_minus_supervised")
    lin, sup = _stat(s, "linear", "accuracy"), _stat(s, "supervised", "accuracy")
    if gap is None or lin is None or sup is None:
        return None
    if _below_chance(sup["mean"], chance):
        return (f"With {_budget_words(point)}, SSL + linear probe reaches {_pct(lin['mean'])} "
                f"test accuracy, but {_not_learned(sup['mean'], chance, more_time)}")
    mean, std = gap["mean"], gap["std"]
    if abs(mean) < TIE:
        how = "matches supervised training"
    elif mean > 0:
        how = f"beats supervised training by {_points(mean)} ± {_points(std)} points"
    else:
        how = f"is worse than supervised training by {_points(mean)} ± {_points(std)} points"
    within = (" — a difference within the seeds' spread" if abs(mean) >= TIE and seeds > 1
              and abs(mean) <= std else "")
    return (f"With {_budget_words(point)}, SSL + linear probe {how} "
            f"({_pct(lin['mean'])} vs {_pct(sup['mean'])} test accuracy){within}")


def _ratio_sentence(point: dict[str, Any], chance: float | None = None) -> str | None:
    """'with all labels it reaches Z% of supervised (A% vs B%)'."""
    s = point["summary"]
    lin, sup = _stat(s, "linear", "accuracy"), _stat(s, "supervised", "accuracy")
    if lin is None or sup is None or not sup["mean"] > 0:
        return None
    if _below_chance(sup["mean"], chance):
        return (f"with {_budget_words(point)} it reaches {_pct(lin['mean'])}, against a "
                f"supervised baseline that did not learn ({_pct(sup['mean'])}, at or below "
                f"chance)")
    ratio = lin["mean"] / sup["mean"]
    worse = "" if ratio >= 1 - TIE else ", worse than supervised"
    return (f"with {_budget_words(point)} it reaches {100 * ratio:.0f}% of supervised accuracy "
            f"({_pct(lin['mean'])} vs {_pct(sup['mean'])}{worse})")


# Two budgets are "the same" when they differ by at most this fraction of the larger.
SAME_BUDGET = 0.05


def _seconds(value: float) -> str:
    """0.4 s, 62 s, 5.2 min, 1.3 h: a measured duration in the unit a reader thinks in."""
    if value < 10:
        return f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    if value < 2 * 3600:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def budget_sentence(pretrain_seconds: float | None, baseline_seconds: list[float],
                    budget_minutes: float | None = None,
                    finetune_seconds: float | None = None) -> str:
    """Both budgets as measured; "the same budget" only when they agree within SAME_BUDGET.

    ``baseline_seconds``: the measured training time of each baseline (one per seed and label
    budget in a sweep); ``budget_minutes`` is what the baseline was allowed, said when its
    time was not recorded (an eval.json from before it was). ``finetune_seconds``: a sweep
    with fine-tuning gives its baselines the pre-training's and the fine-tuning's minutes
    together, so they are compared with that sum (the mean measured fine-tuning).
    """
    if not baseline_seconds:
        allowed = (f" (its budget: {budget_minutes:.2g} min)" if budget_minutes else "")
        if pretrain_seconds is None:
            return f"The supervised baseline's training time was not recorded{allowed}"
        return (f"Budgets: pre-training took {_seconds(pretrain_seconds)} (measured); the "
                f"supervised baseline's training time was not recorded{allowed}, so whether "
                "the budgets match is unknown")
    low, high = min(baseline_seconds), max(baseline_seconds)
    mean = sum(baseline_seconds) / len(baseline_seconds)
    if len(baseline_seconds) == 1:
        base = f"the supervised baseline {_seconds(mean)}"
    elif high - low <= SAME_BUDGET * high:
        base = f"each of the {len(baseline_seconds)} supervised baselines {_seconds(mean)}"
    else:
        base = (f"the {len(baseline_seconds)} supervised baselines {_seconds(low)} to "
                f"{_seconds(high)}")
    if pretrain_seconds is None:
        return f"Budgets as measured: {base}; no pre-training time recorded"
    ssl, of = f"pre-training {_seconds(pretrain_seconds)}", "of it"
    total = pretrain_seconds
    if finetune_seconds is not None:
        ssl += f" + fine-tuning {_seconds(finetune_seconds)}"
        of, total = "of their sum", pretrain_seconds + finetune_seconds
    every = [total, *baseline_seconds]
    if max(every) - min(every) <= SAME_BUDGET * max(every):
        return f"Budgets as measured: {ssl}, {base}: the same budget (within 5%)"
    share = mean / total if total > 0 else float("inf")
    average = "on average " if len(baseline_seconds) > 1 else ""
    return (f"Budgets as measured: {ssl}, {base} ({average}{100 * share:.0f}% {of}): "
            "not the same budget")


def _baseline_seconds(entry: dict[str, Any] | None) -> float | None:
    """A baseline's measured training time: the engine's train_seconds, else its seconds."""
    if not isinstance(entry, dict):
        return None
    value = entry.get("train_seconds", entry.get("seconds"))
    return float(value) if isinstance(value, int | float) else None


def _sweep_baseline_seconds(points: list[dict[str, Any]]) -> list[float]:
    found = [_baseline_seconds(r.get("supervised")) for p in points for r in p.get("runs") or []]
    return [s for s in found if s is not None]


def _sweep_finetune_seconds(points: list[dict[str, Any]]) -> float | None:
    """The mean measured time of the sweep's fine-tunings; None in a sweep without them."""
    found = [(r.get("finetune") or {}).get("seconds") for p in points
             for r in p.get("runs") or []]
    found = [s for s in found if s is not None]
    return sum(found) / len(found) if found else None


def verdict(sweep: dict[str, Any] | None, evaluation: dict[str, Any] | None = None,
            quality: dict[str, Any] | None = None) -> str:
    """One paragraph answering "did self-supervision help, and by how much?" from the numbers.

    The one place a verdict is worded: the CLI (evaluate, the sweep) and the HTML report all
    print this. From the sweep when there is one (smallest budget: the gap in points, mean ±
    std over seeds; largest: the ratio to supervised), else from eval.json's single
    comparison. A baseline at or below chance is said not to have learned (nothing "beats"
    it); both budgets are stated as measured (:func:`budget_sentence`). A collapse flag in the
    label-free metrics is added as a warning.
    """
    sentences: list[str] = []
    points = (sweep or {}).get("points") or []
    seeds = int((sweep or {}).get("seeds") or 1)
    if points:
        chance = sweep.get("chance_accuracy")
        low, high = points[0], points[-1]
        # A text evaluation's baseline is a from-scratch fine-tuning, timed by its own flag.
        more_time = ("--finetune-minutes" if sweep.get("modality") == "text"
                     else "--baseline-minutes")
        first = _compare_sentence(low, seeds, chance, more_time)
        if first is None:  # no baseline was trained
            lin = _stat(low["summary"], "linear", "accuracy")
            hi = _stat(high["summary"], "linear", "accuracy")
            first = (f"With {_budget_words(low)}, SSL + linear probe reaches "
                     f"{_pct(lin['mean'])} ± {_points(lin['std'])} points test accuracy"
                     + (f" and {_pct(hi['mean'])} with {_budget_words(high)}"
                        if high is not low and hi else "")
                     + "; no supervised baseline was trained, so this says nothing about "
                       "whether self-supervision helped")
            sentences.append(first)
        else:
            ratio = _ratio_sentence(high, chance) if high is not low else None
            sentences.append(first + ("; " + ratio if ratio else ""))
        sentences.append(
            f"Mean ± standard deviation over {seeds} seed{'s' if seeds != 1 else ''}, each seed "
            f"drawing its own stratified label subset; scored on {_fmt(sweep.get('num_test'))} "
            f"held-out test examples ({sweep.get('test_data', '')}), chance "
            f"{_pct(sweep.get('chance_accuracy', 0.0))}"
        )
        reference = sweep_minirocket_sentence(points)
        if reference:
            sentences.append(reference)
        few_label = sweep_setfit_sentence(points)
        if few_label:
            sentences.append(few_label)
        tuned = sweep_finetune_sentence(points, sweep.get("finetune_minutes"))
        if tuned:
            sentences.append(tuned)
        recipe = sweep_recipe_sentence(points, sweep.get("method"))
        if recipe:
            sentences.append(recipe)
        if any(_stat(p["summary"], "supervised", "accuracy") for p in points):
            sentences.append(budget_sentence(sweep.get("pretrain_seconds"),
                                             _sweep_baseline_seconds(points),
                                             (sweep.get("baseline") or {}).get("minutes"),
                                             _sweep_finetune_seconds(points)))
    elif evaluation and evaluation.get("supervised"):
        lin = evaluation["linear"]["accuracy"]
        sup = evaluation["supervised"]["accuracy"]
        chance = evaluation.get("chance_accuracy")
        labels = f"With all {evaluation.get('num_train', '?')} labels, SSL + linear probe"
        if _below_chance(sup, chance):
            sentences.append(f"{labels} reaches {_pct(lin)} test accuracy, but "
                             f"{_not_learned(sup, chance)}")
        else:
            gap = lin - sup
            how = ("matches the supervised baseline" if abs(gap) < TIE else
                   f"beats the supervised baseline by {_points(gap)} points" if gap > 0 else
                   f"trails the supervised baseline by {_points(gap)} points")
            ratio = f", {100 * lin / sup:.0f}% of supervised" if sup > 0 else ""
            sentences.append(
                f"{labels} {how} ({_pct(lin)} vs {_pct(sup)}"
                f"{ratio}); one seed, no error bars: run the sweep (--fractions) for the "
                "label-efficiency curve")
        seconds = _baseline_seconds(evaluation["supervised"])
        sentences.append(budget_sentence(evaluation.get("pretrain_seconds"),
                                         [seconds] if seconds is not None else [],
                                         evaluation["supervised"].get("minutes")))
    elif evaluation:
        sentences.append(f"SSL + linear probe reaches {_pct(evaluation['linear']['accuracy'])} "
                         "test accuracy; no supervised baseline was trained")
    else:
        sentences.append("No evaluation yet: run `selfsup evaluate RUN --data LABELLED "
                         "--fractions 0.01,0.1,1` to measure whether self-supervision helped")
    if not points and evaluation and evaluation.get("minirocket"):
        sentences.append(minirocket_sentence(evaluation["linear"]["accuracy"],
                                             evaluation["minirocket"]))
    if quality and quality.get("collapsed"):
        sentences.append(
            "Warning: the label-free metrics flag a collapsed representation "
            f"(std ratio {quality.get('std_ratio', float('nan')):.3f}, effective rank "
            f"{quality.get('effective_rank', float('nan')):.1f})")
    return ". ".join(s.rstrip(".") for s in sentences) + "."


def _paired_comparisons(points: list[dict[str, Any]], ours: str, reference: str, gap: str,
                        against: str) -> list[str]:
    """Per budget where all three were measured: "beats AGAINST by X ± Y points with B:
    ours% vs reference%", the gap paired over the same label subsets."""
    parts = []
    for p in points:
        delta = _stat(p["summary"], gap)
        mine = _stat(p["summary"], ours, "accuracy")
        theirs = _stat(p["summary"], reference, "accuracy")
        if delta is None or mine is None or theirs is None:
            continue
        how = ("matches" if abs(delta["mean"]) < TIE else
               "beats" if delta["mean"] > 0 else "trails")
        by = ("" if how == "matches" else
              f" by {_points(delta['mean'])} ± {_points(delta['std'])} points")
        parts.append(f"{how} {against}{by} with {_budget_words(p)}: "
                     f"{_pct(mine['mean'])} vs {_pct(theirs['mean'])}")
    return parts


def sweep_setfit_sentence(points: list[dict[str, Any]]) -> str | None:
    """Text: the SetFit-style protocol against the linear probe of the same encoder, paired over
    the same label subsets, at each budget; None where it was not run."""
    parts = _paired_comparisons(points, "setfit", "linear", "setfit_minus_linear",
                                "the linear probe")
    if not parts:
        return None
    return ("SetFit-style fine-tuning (contrastive pairs from the labels, then a logistic head) "
            + "; ".join(parts))


def sweep_finetune_sentence(points: list[dict[str, Any]], minutes: float | None
                            ) -> str | None:
    """Images: the pre-trained encoder fine-tuned against the same network fine-tuned from
    scratch (same labels, recipe and minutes: what pre-training adds), paired over the label
    subsets, at each budget; None where the sweep did not fine-tune."""
    parts = _paired_comparisons(points, "finetune", "finetune_scratch", "finetune_minus_scratch",
                                "it")
    if not parts:
        return None
    each = f" for {minutes:g} minutes each" if minutes else ""
    return ("Fine-tuned end to end on the same labels with the same recipe" + each + ", the "
            "pre-trained encoder against the same network from scratch " + "; ".join(parts))


#: What each protocol a sweep compares is called when the verdict recommends it.
RECIPES = {"linear": "a linear probe on the frozen {method} encoder",
           "knn": "kNN on the frozen {method} encoder",
           "finetune": "fine-tune the {method} encoder end to end",
           "supervised": "train the network supervised from scratch",
           "minirocket": "MiniRocket features + ridge, no pre-training"}
SSL_PROTOCOLS = ("linear", "knn", "finetune")


def sweep_recipe_sentence(points: list[dict[str, Any]], method: str | None) -> str | None:
    """The recipe to take at each label budget: the protocol with the best mean test accuracy
    among those the sweep ran (an SSL one with its paired gap to supervised training); None
    without a supervised baseline (nothing to choose against)."""
    parts = []
    for p in points:
        s = p["summary"]
        scored = {name: stat for name in RECIPES
                  if (stat := _stat(s, name, "accuracy")) is not None}
        if "supervised" not in scored:
            continue
        best = max(scored, key=lambda name: scored[name]["mean"])
        recipe = RECIPES[best].format(method=method or "pre-trained")
        if best in SSL_PROTOCOLS:
            gap = _stat(s, f"{best}_minus_supervised")
            parts.append(f"with {_budget_words(p)}, {recipe}: {_pct(scored[best]['mean'])}, "
                         f"{'+' if gap['mean'] >= 0 else '−'}{_points(gap['mean'])} ± "
                         f"{_points(gap['std'])} points over supervised")
        else:
            ssl = max((n for n in SSL_PROTOCOLS if n in scored),
                      key=lambda name: scored[name]["mean"])
            parts.append(f"with {_budget_words(p)}, {recipe} ({_pct(scored[best]['mean'])}; "
                         f"the best with pre-training, "
                         f"{RECIPES[ssl].format(method=method or 'pre-trained')}, reaches "
                         f"{_pct(scored[ssl]['mean'])})")
    if not parts:
        return None
    return "The recipe to take (the best mean test accuracy at each budget): " + "; ".join(parts)


def sweep_minirocket_sentence(points: list[dict[str, Any]]) -> str | None:
    """The sweep's paired gap to MiniRocket (series) at each budget, or None without it."""
    parts = []
    for p in points:
        gap = _stat(p["summary"], "linear_minus_minirocket")
        ref = _stat(p["summary"], "minirocket", "accuracy")
        if gap is None or ref is None:
            continue
        how = ("matches" if abs(gap["mean"]) < TIE else
               "beats" if gap["mean"] > 0 else "trails")
        parts.append(f"{how} it by {_points(gap['mean'])} ± {_points(gap['std'])} points with "
                     f"{_budget_words(p)} (MiniRocket {_pct(ref['mean'])})")
    if not parts:
        return None
    return ("Against MiniRocket (random convolutions + ridge, the cheap reference for series, "
            "fitted on the same label subsets), SSL + linear probe " + "; ".join(parts))


def minirocket_sentence(linear: float, minirocket: dict[str, Any]) -> str:
    """Whether SSL beat the series reference a practitioner fits first (same labels, same
    test split), and what that reference cost."""
    reference = minirocket["accuracy"]
    gap = linear - reference
    how = ("matches it" if abs(gap) < TIE else
           f"beats it by {_points(gap)} points" if gap > 0 else
           f"trails it by {_points(gap)} points, so MiniRocket is the better model here")
    return (f"MiniRocket (random convolutions + ridge, the cheap reference for series) reaches "
            f"{_pct(reference)} after a {minirocket['fit_seconds']:.1f} s fit on the same labels: "
            f"SSL + linear probe ({_pct(linear)}) {how}")


# ---------------------------------------------------------------------------------------------
# Reading the run


def _json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SelfsupError(f"{path}: not readable JSON ({error})") from None


def _metrics_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _embeddings(run: Path) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The sweep's test-embedding sample, else up to 1000 samples of the run's own data."""
    sample = run / "embeddings_sample.npz"
    if sample.is_file():
        with np.load(sample) as archive:
            return archive["features"], archive["labels"]
    try:

        rd = RunDir(run)
        encoder, spec = load_encoder(rd)
        config = rd.read_config()
        method = METHODS.get(config["method"]) if config.get("method") in METHODS else None
        data = load_data(spec.get("modality", "image"), config["data"],
                         reader_config(config, spec, progress=False), method)
        rows = np.sort(np.random.default_rng(0).permutation(len(data))[:1000])
        features = extract_features(encoder, data, rows,
                                    precision=config.get("precision", "bf16"))
        labels = None if data.labels is None else np.asarray(data.labels)[rows]
        return features, labels
    except (SelfsupError, KeyError, OSError) as error:
        log.warning("report: no embeddings for the 2-D map (%s)", error)
        return None


# ---------------------------------------------------------------------------------------------
# HTML pieces


def _e(value: Any) -> str:
    return html.escape(str(value))


def img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{_e(_fmt(c))}</td>' if isinstance(c, int | float) and
            not isinstance(c, bool) else f"<td>{_e(_fmt(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _mean_std(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def _count(mean: float) -> str:
    """A mean over seeds of label counts: 50,000 (not the general format's 5e+04), or 12.5."""
    return f"{mean:,.0f}" if float(mean).is_integer() else f"{mean:,.1f}"


def sweep_table(sweep: dict[str, Any]) -> str:
    """Mean ± std (in %) per budget; the fine-tuning column only when the sweep fine-tuned."""
    columns = [("linear acc %", ("linear", "accuracy")), ("linear F1 %", ("linear", "macro_f1")),
               ("kNN acc %", ("knn", "accuracy")), ("kNN F1 %", ("knn", "macro_f1")),
               ("fine-tune acc %", ("finetune", "accuracy")),
               ("fine-tune from scratch acc %", ("finetune_scratch", "accuracy")),
               ("SetFit-style acc %", ("setfit", "accuracy")),
               ("supervised acc %", ("supervised", "accuracy")),
               ("supervised F1 %", ("supervised", "macro_f1")),
               ("MiniRocket acc %", ("minirocket", "accuracy")),
               ("linear − supervised (points)", ("linear_minus_supervised",))]
    points = sweep["points"]
    columns = [(name, keys) for name, keys in columns
               if any(_stat(p["summary"], *keys) for p in points)]
    rows = [[p["budget"], _count(p["num_labels"]),
             *(_mean_std(_stat(p["summary"], *keys)) for _, keys in columns)] for p in points]
    return table(["labels", "count (mean)", *(name for name, _ in columns)], rows)


def sweep_markdown(sweep: dict[str, Any]) -> str:
    """The sweep as a Markdown table (accuracy in %, mean ± std over seeds), for benchmark
    results and READMEs: every protocol run, the paired gap and the ratio to supervised."""
    columns = [("linear probe", ("linear", "accuracy")), ("kNN", ("knn", "accuracy")),
               ("fine-tune", ("finetune", "accuracy")),
               ("fine-tune from scratch", ("finetune_scratch", "accuracy")),
               ("SetFit-style", ("setfit", "accuracy")),
               ("supervised", ("supervised", "accuracy")),
               ("MiniRocket", ("minirocket", "accuracy")),
               ("linear − supervised (points)", ("linear_minus_supervised",)),
               ("fine-tune − scratch (points)", ("finetune_minus_scratch",)),
               ("fine-tune − supervised (points)", ("finetune_minus_supervised",)),
               ("linear / supervised", ("linear_over_supervised",))]
    points = sweep["points"]
    columns = [(name, keys) for name, keys in columns
               if any(_stat(p["summary"], *keys) for p in points)]

    def cell(keys: tuple[str, ...], stat: dict[str, Any] | None) -> str:
        if stat is None:
            return "—"
        if keys == ("linear_over_supervised",):
            return f"{stat['mean']:.3f} ± {stat['std']:.3f}"
        return _mean_std(stat)

    lines = ["| labels | count | " + " | ".join(name for name, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for p in points:
        cells = [cell(keys, _stat(p["summary"], *keys)) for _, keys in columns]
        lines.append(f"| {p['budget']} | {p['num_labels']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def text_eval_table(evaluation: dict[str, Any]) -> str:
    """A text evaluation's budgets: the model's probes and fine-tuning against the starting
    model and the same architecture from scratch (test accuracy)."""

    kinds = [("model", "linear"), ("model", "knn"), ("model", "finetune"), ("model", "setfit"),
             ("start", "linear"), ("start", "knn"), ("start", "finetune"), ("start", "setfit"),
             ("scratch", "finetune")]
    names = {"model": "model", "start": "starting model", "scratch": "from scratch"}
    budgets = evaluation["budgets"]
    seeds = int(evaluation.get("seeds", 1))
    shown = [k for k in kinds if any(k[1] in (b.get(k[0]) or {}) for b in budgets)]
    rows = [[f"{b['budget']} ({b['num_labels']})",
             *[_mean_std(budget_accuracy(b, k, p)) if seeds > 1
               else (budget_accuracy(b, k, p) or {}).get("mean") for k, p in shown]]
            for b in budgets]
    note = (f'<p class="note">Test: {_e(evaluation.get("test_data"))} '
            f'({evaluation.get("num_test")} texts), chance '
            f'{_pct(evaluation.get("chance_accuracy", 0.0))}; texts cut to '
            f'{evaluation.get("max_length")} tokens; starting model: '
            f'{_e(evaluation.get("start_model") or "none recorded")}.</p>')
    unit = " % (mean ± std over seeds)" if seeds > 1 else ""
    return table(["labels", *[f"{names[k]} {p}{unit}" for k, p in shown]], rows) + note


def _quality_rows(quality: dict[str, Any]) -> list[list[Any]]:
    notes = {
        "std_ratio": "per-dim std of normalised embeddings × √d: ≈1 healthy, 0 collapsed "
                     "(SimSiam)",
        "effective_rank": "RankMe (Garrido et al. 2023): 1 = one direction",
        "effective_rank_frac": "RankMe / min(n, d)",
        "uniformity": "Wang & Isola 2020, t=2: 0 = collapsed, about −4 = spread on the sphere",
        "alignment": "Wang & Isola 2020: distance between two views, 0 = identical",
        "dead_dimensions": "dimensions with std below 1% of 1/√d",
        "std_ratio_untrained": "the std ratio of the same encoder at random init",
        "collapsed": "std ratio < a tenth of the untrained one's (at most 0.1, at least 0.01) "
                     "or effective rank < 1.5",
    }
    return [[k, v, notes.get(k, "")] for k, v in quality.items()
            if not isinstance(v, list | dict)]


def _optional_sections(run: Path) -> list[str]:
    """MAE reconstructions, generated text samples and zero-shot results, when the run has them."""
    out = []
    recon = sorted(run.glob("reconstruction*.png"))
    if recon:
        out.append("<h2>Reconstructions</h2>"
                   + "".join(img(p.read_bytes(), p.name) for p in recon))
    samples = sorted([*run.glob("samples*.txt"), *run.glob("*samples*.json"),
                      *run.glob("generate*.txt")])
    if samples:
        parts = ["<h2>Generated samples</h2>"]
        for p in samples[:5]:
            text = p.read_text(encoding="utf-8", errors="replace")
            if p.suffix == ".json":
                try:
                    loaded = json.loads(text)
                    items = loaded.get("samples", loaded) if isinstance(loaded, dict) else loaded
                    text = "\n\n---\n\n".join(
                        str(s.get("text", s)) if isinstance(s, dict) else str(s)
                        for s in (items if isinstance(items, list) else [items]))
                except json.JSONDecodeError:
                    pass
            parts.append(f"<h3>{_e(p.name)}</h3><pre>{_e(text[:6000])}</pre>")
        out.append("".join(parts))
    zero = sorted([*run.glob("zero*shot*.json"), *run.glob("zeroshot*.json")])
    if zero:
        parts = ["<h2>Zero-shot results</h2>"]
        for p in dict.fromkeys(zero):
            loaded = _json(p) or {}
            flat = [[k, v] for k, v in loaded.items() if not isinstance(v, dict | list)]
            parts.append(f"<h3>{_e(p.name)}</h3>" + (table(["key", "value"], flat) if flat else
                                                    f"<pre>{_e(json.dumps(loaded)[:4000])}</pre>"))
        out.append("".join(parts))
    return out


def page(title: str, body: list[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + IMAGE_CHECK + "</body></html>\n")


# ---------------------------------------------------------------------------------------------
# The two verbs


def build_report(run_path: str | Path, *, embedding_map: bool = True) -> Path:
    """Write RUN/report.html from what the run directory holds; return its path."""
    run = Path(run_path)
    if not (run / "config.yaml").is_file():
        raise SelfsupError(f"{run} is not a selfsup run (no config.yaml)")
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    summary = _json(run / "pretrain.json") or {}
    evaluation = _json(run / "eval.json")
    sweep = _json(run / "sweep.json")
    quality = (sweep or {}).get("quality")
    method = summary.get("method") or config.get("method", "?")
    title = f"selfsup report: {method} / {config.get('encoder') or '?'} — {run.name}"

    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="note">data: {_e(config.get("data"))} · run directory: {_e(run)}</p>']
    text = verdict(sweep, evaluation, quality)
    warn = " warn" if any(w in text for w in ("worse", "Warning", "did not learn")) else ""
    body.append(f'<h2>Verdict</h2><p class="verdict{warn}" id="verdict">{_e(text)}</p>')

    swept = bool(sweep and sweep.get("points"))
    if swept:
        body.append("<h2>Label efficiency</h2>")
        png = plots.label_efficiency(sweep["points"])
        if png:
            body.append(img(png, "label-efficiency curve"))
        body.append(sweep_table(sweep))
        base = sweep.get("baseline")
        limits = [f"{base[k]:g} {k}" for k in ("minutes", "steps", "epochs")
                  if base and base.get(k)]
        what = sweep.get("baseline_what") or "the same encoder from scratch on the same labels"
        baseline_note = (
            f"Supervised baseline: {what}, at most " + " and ".join(limits) + " per point."
            if base else
            f"No supervised baseline ({sweep.get('baseline_note') or 'not asked for'}).")
        body.append(
            f'<p class="note">{sweep["seeds"]} seeds; probes choose C and k on a stratified '
            f'{sweep.get("val_fraction", 0.2):.0%} validation carve of each label subset. '
            f"{_e(baseline_note)} Test split: {_e(sweep.get('test_data'))} "
            f"({sweep.get('num_test')} examples).</p>")
    if (evaluation and evaluation.get("modality") == "text" and evaluation.get("budgets")
            and (evaluation.get("start_model") or not swept)):  # else the sweep table says it
        body.append("<h2>Evaluation (text)</h2>" + text_eval_table(evaluation))
    elif evaluation and not swept:
        rows = [["linear probe", evaluation["linear"]["accuracy"]],
                ["kNN", evaluation["knn"]["accuracy"]]]
        if evaluation.get("minirocket"):
            rows.append(["MiniRocket (reference)", evaluation["minirocket"]["accuracy"]])
        if evaluation.get("supervised"):
            rows.append(["supervised baseline", evaluation["supervised"]["accuracy"]])
        body.append("<h2>Evaluation</h2>" + table(["protocol", "test accuracy"], rows))
    curve = _json(run / "probe_curve.json")
    if curve and curve.get("records"):
        png = plots.probe_curve(curve["records"])
        if png:
            body.append("<h2>Probe curve</h2>" + img(png, "probe curve") + (
                f'<p class="note">Linear probe on frozen mean-pooled embeddings of '
                f'{_e(curve.get("data"))}: fitted on {curve.get("num_probe_train")} texts, '
                f'scored on the other {curve.get("num_probe_test")}, every '
                f'{curve.get("every_steps")} steps.</p>'))

    body.append("<h2>Run summary</h2>")
    body.append(table(["", "value"], [[k, v] for k, v in summary.items()
                                      if not isinstance(v, dict | list)]))
    rows = _metrics_rows(run / "metrics.csv")
    curves = plots.training_curves(rows)
    body.append("<h2>Training curves</h2>")
    body.append(img(curves, "training curves") if curves else
                '<p class="note">no metrics.csv in the run</p>')

    body.append("<h2>Label-free metrics</h2>")
    if quality:
        body.append("<p>On the test embeddings:</p>"
                    + table(["metric", "value", "meaning"], _quality_rows(quality)))
    if summary.get("collapse"):
        body.append("<p>At the end of pre-training (last batch):</p>"
                    + table(["metric", "value", "meaning"], _quality_rows(summary["collapse"])))
    if not quality and not summary.get("collapse"):
        body.append('<p class="note">none recorded</p>')

    if embedding_map:
        found = _embeddings(run)
        png = plots.embedding_map(*found) if found is not None else None
        if png:
            body.append("<h2>Embedding map</h2>" + img(png, "2-D map of embeddings"))

    body.extend(_optional_sections(run))
    body.append("<h2>Config</h2><details><summary>config.yaml</summary><pre>"
                + _e(yaml.safe_dump(config, sort_keys=False)) + "</pre></details>")
    out = run / REPORT_FILE
    atomic.write_text(out, page(title, body))
    return out


#: The files of which a folder must hold one to be compared: a run, or an evaluation's --out.
RUN_FILES = ("config.yaml", "pretrain.json", "eval.json", "sweep.json")


def compare_rows(runs: list[str | Path]) -> list[dict[str, Any]]:
    """One row per run: its method, budget and headline scores (sweep's largest budget first).
    A folder that holds none of RUN_FILES is refused: a row of dashes compares nothing."""
    rows = []
    for path in runs:
        run = Path(path)
        if not run.exists():
            raise SelfsupError(f"run directory {run} does not exist")
        if not run.is_dir():
            raise SelfsupError(f"{run} is a file, not a run directory")
        if not any((run / name).is_file() for name in RUN_FILES):
            raise SelfsupError(f"{run} is not a selfsup run: it holds none of "
                               f"{', '.join(RUN_FILES)}")
        config = (yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
                  if (run / "config.yaml").is_file() else {}) or {}
        summary = _json(run / "pretrain.json") or {}
        evaluation = _json(run / "eval.json") or {}
        sweep = _json(run / "sweep.json") or {}
        row: dict[str, Any] = {
            "name": run.name,
            "method": summary.get("method") or config.get("method"),
            "encoder": config.get("encoder"),
            "data": config.get("data"),
            "steps": summary.get("steps"),
            "minutes": (summary["train_seconds"] / 60 if summary.get("train_seconds") else None),
            "samples_per_s": summary.get("samples_per_s", summary.get("images_per_s")),
            "knn_monitor": summary.get("knn_monitor_accuracy"),
        }
        for protocol in ("linear", "knn", "supervised"):
            row[protocol] = (evaluation.get(protocol) or {}).get("accuracy")
        points = sweep.get("points") or []
        if points:
            top = points[-1]["summary"]
            row["scores_from"] = f"sweep, {points[-1]['budget']} labels"
            for protocol in ("linear", "knn", "supervised"):
                stat = _stat(top, protocol, "accuracy")
                if stat:
                    row[protocol], row[f"{protocol}_std"] = stat["mean"], stat["std"]
            for p in points:
                stat = _stat(p["summary"], "linear", "accuracy")
                row[f"linear@{p['budget']}"] = stat["mean"] if stat else None
        elif evaluation:
            row["scores_from"] = "eval.json"
        rows.append(row)
    return rows


def check_compare_out(out: str | Path) -> Path:
    """The page compare writes: refused when it is a folder or its folder cannot be written,
    before anything is read or shown."""
    path = Path(out)
    if path.is_dir():
        raise SelfsupError(f"--out {path} is a folder; give the HTML file to write, e.g. "
                           f"--out {path / 'compare.html'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SelfsupError(f"--out {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SelfsupError(f"--out {path}: {parent} cannot be written; choose another --out")
    return path


def build_compare(runs: list[str | Path], out: str | Path = "compare.html") -> Path:
    """Write one HTML page with a table and a chart across runs; return its path."""
    if not runs:
        raise SelfsupError("compare needs at least one run directory")
    check_compare_out(out)
    rows = compare_rows(runs)
    columns = list(dict.fromkeys(k for r in rows for k in r if not k.endswith("_std")))
    body = [f"<h1>selfsup compare: {len(rows)} runs</h1>",
            table(columns, [[r.get(c) for c in columns] for r in rows])]
    png = plots.compare_chart(rows)
    if png:
        body.append(img(png, "comparison chart"))
    body.append('<p class="note">Accuracies are on each run\'s own test split; compare runs '
                "evaluated on the same data.</p>")
    path = Path(out)
    atomic.write_text(path, page("selfsup compare", body))
    return path
