"""`selfsup evaluate`'s and `selfsup demo`'s bodies and the tables they print (their options:
selfsup/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from selfsup.commands import console
from selfsup.demo import run_demo
from selfsup.errors import SelfsupError
from selfsup.evaluate.dispatch import evaluate as run_evaluate
from selfsup.evaluate.finetune import IMAGE_HEAD_INIT, TEXT_HEAD_INIT
from selfsup.evaluate.sweep import sweep
from selfsup.evaluate.text import budget_accuracy, evaluate_text, is_text_target, text_sweep
from selfsup.options import EvaluateOptions, collect
from selfsup.report import verdict


def evaluate(**values: Any) -> None:
    """`selfsup evaluate`: the text, sweep or single-run protocol, as the run and options ask."""
    o = EvaluateOptions(**collect(values, EvaluateOptions))  # mappings parsed, None: default
    run = values["run"]
    if is_text_target(run) and o.compile != "auto":
        raise SelfsupError("--compile applies to image, series and CLIP runs: text evaluation "
                           "runs eagerly (its batches change width)")
    if is_text_target(run):  # its own protocols (text.parse_protocol), checked before any work
        print_text_eval(_evaluate_text(run, o))
    elif o.protocol not in ("probes", "finetune"):
        raise SelfsupError(f"--protocol must be 'probes' or 'finetune', not {o.protocol!r}"
                           + (" (setfit is for text models)" if "setfit" in o.protocol else ""))
    elif o.setfit_iterations is not None or o.setfit_max_pairs is not None:
        raise SelfsupError("--setfit-iterations and --setfit-max-pairs are for text models")
    elif o.fractions is not None or o.labels_per_class is not None:
        print_sweep(sweep(
            run, o.data, o.test, fractions=o.fractions, labels_per_class=o.labels_per_class,
            seeds=o.seeds, baseline=o.baseline, baseline_minutes=o.baseline_minutes,
            baseline_steps=o.baseline_steps, skip_bad=o.skip_bad, progress=o.progress,
            finetune_minutes=o.finetune_minutes if o.protocol == "finetune" else None,
            data_options=o.data_options or None, test_options=o.test_options or None,
            compile=o.compile, finetune_head=o.finetune_head or IMAGE_HEAD_INIT))
    else:
        result = _evaluate_run(run, o)
        (print_clip_eval if "zero_shot" in result or "retrieval" in result else print_eval)(
            result)


def _evaluate_text(run: Path, o: EvaluateOptions) -> dict[str, Any]:
    """The text protocols of a text run or a Hugging Face folder."""
    fields = {"text_field": o.text_field, "label_field": o.label_field}
    setfit = {"iterations": o.setfit_iterations, "max_pairs": o.setfit_max_pairs}
    swept = o.fractions is not None or o.labels_per_class is not None
    return evaluate_text(
        run, o.data, o.test, out=o.out, fractions=o.fractions,
        labels_per_class=o.labels_per_class, protocol=o.protocol, baseline=o.baseline,
        finetune_minutes=o.finetune_minutes, finetune_epochs=o.finetune_epochs,
        finetune_head=o.finetune_head or TEXT_HEAD_INIT, max_length=o.max_length, seed=o.seed,
        setfit_options={k: v for k, v in setfit.items() if v is not None} or None,
        seeds=o.seeds if swept else 1, test_size=o.test_size, progress=o.progress,
        data_options={**o.data_options, **{k: v for k, v in fields.items() if v is not None}},
        test_options=o.test_options or None,
    )


def _evaluate_run(run: Path, o: EvaluateOptions) -> dict[str, Any]:
    """An image, series or CLIP run through the one evaluation entry."""
    try:
        finetune_at = tuple(float(f) for f in o.finetune_fractions.split(","))
    except ValueError:
        raise SelfsupError(
            f"--finetune-fractions: {o.finetune_fractions!r} is not a comma-separated list of "
            "numbers"
        ) from None
    return run_evaluate(
        run, o.data, o.test, baseline=o.baseline, baseline_minutes=o.baseline_minutes,
        seed=o.seed, skip_bad=o.skip_bad, progress=o.progress,
        finetune_minutes=o.finetune_minutes if o.protocol == "finetune" else None,
        finetune_fractions=finetune_at, data_options=o.data_options or None,
        test_options=o.test_options or None,
        clip_options=_clip_options(o.pairs, o.class_names, o.template, o.class_subset),
        compile=o.compile, finetune_head=o.finetune_head or IMAGE_HEAD_INIT,
    )


def _clip_options(
    pairs: str | None, class_names: str | None, templates: list[str] | None,
    subsets: list[str] | None,
) -> dict[str, Any] | None:
    """The CLIP evaluation flags as ``evaluate``'s ``clip_options`` (None when none is given)."""
    options: dict[str, Any] = {}
    if pairs is not None:
        options["pairs"] = pairs
    if class_names is not None:
        options["class_names"] = [n.strip() for n in class_names.split(",") if n.strip()]
    if templates:
        options["templates"] = list(templates)
    if subsets:
        parsed = {}
        for item in subsets:
            name, sep, members = item.partition("=")
            classes = [m.strip() for m in members.split(",") if m.strip()]
            if not sep or not name.strip() or not classes:
                raise SelfsupError(f"--class-subset expects NAME=class,class; got {item!r}")
            parsed[name.strip()] = classes
        options["subsets"] = parsed
    return options or None


