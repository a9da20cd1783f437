"""The honest verdict on CIFAR-10: the label-efficiency sweep at 1%, 10% and 100% labels, 3 seeds.

One image benchmark run (by default VICReg, the best of `benchmarks/cifar10_methods.py`, with the
same encoder, batch and 20-minute budget) is swept by the real CLI:

    selfsup evaluate RUN --data cifar10/train --test cifar10/test --fractions 0.01,0.1,1 --seeds 3
    selfsup report RUN

At every label budget and seed a stratified label subset is drawn from cifar10/train; the linear
and kNN probes choose their settings on a validation carve of that subset, and the supervised
baseline (the same encoder from scratch, same labels) is trained by the same engine. Every score
is on the 10,000 test images.

The baseline's budget is the pre-training's, counted in steps so that it does not depend on what
else the machine is doing while nine baselines train for hours: every baseline gets
``minutes x 60 x rate`` steps, the steps the pre-training's minutes buy the supervised step on
the machine as it was while it pre-trained. The rate is measured around the pre-training: a short
supervised run on all of cifar10/train just before it and one just after, their steady rates
averaged (a single run on another day missed it by half: the machine's speed drifts). Where the
pre-training is cached, a stand-in of the same settings is bracketed instead, and the rate scaled
by the cached run's steps over the stand-in's. The calibration is kept beside the runs and reused.

Everything is cached: the pre-training is skipped when the run exists, and each finished
baseline keeps its score in ``RUN/sweep/baseline-*/result.json`` (and an unfinished one continues
from its last checkpoint), so the sweep (about four hours on 2 cores, six with fine-tuning) may
be spread over several sittings; run the same command again. A sitting on another machine (a
fresh clone) starts from ``benchmarks/results/STEM_kept/``: the pre-trained encoder (its weights,
config and summary), the calibration and every finished unit's score, copied there whenever the
sweep stops (finished, failed or killed with SIGTERM) and restored into the runs folder when it
starts. A fine-tuning is reused only for the encoder weights it was measured with (its key holds
their digest); a baseline does not depend on them.

With ``--finetune-minutes M`` every point also fine-tunes the pre-trained encoder end to end on
its label subset for M minutes, and the same network from scratch with the same recipe for
exactly as many steps (steps, not minutes, so that a busy machine cannot shortchange one of the
two); the supervised baseline then gets the pre-training's and the fine-tuning's minutes
together. So the table answers both accountings: (a) fine-tuning against from scratch at an
equal budget on the labels, and (b) pre-training + fine-tuning against supervised training
given their sum. ``--tag`` writes a table (and runs) of its own.

A baseline does not depend on the encoder, only on its steps: ``--baselines-from RUNS`` copies
another sweep's finished baselines in, and each is reused only where its key (steps included)
still matches; ``benchmarks/results/cifar10_sweep_baselines/`` holds the nine baselines of the
25-minute sweeps before the bracketed calibration (6,157 steps each, from a single 3-minute
supervised run on 2026-12-05; 54-73% of an equal budget, as ``benchmarks/baseline_calibration.py``
found). A recipe change to the pre-training (``--augment-option KEY=VALUE``, passed to
``selfsup pretrain``) is calibrated anew. ``--pretrain-only`` stops after the pre-training, so
the new encoder can be compared with the old on a carve of cifar10/train
(``benchmarks/cifar10_carve_probe.py``) before the fine-tunings' hours.

    .venv/bin/python benchmarks/cifar10_sweep.py
    .venv/bin/python benchmarks/cifar10_sweep.py --quick     # 1-minute runs, 2 seeds, a _quick file
    .venv/bin/python benchmarks/cifar10_sweep.py --finetune-minutes 5 --tag finetune
    .venv/bin/python benchmarks/cifar10_sweep.py --finetune-minutes 5 --tag progressive \
        --augment-option progressive_min_size=16 --augment-option progressive_until=0.5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CIFAR = REPO.parent / "shared" / "data" / "cifar10"
RESULTS = REPO / "benchmarks" / "results"


def selfsup(*args: str) -> list[str]:
    return [str(REPO / ".venv" / "bin" / "selfsup"), *args]


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def steady_rate(method: str, minutes: float, encoder: str, batch_size: int, folder: Path,
                augment_options: Sequence[str] = ()) -> dict:
    """A short ``selfsup pretrain`` run on all of cifar10/train: its steps and its steady rate.

    The steady rate (the run's samples per second: without its compilation and the data
    loader's restarts), not steps over wall time: a 3-minute run spends a tenth of it compiling,
    the 20-minute pre-training a fiftieth, and the baseline should not pay for the difference.
    """
    if folder.exists():
        shutil.rmtree(folder)
    run(selfsup("pretrain", method, "--data", str(CIFAR / "train"), "--minutes", str(minutes),
                "--encoder", encoder, "--batch-size", str(batch_size), "--out", str(folder),
                "--no-progress", *[f"--augment-option={o}" for o in augment_options]))
    summary = json.loads((folder / "pretrain.json").read_text())
    shutil.rmtree(folder)
    return {"steps": summary["steps"], "seconds": summary["train_seconds"],
            "steps_per_s": summary["samples_per_s"] / summary["global_batch_size"],
            "precision": summary["precision"]}


def pre_train(args: argparse.Namespace, folder: Path) -> None:
    """The sweep's pre-training into ``folder`` (afresh)."""
    if folder.exists():
        shutil.rmtree(folder)
    run(selfsup("pretrain", args.method, "--data", str(CIFAR / "train"),
                "--minutes", str(args.minutes), "--encoder", args.encoder,
                "--batch-size", str(args.batch_size), "--out", str(folder), "--no-progress",
                *[f"--augment-option={o}" for o in args.augment_option]))


def calibrate(args: argparse.Namespace, target: Path) -> dict:
    """The supervised step's rate while the machine pre-trains: steady rates just before and just
    after the pre-training (into ``target``, unless cached there: then a stand-in, and the rate
    scaled by the cached run's steps over the stand-in's)."""
    folder = args.runs / "calibration"
    rates = [steady_rate("supervised", args.calibrate_minutes, args.encoder, args.batch_size,
                         folder)]
    load = [os.getloadavg()[0]]
    cached = (target / "pretrain.json").is_file()
    bracketed = folder if cached else target
    pre_train(args, bracketed)
    steps = json.loads((bracketed / "pretrain.json").read_text())["steps"]
    if cached:
        shutil.rmtree(folder)
    load.append(os.getloadavg()[0])
    rates.append(steady_rate("supervised", args.calibrate_minutes, args.encoder,
                             args.batch_size, folder))
    load.append(os.getloadavg()[0])
    own = json.loads((target / "pretrain.json").read_text())["steps"]
    mean = sum(r["steps_per_s"] for r in rates) / len(rates)
    return {"minutes": args.calibrate_minutes, "before": rates[0], "after": rates[1],
            "bracketed": "a stand-in pre-training" if cached else "the pre-training",
            "bracketed_steps": steps, "pretrain_steps": own, "steps_per_s": mean * own / steps,
            "load_1min": load, "date": time.strftime("%Y-%m-%d")}


def calibration_line(result: dict) -> str:
    """How the baselines' steps were counted, for the table's header."""
    c = result["calibration"]
    scaled = (f", scaled by the pre-training's {c['pretrain_steps']:,} steps over the "
              f"stand-in's {c['bracketed_steps']:,}" if c["bracketed_steps"] != c["pretrain_steps"]
              else "")
    return (f"Each baseline: {result['baseline_steps']} steps = {baseline_minutes(result)} min x "
            f"{c['steps_per_s']:.3f} steps/s: the supervised step's steady rate on all of "
            f"cifar10/train in {c['minutes']:g}-min runs just before and just after "
            f"{c['bracketed']} ({c['before']['steps_per_s']:.2f} and "
            f"{c['after']['steps_per_s']:.2f} steps/s{scaled}; load average "
            f"{min(c['load_1min']):.2f}–{max(c['load_1min']):.2f}) on {c['date']}.")


KEPT = ("settings.json", "calibration.json", "METHOD/config.yaml", "METHOD/pretrain.json",
        "METHOD/encoder.json", "METHOD/encoder.safetensors", "METHOD/sweep/*/result.json",
        "METHOD/sweep/*/finetune.json")


def kept_files(root: Path, method: str) -> list[Path]:
    """The KEPT files present under ``root``, relative to it."""
    found = []
    for pattern in KEPT:
        found += [p.relative_to(root) for p in root.glob(pattern.replace("METHOD", method))]
    return sorted(found)


def copy_kept(source: Path, target: Path, method: str) -> int:
    """Copy the kept files from ``source`` to ``target`` (each replaced atomically); the count."""
    files = kept_files(source, method)
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        partial = (target / name).with_name((target / name).name + ".partial")
        shutil.copyfile(source / name, partial)
        partial.replace(target / name)
    return len(files)


def fmt(stat: dict | None, scale: float = 100.0) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    return f"{scale * stat['mean']:.1f} ± {scale * stat['std']:.1f}"


def markdown(result: dict) -> str:
    from selfsup.report import sweep_markdown

    sweep = result["sweep"]
    lines = [
        "# CIFAR-10: label-efficiency sweep (SSL + probes vs supervised from scratch)",
        "",
        f"Machine: {result['machine']}. Run: `selfsup pretrain {result['method']} --minutes "
        f"{result['minutes']} --encoder {result['encoder']} --batch-size {result['batch_size']}"
        f"{augment_flags(result)}` "
        f"on cifar10/train ({result['pretrain']['steps']} steps, {result['pretrain']['precision']})"
        f". Sweep: `selfsup evaluate RUN --data cifar10/train --test cifar10/test --fractions "
        f"{result['fractions']} --seeds {result['seeds']} --baseline-steps "
        f"{result['baseline_steps']}{finetune_flags(result)}`. Command: `{result['command']}`.",
        "",
        f"{calibration_line(result)} Accuracy in %, mean ± std over seeds; "
        f"{sweep['num_test']} test images.",
        "",
    ]
    if result.get("finetune_minutes"):
        lines += [
            f"Fine-tuning: the pre-trained encoder for {result['finetune_minutes']} min on the "
            f"label subset, and the same network from scratch for as many steps (steps per "
            f"point in `{result['stem']}.json`). Accountings: (a) fine-tune − scratch, an "
            f"equal budget on the labels; (b) fine-tune − supervised, {result['minutes']} min "
            f"of pre-training + {result['finetune_minutes']} min of fine-tuning against "
            f"supervised training for their sum. The sweep spans sittings, and each sitting's "
            f"machine buys its own number of steps in those minutes:",
            "",
            *budget_lines(sweep),
            "",
        ]
    lines.append(sweep_markdown(sweep).rstrip("\n"))
    quality = sweep.get("quality") or {}
    lines += [
        "",
        f"Label-free metrics on the test embeddings: effective rank (RankMe) "
        f"{quality.get('effective_rank', float('nan')):.1f}, uniformity "
        f"{quality.get('uniformity', float('nan')):.3f}, alignment "
        f"{quality.get('alignment', float('nan')):.3f}, collapsed: {quality.get('collapsed')}.",
        "",
        f"Verdict (from `selfsup report`): {result['verdict']}",
        "",
        f"Headline: at 100% labels SSL + linear probe reaches {fmt(result['ratio_at_100'], 100.0)}%"
        f" of supervised accuracy (the claim to test: at least 85%); at 1% labels the gap is "
        f"{fmt(result['gap_at_1'])} points.",
    ]
    if result.get("finetune_minutes"):
        lines += ["", "Targets (issue 26; means over the seeds):", "",
                  *targets_markdown(targets(result["sweep"]))]
    return "\n".join(lines) + "\n"


def budget_lines(sweep: dict) -> list[str]:
    """Each point's fine-tuning steps and seconds per seed (scratch takes the same steps)."""
    lines = []
    for point in sweep["points"]:
        runs = [r for r in point["runs"] if "finetune" in r]
        if runs:
            steps = ", ".join(f"{r['finetune']['steps']:,}" for r in runs)
            seconds = [r["finetune"]["seconds"] for r in runs]
            lines.append(f"- {point['budget']} labels: {steps} steps (seeds 0–{len(runs) - 1}) "
                         f"in {min(seconds):.0f}–{max(seconds):.0f} s each")
    return lines


def targets(sweep: dict) -> list[dict]:
    """Issue 26's targets, each from the sweep's own summaries (None where not measured)."""
    by_fraction = {p["fraction"]: p["summary"] for p in sweep["points"]}

    def mean(fraction: float, key: str) -> float | None:
        stat = by_fraction.get(fraction, {}).get(key)
        return None if stat is None else stat["mean"]

    best_low = [(m, mean(0.01, f"{m}_minus_supervised")) for m in ("linear", "knn", "finetune")]
    best_low = [(m, v) for m, v in best_low if v is not None]
    best = max(best_low, key=lambda mv: mv[1]) if best_low else (None, None)
    tuned, scratch = (by_fraction.get(1.0, {}).get(k) for k in ("finetune", "finetune_scratch"))
    ratio = tuned["accuracy"]["mean"] / scratch["accuracy"]["mean"] if tuned and scratch and \
        scratch["accuracy"]["mean"] > 0 else None
    rows = [("10%: fine-tune − scratch, equal steps (a)", mean(0.1, "finetune_minus_scratch"),
             0.03, 100.0, " points"),
            (f"1%: best SSL protocol ({best[0]}) − supervised", best[1], 0.20, 100.0, " points"),
            ("100%: linear / supervised", mean(1.0, "linear_over_supervised"), 0.85, 100.0, "%"),
            ("100%: fine-tune / supervised (b)", mean(1.0, "finetune_over_supervised"), 1.0,
             100.0, "%"),
            ("100%: fine-tune / scratch, equal steps (a)", ratio, 1.0, 100.0, "%")]
    return [{"target": name, "value": None if v is None else v * scale,
             "at_least": floor * scale, "unit": unit, "met": None if v is None else v >= floor}
            for name, v, floor, scale, unit in rows]


def targets_markdown(rows: list[dict]) -> list[str]:
    lines = ["| target | measured | at least | met |", "|---|---:|---:|---|"]
    for r in rows:
        value = "—" if r["value"] is None else f"{r['value']:+.1f}" if r["unit"] == " points" \
            else f"{r['value']:.1f}"
        met = "—" if r["met"] is None else "yes" if r["met"] else "**no**"
        lines.append(f"| {r['target']} | {value}{r['unit'] * (r['value'] is not None)} | "
                     f"{r['at_least']:g}{r['unit']} | {met} |")
    return lines


def augment_flags(result: dict) -> str:
    return "".join(f" --augment-option {o}" for o in result.get("augment_options", []))


def finetune_flags(result: dict) -> str:
    minutes = result.get("finetune_minutes")
    return f" --protocol finetune --finetune-minutes {minutes}" if minutes else ""


def baseline_minutes(result: dict) -> str:
    """The minutes the baseline's steps stand for: pre-training (+ fine-tuning, accounting b)."""
    minutes = result.get("finetune_minutes")
    return f"({result['minutes']} + {minutes})" if minutes else f"{result['minutes']}"


def copy_baselines(source: Path, target: Path, method: str) -> int:
    """Copy ``source``'s finished baselines into ``target`` (what is not there yet); the count.
    The evaluation reuses a baseline only where its key (data, label subset, seed, steps)
    matches, so a copied baseline cannot stand in for a different one. The calibration is not
    copied: it belongs to this sweep's pre-training."""
    names = [p.relative_to(source) for p in source.glob(f"{method}/sweep/baseline-*/*.json")]
    copied = 0
    for name in names:
        if (source / name).is_file() and not (target / name).exists():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target / name)
            copied += 1
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="vicreg")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--encoder", default="resnet_small")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--fractions", default="0.01,0.1,1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--calibrate-minutes", type=float, default=3.0)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench-cifar10-sweep")
    parser.add_argument("--quick", action="store_true", help="1-minute runs, 2 seeds")
    parser.add_argument("--finetune-minutes", type=float, help="fine-tune at every point too "
                        "(and the same network from scratch), this long each")
    parser.add_argument("--tag", help="a table and runs of their own, cifar10_sweep_TAG")
    parser.add_argument("--augment-option", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to the pre-training (e.g. progressive_min_size=16)")
    parser.add_argument("--pretrain-only", action="store_true",
                        help="stop after the pre-training, so its encoder can be checked on a "
                        "carve of train before the sweep's hours")
    parser.add_argument("--baselines-from", type=Path, metavar="RUNS",
                        help="another sweep's runs folder: its calibration and finished "
                        "baselines are copied in (a baseline does not depend on the encoder; "
                        "each is reused only where its key still matches)")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.seeds, args.calibrate_minutes = 1.0, 2, 0.5
        args.runs = args.runs.with_name(args.runs.name + "-quick")
    if not CIFAR.is_dir():
        sys.exit(f"needs {CIFAR} (see ../shared/data/README.md)")
    stem = "cifar10_sweep_quick" if args.quick else "cifar10_sweep"
    if args.tag:
        stem += f"_{args.tag}"
        args.runs = args.runs.with_name(f"{args.runs.name}-{args.tag}")
    settings = {"method": args.method, "minutes": args.minutes, "encoder": args.encoder,
                "batch_size": args.batch_size, "fractions": args.fractions, "seeds": args.seeds,
                "calibrate_minutes": args.calibrate_minutes,
                **({"finetune_minutes": args.finetune_minutes} if args.finetune_minutes else {}),
                **({"augment_options": args.augment_option} if args.augment_option else {})}
    # The cache (pre-training, calibration, finished baselines) holds for these settings only.
    recorded = args.runs / "settings.json"
    if args.runs.exists() and (not recorded.is_file()
                               or json.loads(recorded.read_text()) != settings):
        shutil.rmtree(args.runs)
    keep = None if args.quick else RESULTS / f"{stem}_kept"
    if keep and keep.is_dir() and json.loads((keep / "settings.json").read_text()) != settings:
        sys.exit(f"{keep} holds a sweep with other settings; move it away to start afresh")
    args.runs.mkdir(parents=True, exist_ok=True)
    if keep and keep.is_dir():
        print(f"restored {copy_kept(keep, args.runs, args.method)} kept files from {keep}")
    recorded.write_text(json.dumps(settings, indent=2) + "\n")
    # Keep what is finished whenever the sweep stops (SIGTERM included: a sitting's end).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    try:
        sweep(args, settings, stem)
    finally:
        if keep and (args.runs / args.method / "encoder.safetensors").is_file():
            print(f"kept {copy_kept(args.runs, keep, args.method)} files in {keep}")


def sweep(args: argparse.Namespace, settings: dict, stem: str) -> None:
    """Pre-train (unless cached), calibrate (unless cached), evaluate, report."""
    result = {
        **settings,
        "command": "python benchmarks/cifar10_sweep.py" + (" --quick" if args.quick else "")
        + (f" --finetune-minutes {args.finetune_minutes}" if args.finetune_minutes else "")
        + (f" --tag {args.tag}" if args.tag else "") + augment_flags(settings)
        + (f" --baselines-from {args.baselines_from}" if args.baselines_from else ""),
        "stem": stem,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }

    target = args.runs / args.method
    calibration = args.runs / "calibration.json"
    if not calibration.is_file() or "before" not in json.loads(calibration.read_text()):
        # (a calibration without "before" is the single run of earlier sweeps: measured anew)
        calibration.write_text(json.dumps(calibrate(args, target), indent=2) + "\n")
    if not (target / "pretrain.json").is_file():
        pre_train(args, target)
    if args.pretrain_only:
        return
    if args.baselines_from:  # after the pre-training, which starts its folder afresh
        print(f"copied {copy_baselines(args.baselines_from, args.runs, args.method)} files "
              f"from {args.baselines_from}")
    pretrain = json.loads((target / "pretrain.json").read_text())
    result["pretrain"] = {k: pretrain.get(k) for k in
                          ("steps", "train_seconds", "images_per_s", "precision", "final_loss")}
    result["calibration"] = json.loads(calibration.read_text())
    steps = round((args.minutes + (args.finetune_minutes or 0)) * 60
                  * result["calibration"]["steps_per_s"])
    result["baseline_steps"] = steps

    # Steps alone: a minutes cap would also pace the learning-rate schedule (the engine follows
    # the furthest of its limits), so a slowed or paused baseline would decay its rate early.
    run(selfsup("evaluate", str(target), "--data", str(CIFAR / "train"),
                "--test", str(CIFAR / "test"), "--fractions", args.fractions,
                "--seeds", str(args.seeds), "--baseline-steps", str(steps), "--no-progress",
                *finetune_flags(result).split()))
    run(selfsup("report", str(target)))

    from selfsup.report import verdict

    sweep = json.loads((target / "sweep.json").read_text())
    result["sweep"] = {k: v for k, v in sweep.items() if k != "run"}
    result["verdict"] = verdict(sweep, None, sweep.get("quality"))
    high, low = sweep["points"][-1]["summary"], sweep["points"][0]["summary"]
    result["ratio_at_100"] = high.get("linear_over_supervised")
    result["gap_at_1"] = low.get("linear_minus_supervised")
    if args.finetune_minutes:
        result["targets"] = targets(sweep)
    result["date"] = time.strftime("%Y-%m-%d")
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(target / "report.html", RESULTS / f"{stem}_report.html")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result), flush=True)


if __name__ == "__main__":
    main()
