"""Series SSL against MiniRocket, per set and pooled across sets (issue 29).

For each of the six UCR/UEA sets in ../shared/data/timeseries and MNIST-1D, and each seed:

- **per-set SSL**: ``ts-contrast`` pre-trained on that set's train split alone, the recipe of
  benchmarks/ucr.py (its ``Setting``: steps, batch, lr, encoder), labels unused;
- **pooled SSL**: one ``ts-contrast`` encoder pre-trained on *all seven* train splits pooled
  (``selfsup pretrain ts-contrast --data A.npz,B.npz,...``: channel counts differ, so every
  channel is a one-channel series and the encoder embeds a C-channel series channel by channel
  and concatenates), for about the per-set runs' total number of samples drawn
  (``POOLED_STEPS`` x ``POOLED_BATCH``);
- both read out by the same linear probe, its C chosen by 5-fold stratified cross-validation
  on the train split (benchmarks/ucr.py's grid), scored once on the test split;
- **MiniRocket** (aeon's ``MiniRocketClassifier``, selfsup/evaluate/minirocket.py) on the same
  train split, its ridge penalty chosen by leave-one-out CV on it;
- **1-NN Euclidean** on the raw series (zero-padded to one length), and **supervised from
  scratch** (the same encoder on the train labels, same engine, steps, batch and lr as per-set
  SSL; benchmarks/ucr.py's ``supervised``).

Nothing is tuned on a test split: the recipes are fixed in advance (per-set: benchmarks/ucr.py,
chosen there by cross-validation on the train splits), the pooled budget is set by the per-set
runs' sample count. Each result is kept under ``--work`` as it is made, so an interrupted run
resumes, and two processes may split the work (``--only pooled-runs`` beside ``--only
per-set``); a last call assembles benchmarks/results/ucr_pooled.{json,md}.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ucr_pooled.py             # seeds 0, 1, 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ucr_pooled.py --quick     # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.neighbors import KNeighborsClassifier
from ucr import CS, DATA, DATASETS, RESULTS, Setting, budget, common, supervised

from selfsup import atomic
from selfsup.api import pretrain
from selfsup.data.series import SeriesData, load_series
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.minirocket import minirocket_reference
from selfsup.evaluate.probes import linear_probe, stratified_split
from selfsup.models import build_encoder
from selfsup.run import RunDir, load_encoder

POOLED_STEPS = 800
POOLED_BATCH = 64  # 800 x 64 = 51,200 samples; per-set runs draw 6 x 300 x 8 + 600 x 64 = 52,800


def split(name: str) -> tuple[SeriesData, SeriesData]:
    path = DATA / DATASETS[name]
    return load_series(path, {"split": "train"}), load_series(path, {"split": "test"})


def probe(encoder: torch.nn.Module, name: str, seed: int, setting: Setting) -> dict[str, Any]:
    """The linear probe of benchmarks/ucr.py: C by stratified k-fold CV on the train split."""
    train, test = split(name)
    train_x = extract_features(encoder, train, precision="32")
    test_x = extract_features(encoder, test, precision="32")
    fit_idx, val_idx = stratified_split(train.labels, 0.25, seed)  # merged again for the CV
    linear = linear_probe(train_x[fit_idx], train.labels[fit_idx], train_x[val_idx],
                          train.labels[val_idx], test_x, test.labels, Cs=CS, seed=seed,
                          cv_folds=setting.cv_folds)
    return {**linear.as_dict(), "feature_dim": int(train_x.shape[1])}


def one_nn_euclidean(name: str) -> float:
    """1-NN with Euclidean distance on the raw series, zero-padded to one common length."""
    train, test = split(name)
    width = max(train.values.shape[2], test.values.shape[2])

    def flat(data: SeriesData) -> np.ndarray:
        padded = np.pad(data.values, ((0, 0), (0, 0), (0, width - data.values.shape[2])))
        return padded.reshape(len(data), -1)

    model = KNeighborsClassifier(n_neighbors=1).fit(flat(train), train.labels)
    return float((model.predict(flat(test)) == test.labels).mean())


class Cache:
    """One JSON file per result under ``folder``: resumable, shareable by two processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, make) -> Any:
        path = self.folder / f"{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
        value = make()
        atomic.write_json(path, value)
        return value