def print_clip_eval(result: dict[str, Any]) -> None:
    where = result.get("test_data") or result.get("retrieval", {}).get("pairs")
    table = Table(title=f"{result['method']} / {result['encoder']} on {where}")
    table.add_column("protocol")
    table.add_column("score", justify="right")
    table.add_column("notes")
    for name, row in result.get("zero_shot", {}).items():
        if isinstance(row, dict) and "accuracy" in row:
            label = "zero-shot, all classes" if name == "all" else f"zero-shot, {name}"
            table.add_row(label, f"{row['accuracy']:.4f}",
                          f"{row['num_classes']} classes, chance {row['chance']:.3f}, "
                          f"{row['num_images']} images")
    for probe, label in (("linear", "linear probe"), ("knn", "kNN")):
        if probe in result:
            table.add_row(f"image tower, {label}", f"{result[probe]['accuracy']:.4f}",
                          _chosen(result[probe]["chosen"]))
    if "supervised" in result:
        sup = result["supervised"]
        table.add_row("supervised baseline", f"{sup['accuracy']:.4f}",
                      f"same image encoder from scratch, {sup['minutes']:.1f} min")
    retrieval = result.get("retrieval")
    if retrieval:
        for direction in ("image_to_text", "text_to_image"):
            scores = retrieval[direction]
            table.add_row(f"retrieval {direction.replace('_', ' ')}",
                          " / ".join(f"{v:.3f}" for v in scores.values()),
                          f"{' / '.join(scores)}; {retrieval['num_images']} images, "
                          f"{retrieval['num_captions']} captions")
    console.print(table)
    console.print(f"written to {Path(result['run']) / 'eval.json'}")


def print_text_eval(result: dict[str, Any]) -> None:
    """Text evaluation: one row per label budget, the model against its references."""
    seeds = int(result.get("seeds", 1))
    over = f", mean ± std over {seeds} seeds" if seeds > 1 else ""
    table = Table(title=f"{result.get('method')} / {result['model']} on {result['test_data']} "
                        f"(test accuracy, %{over})")
    kinds = [("model", "linear"), ("model", "knn"), ("model", "finetune"), ("model", "setfit"),
             ("start", "linear"), ("start", "finetune"), ("start", "setfit"),
             ("scratch", "finetune")]
    rows = result["budgets"]
    shown = [k for k in kinds if any(k[1] in (r.get(k[0]) or {}) for r in rows)]
    table.add_column("labels")
    for kind, protocol in shown:
        name = {"model": "model", "start": "starting model", "scratch": "from scratch"}[kind]
        table.add_column(f"{name} {protocol}", justify="right")

    def cell(stat: dict[str, Any] | None) -> str:
        if not stat or stat.get("mean") is None:
            return "—"
        return (f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}" if seeds > 1
                else f"{100 * stat['mean']:.1f}")

    for r in rows:
        table.add_row(f"{r['budget']} ({r['num_labels']})",
                      *(cell(budget_accuracy(r, k, p)) for k, p in shown))
    console.print(table)
    cut = result.get("truncated", {}).get("model", {})
    console.print(f"chance {100 * result['chance_accuracy']:.1f}%; texts cut to "
                  f"{result['max_length']} tokens: {cut.get('train', 0)} train, "
                  f"{cut.get('test', 0)} test")
    if result.get("supervised") is not None or "setfit" in result:  # the report's verdict
        console.print(f"Verdict: {verdict(text_sweep(result), quality=result.get('quality'))}")
    if result.get("run"):
        console.print(f"written to {Path(result['run']) / 'eval.json'}"
                      if Path(result["run"]).joinpath("eval.json").is_file() else
                      "not written (pass --out DIR to keep eval.json)")