def per_set(name: str, seed: int, setting: Setting, work: Path) -> dict[str, Any]:
    train, test = split(name)
    steps, batch = budget(setting, len(train))
    started = time.monotonic()
    run = pretrain("ts-contrast", data=str(DATA / DATASETS[name]),
                   out=str(work / "runs" / f"{name}-{seed}"), data_options={"split": "train"},
                   **common(setting, steps, batch, seed))
    seconds = time.monotonic() - started
    encoder, _ = load_encoder(run)
    return {**probe(encoder, name, seed, setting), "pretrain_seconds": seconds,
            "steps": steps, "batch_size": batch}


def supervised_run(name: str, seed: int, setting: Setting, work: Path) -> float:
    """benchmarks/ucr.py's supervised baseline with per-set SSL's steps and batch."""
    train, test = split(name)
    return supervised(setting, train, test, *budget(setting, len(train)), seed,
                      work / "runs" / f"{name}-supervised-{seed}")


def instance_norm_check(setting: Setting) -> dict[str, Any]:
    """Train-split CV accuracy of the linear probe on a randomly initialised channel-independent
    encoder, with and without ``instance_norm``, on JapaneseVowels (seed 0): the recipe choice
    of the pooled runs (whether pooled series are z-normalised one by one)."""
    out = {}
    for on in (True, False):
        torch.manual_seed(0)
        encoder = build_encoder(setting.encoder, in_channels=1, channel_independent=True,
                                instance_norm=on, **setting.encoder_options).eval()
        out[f"instance_norm={on}"] = probe(encoder, "JapaneseVowels", 0, setting)
    return out


def pooled_run(seed: int, setting: Setting, work: Path, steps: int) -> dict[str, Any]:
    data = ",".join(str(DATA / f) for f in DATASETS.values())
    values = {**common(setting, steps, POOLED_BATCH, seed)}
    started = time.monotonic()
    run = pretrain("ts-contrast", data=data, out=str(work / "runs" / f"pooled-{seed}"),
                   data_options={"split": "train"}, **values)
    return {"run": str(run.path), "pretrain_seconds": time.monotonic() - started,
            "steps": steps, "batch_size": POOLED_BATCH}


def per_set_part(seeds: list[int], setting: Setting, work: Path, names: list[str]) -> None:
    """Only the per-set SSL runs and the supervised baselines (beside a pooled-runs process)."""
    cache = Cache(work / "results")
    for seed in seeds:
        for name in names:
            cache.get(f"per-set-{name}-{seed}", lambda n=name, s=seed: per_set(n, s, setting, work))
            cache.get(f"supervised-{name}-{seed}",
                      lambda n=name, s=seed: supervised_run(n, s, setting, work))
            print(f"{name} seed {seed}: per-set and supervised done", flush=True)


def measure(seeds: list[int], setting: Setting, work: Path, pooled_steps: int,
            names: list[str], only: str | None = None) -> dict[str, Any] | None:
    cache = Cache(work / "results")
    if only == "per-set":
        per_set_part(seeds, setting, work, names)
        return None
    out: dict[str, Any] = {"sets": {}, "pooled_runs": {}}
    if only == "pooled-runs":
        for seed in seeds:
            cache.get(f"pooled-run-{seed}", lambda s=seed: pooled_run(s, setting, work,
                                                                      pooled_steps))
            print(f"pooled run, seed {seed}: done", flush=True)
        return None
    for seed in seeds:
        info = cache.get(f"pooled-run-{seed}",
                         lambda s=seed: pooled_run(s, setting, work, pooled_steps))
        out["pooled_runs"][seed] = info
        encoder, _ = load_encoder(RunDir(Path(info["run"])))
        for name in names:
            read_out = lambda n=name, s=seed, e=encoder: probe(e, n, s, setting)  # noqa: E731
            row = out["sets"].setdefault(name, {"seeds": {}})
            row["1nn_euclidean"] = cache.get(f"1nn-{name}", lambda n=name: one_nn_euclidean(n))
            entry = row["seeds"].setdefault(seed, {})
            entry["pooled"] = cache.get(f"pooled-{name}-{seed}", read_out)
            entry["minirocket"] = cache.get(
                f"minirocket-{name}-{seed}",
                lambda n=name, s=seed: minirocket_reference(*split(n), seed=s))
            trained = cache.get(f"per-set-{name}-{seed}",
                                lambda n=name, s=seed: per_set(n, s, setting, work))
            # Probed again here, by the same code as the pooled encoder in the same process
            # (the per-set runs may have been trained by an earlier process: --only per-set).
            per_set_encoder, _ = load_encoder(RunDir(work / "runs" / f"{name}-{seed}"))
            entry["per_set"] = {**trained, **probe(per_set_encoder, name, seed, setting)}
            entry["supervised"] = cache.get(
                f"supervised-{name}-{seed}",
                lambda n=name, s=seed: supervised_run(n, s, setting, work))
            print(f"{name} seed {seed}: pooled {entry['pooled']['accuracy']:.3f}, per-set "
                  f"{entry['per_set']['accuracy']:.3f}, MiniRocket "
                  f"{entry['minirocket']['accuracy']:.3f}, supervised "
                  f"{entry['supervised']:.3f}", flush=True)
    return out


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    """Means and sample std over seeds; pooled − MiniRocket and pooled − per-set, paired."""
    table = {}
    for name, row in out["sets"].items():
        runs = list(row["seeds"].values())

        def stat(values: list[float]) -> dict[str, float]:
            a = np.asarray(values, dtype=np.float64)
            return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}

        pooled = [r["pooled"]["accuracy"] for r in runs]
        per = [r["per_set"]["accuracy"] for r in runs]
        mr = [r["minirocket"]["accuracy"] for r in runs]
        table[name] = {
            "pooled": stat(pooled), "per_set": stat(per), "minirocket": stat(mr),
            "supervised": stat([r["supervised"] for r in runs]),
            "1nn_euclidean": row["1nn_euclidean"],
            "pooled_minus_minirocket": stat([a - b for a, b in zip(pooled, mr, strict=True)]),
            "pooled_minus_per_set": stat([a - b for a, b in zip(pooled, per, strict=True)]),
            "pooled_cv": stat([r["pooled"]["val_accuracy"] for r in runs]),
            "per_set_cv": stat([r["per_set"]["val_accuracy"] for r in runs]),
            "minirocket_fit_seconds": stat([r["minirocket"]["fit_seconds"] for r in runs]),
            "seeds": len(runs),
        }
    gaps = [t["pooled_minus_minirocket"]["mean"] for t in table.values()]
    targets = {
        "sets_where_pooled_beats_minirocket": sum(g > 0 for g in gaps),
        "sets": len(gaps),
        "mean_pooled_minus_minirocket": float(np.mean(gaps)) if gaps else None,
        "sets_where_pooling_hurt_over_1_point": [
            n for n, t in table.items() if t["pooled_minus_per_set"]["mean"] < -0.01],
    }
    return {"table": table, "targets": targets}