def print_eval(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['method']} / {result['encoder']} on {result['test_data']}")
    table.add_column("protocol")
    table.add_column("test accuracy", justify="right")
    table.add_column("chosen on validation")
    table.add_row("linear probe", f"{result['linear']['accuracy']:.4f}",
                  _chosen(result["linear"]["chosen"]))
    table.add_row("kNN", f"{result['knn']['accuracy']:.4f}", _chosen(result["knn"]["chosen"]))
    if "minirocket" in result:  # series: the reference a practitioner fits first
        ref = result["minirocket"]
        table.add_row("MiniRocket (reference)", f"{ref['accuracy']:.4f}",
                      f"alpha {ref['alpha']:.3g} (LOO-CV), {ref['fit_seconds']:.1f} s")
    if "supervised" in result:
        sup = result["supervised"]
        table.add_row("supervised baseline", f"{sup['accuracy']:.4f}",
                      f"same encoder from scratch, {sup['minutes']:.1f} min")
        ratio = result["linear_over_supervised"]
        table.add_row("linear / supervised", f"{ratio:.3f}" if ratio is not None else "n/a", "")
    for fraction, row in result.get("finetune", {}).get("fractions", {}).items():
        for kind, label in (("pretrained", "fine-tuned"), ("scratch", "from scratch, same")):
            if kind in row:
                cell = row[kind]
                table.add_row(f"{label} ({fraction} labels)", f"{cell['accuracy']:.4f}",
                              f"best epoch {cell['chosen_epoch']}, {cell['seconds'] / 60:.1f} min")
    table.add_row("chance (majority class)", f"{result['chance_accuracy']:.4f}", "")
    console.print(table)
    if "supervised" in result or "minirocket" in result:  # one verdict, worded in one place
        console.print(f"Verdict: {verdict(None, result)}")
    console.print(f"written to {Path(result['run']) / 'eval.json'}")


def print_sweep(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['method']} / {result['encoder']}: label efficiency on "
                        f"{result['test_data']} (mean ± std over {result['seeds']} seeds)")
    tuned = any("finetune" in p["summary"] for p in result["points"])
    reference = any("minirocket" in p["summary"] for p in result["points"])  # series
    protocols = ("linear", "knn", *(("finetune", "finetune_scratch") if tuned else ()),
                 "supervised", *(("minirocket",) if reference else ()))
    names = {"finetune": "fine-tune", "finetune_scratch": "fine-tune from scratch"}
    for column in ("labels", "count", *protocols, "linear − supervised"):
        table.add_column(names.get(column, column),
                         justify="left" if column == "labels" else "right")

    def cell(stat: dict[str, Any] | None) -> str:
        if not stat or stat.get("mean") is None:
            return "—"
        return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"

    for point in result["points"]:
        s = point["summary"]
        table.add_row(point["budget"], f"{point['num_labels']:.0f}",
                      *(cell(s.get(p, {}).get("accuracy")) for p in protocols),
                      cell(s.get("linear_minus_supervised")))
    console.print(table)
    console.print(f"Verdict: {verdict(result, quality=result.get('quality'))}")
    console.print(f"written to {Path(result['run']) / 'sweep.json'}; "
                  f"next: selfsup report {result['run']}")


def _chosen(chosen: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in chosen.items() if k != "converged")


def demo(out: str, minutes: float, progress: bool) -> None:
    """`selfsup demo`: SimCLR on digits, then its evaluation table."""
    print_eval(run_demo(out=out, minutes=minutes, progress=progress))