def markdown(result: dict[str, Any]) -> str:
    def pm(s: dict[str, float]) -> str:
        return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"

    def gap(s: dict[str, float]) -> str:
        return f"{100 * s['mean']:+.1f} ± {100 * s['std']:.1f}"

    t = result["summary"]["targets"]
    lines = [
        "# Series SSL per set and pooled, against MiniRocket",
        "",
        "Test accuracy (%), mean ± sample std over seeds "
        f"{', '.join(map(str, result['seeds']))}. SSL = ts-contrast + linear probe (C by 5-fold "
        "CV on the train split). **Per-set**: pre-trained on that set's train split "
        "(benchmarks/ucr.py's recipe). **Pooled**: one encoder pre-trained on all seven train "
        f"splits together ({result['pooled_steps']} steps × {POOLED_BATCH}; channels one by one). "
        "MiniRocket: aeon, 10,000 kernels + ridge (alpha "
        "by LOO-CV on train). 1-NN ED: raw series, zero-padded. Supervised: the same encoder from "
        "scratch on the train labels, per-set SSL's steps, batch and lr.",
        "",
        "| data set | train / test | pooled SSL | per-set SSL | MiniRocket | 1-NN ED | "
        "supervised | pooled − MiniRocket | pooled − per-set |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in result["summary"]["table"].items():
        sizes = result["sizes"][name]
        lines.append(
            f"| {name} | {sizes[0]} / {sizes[1]} | {pm(row['pooled'])} | {pm(row['per_set'])} | "
            f"{pm(row['minirocket'])} | {100 * row['1nn_euclidean']:.1f} | "
            f"{pm(row['supervised'])} | {gap(row['pooled_minus_minirocket'])} | "
            f"{gap(row['pooled_minus_per_set'])} |")
    mean_gap = t["mean_pooled_minus_minirocket"]
    lines += [
        "",
        "Targets (issue 29): pooled SSL beats MiniRocket on "
        f"{t['sets_where_pooled_beats_minirocket']} of {t['sets']} sets (target: at least 4), "
        f"mean gap {100 * mean_gap:+.2f} points "
        "(target: within 1 point); sets where pooling cost more than 1 point against per-set "
        f"SSL: {', '.join(t['sets_where_pooling_hurt_over_1_point']) or 'none'} (target: none).",
        "",
        "## Cross-validation accuracy on the train split (%)",
        "",
        "What the probe's C is chosen on (the test split plays no part).",
        "",
        "| data set | pooled SSL | per-set SSL |",
        "| --- | --- | --- |",
    ]
    for name, row in result["summary"]["table"].items():
        lines.append(f"| {name} | {pm(row['pooled_cv'])} | {pm(row['per_set_cv'])} |")
    lines += [
        "",
        f"Pooled pre-training: {result['pooled_seconds_mean'] / 60:.1f} min per seed; MiniRocket "
        "fits in " + ", ".join(f"{n} {r['minirocket_fit_seconds']['mean']:.1f} s"
                               for n, r in result["summary"]["table"].items())
        + " (the first fit in a process includes numba's compilation).",
        "",
        f"Machine: {result['machine']}; load average {result['load']}. This process took "
        f"{result['seconds'] / 60:.0f} min; results already under --work (runs trained by "
        "earlier `--only` processes, side by side) are read, not remade, so the pre-training "
        "times above are what those runs measured.",
        "",
        f"Reproduce: `{result['reproduce']}`",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", default="/tmp/selfsup-ucr-pooled",
                        help="runs and per-result files (resumable)")
    parser.add_argument("--quick", action="store_true", help="smoke run: two sets, few steps")
    parser.add_argument("--sets", default=None,
                        help="comma-separated data sets (with --only per-set: a share of them)")
    parser.add_argument("--instance-norm-check", action="store_true",
                        help="only the recipe check: instance_norm on/off on JapaneseVowels")
    parser.add_argument("--only", choices=("pooled-runs", "per-set"), default=None,
                        help="one part of the work, to run two processes side by side")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    setting, steps, names = Setting(), POOLED_STEPS, list(DATASETS)
    work = Path(args.work)
    if args.sets:
        names = [n.strip() for n in args.sets.split(",")]
        unknown = sorted(set(names) - set(DATASETS))
        if unknown:
            raise SystemExit(f"unknown data set(s) {', '.join(unknown)}; known: "
                             f"{', '.join(DATASETS)}")
    if args.quick:
        setting = Setting(steps=5, big_steps=5)
        steps, names, work = 5, ["GunPoint", "BasicMotions"], work / "quick"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.instance_norm_check:
        check = instance_norm_check(setting)
        atomic.write_json(RESULTS / "ucr_pooled_instance_norm.json", check)
        for key, row in check.items():
            print(f"JapaneseVowels, random channel-independent encoder, {key}: train-split CV "
                  f"{row['val_accuracy']:.3f}, test {row['accuracy']:.3f}")
        return
    load = os.getloadavg()
    started = time.monotonic()
    out = measure(seeds, setting, work, steps, names, args.only)
    if out is None:
        print(f"part {args.only} done; results kept under {work}")
        return
    result = {
        "seeds": seeds,
        "quick": args.quick,
        "pooled_steps": steps,
        "pooled_batch": POOLED_BATCH,
        "setting": {"steps": setting.steps, "batch_size": setting.batch_size,
                    "big_steps": setting.big_steps, "big_batch_size": setting.big_batch_size,
                    "lr": setting.lr, "encoder": setting.encoder,
                    "encoder_options": setting.encoder_options},
        "sizes": {n: [len(s) for s in split(n)] for n in names},
        "pooled_seconds_mean": float(np.mean([r["pretrain_seconds"]
                                              for r in out["pooled_runs"].values()])),
        "raw": out,
        "summary": summarise(out),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} thread(s)",
        "load": f"{load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        "seconds": time.monotonic() - started,
        "reproduce": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ucr_pooled.py",
    }
    if args.quick:
        print(markdown(result))
        return
    if len(seeds) < 3:
        print(f"partial run (seeds {seeds}): results kept under {work}; run with every seed "
              "to write the results files")
        return
    atomic.write_json(RESULTS / "ucr_pooled.json", result)
    (RESULTS / "ucr_pooled.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
