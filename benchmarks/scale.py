"""Flat memory as data grows: pre-training from `selfsup prepare` shards on 1x and 10x CIFAR-10.

1. Prepare. The CIFAR-10 train folder (50,000 PNGs, decoded once into the reader's cache) is
   written as WebDataset shards twice: as it is, and repeated 10 times (500,000 images,
   `--repeat 10`). Recorded: seconds and bytes on disk.
2. Pre-train. SimCLR (resnet_small, precision 32, batch 256, no kNN monitor) for a fixed number
   of steps, each in a fresh subprocess, from: the image folder through its decode cache (the
   uint8 memmap path), the 1x shards, and the 10x shards. Recorded: images/s (the engine's
   Throughput monitor) and the child's peak RSS (ru_maxrss), in ``--rounds`` rounds (default 2)
   with the order rotated, so that a slow spell of the machine is not pinned on one source; the
   spread between rounds of one source is the noise to read the comparison against. The claim
   holds when the 10x shards' peak RSS is within 10% of the 1x shards' and shard throughput
   is at least the cache path's.
3. Reading alone. One process per source iterates the engine's loader (ResumableLoader, batch
   256, the epoch's shuffle) for the same batches without a model: batches/s and peak RSS,
   the data path's own cost.

Writes benchmarks/results/scale.{json,md} (scale_quick.* with --quick).

    .venv/bin/python benchmarks/scale.py            # ~500k images written (~2.4 GB), ~40 min
    .venv/bin/python benchmarks/scale.py --work W --reuse   # again, on the shards left in W
    .venv/bin/python benchmarks/scale.py --quick    # 1,000 CIFAR images, 10x, no read-only
                                                    # pass: about a minute on 2 idle cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CIFAR = REPO.parent / "shared" / "data" / "cifar10" / "train"
RESULTS = REPO / "benchmarks" / "results"


# ------------------------------------------------------------------------ child processes ----


def child_pretrain(data: str, out: str, steps: int, batch_size: int, width: int) -> None:
    import selfsup

    started = time.perf_counter()
    run = selfsup.pretrain(
        "simclr", data, out=out, steps=steps, batch_size=batch_size, encoder="resnet_small",
        encoder_options={"width": width}, precision="32", progress=False, monitor_size=0,
        log_every_steps=max(1, steps // 4), checkpoint_steps=10**9,
    )
    summary = json.loads(run.summary.read_text())
    print(json.dumps({
        "images_per_s": summary["images_per_s"], "steps": summary["steps"],
        "num_samples": summary["num_samples"], "wall_s": time.perf_counter() - started,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


def child_read(data: str, batches: int, batch_size: int) -> None:
    from selfsup.config import build_config
    from selfsup.data.base import load_data
    from selfsup.data.datasets import ResumableLoader, keep_batch

    dataset = load_data("image", data, build_config({"progress": False}))
    loader = ResumableLoader(dataset.batch_dataset(with_labels=False), batch_size=batch_size,
                             seed=0, drop_last=True, collate_fn=keep_batch)
    ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started, done = time.perf_counter(), 0
    while done < batches:  # across epochs when the data is smaller than the request
        for _ in loader:
            done += 1
            if done >= batches:
                break
    seconds = time.perf_counter() - started
    print(json.dumps({
        "batches_per_s": done / seconds, "images_per_s": done * batch_size / seconds,
        "num_samples": len(dataset), "ready_rss_bytes": ready,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


def child_prepare(data: str, out: str, repeat: int) -> None:
    from selfsup.data.prepare import prepare

    started = time.perf_counter()
    manifest = prepare(data, out, repeat=repeat, progress=False)
    size = sum(f.stat().st_size for f in Path(out).iterdir())
    print(json.dumps({"seconds": time.perf_counter() - started, "count": manifest["count"],
                      "shards": len(manifest["shards"]), "bytes": size}))


def _child(*args: str, timeout: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ the parent ----


def _subset(src: Path, per_class: int, dst: Path) -> Path:
    """Symlinks to the first ``per_class`` images of each class (nothing is copied)."""
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir())[:per_class]:
            (dst / cls.name / f.name).symlink_to(f)
    return dst


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One source's pre-training rounds: mean images/s, highest peak RSS, and every round."""
    speeds = [r["images_per_s"] for r in runs]
    return {**runs[0], "images_per_s": statistics.mean(speeds),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
            "rounds_images_per_s": speeds,
            "rounds_peak_rss_bytes": [r["peak_rss_bytes"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", default=str(CIFAR))
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--work", default=None, help="Where the shards go (default: a temp dir).")
    parser.add_argument("--rounds", type=int, default=None,
                        help="pre-train each source this many times, the order rotated each "
                             "round (default 2; quick 1)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the shards an earlier run left in --work (and its prepare "
                             "figures) instead of preparing them again")
    args = parser.parse_args()
    if args.reuse and not args.work:
        parser.error("--reuse needs --work")
    quick = args.quick
    steps = args.steps or (3 if quick else 100)
    batch = args.batch_size or (64 if quick else 256)
    width = 8 if quick else 32
    read_batches = 20 if quick else 400
    rounds = args.rounds or (1 if quick else 2)
    work = Path(args.work or tempfile.mkdtemp(prefix="selfsup-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if quick:
        data = str(_subset(Path(data), 100, work / "subset"))
    started = time.perf_counter()
    limit = 600 if quick else 7200
    try:
        record = work / "prepared.json"
        if args.reuse and record.is_file():
            prepared = json.loads(record.read_text())
        else:
            prepared = {
                "1x": _child("prepare", data, str(work / "shards1"), "1", timeout=limit),
                f"{args.repeat}x": _child("prepare", data, str(work / "shardsK"),
                                          str(args.repeat), timeout=limit),
            }
            record.write_text(json.dumps(prepared))
        sources = {"folder cache": data, "shards 1x": str(work / "shards1"),
                   f"shards {args.repeat}x": str(work / "shardsK")}
        read = ({} if quick else  # quick: one child less per source, to stay under a minute
                {name: _child("read", path, str(read_batches), str(batch), timeout=limit)
                 for name, path in sources.items()})
        # Rounds with the order rotated: a slow spell of the machine (other load, thermal)
        # then hits every source at some position instead of only the one running through it.
        names = list(sources)
        rounds_of: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                i = names.index(name)
                rounds_of[name].append(_child("pretrain", sources[name],
                                              str(work / f"run-{i}-{r}"), str(steps),
                                              str(batch), str(width), timeout=limit))
        train = {name: _combine(runs) for name, runs in rounds_of.items()}
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    big = f"shards {args.repeat}x"
    rss_ratio = train[big]["peak_rss_bytes"] / train["shards 1x"]["peak_rss_bytes"]
    # images/s per source is the mean over the rounds; the spread of the folder cache's own
    # rounds says how far apart two runs of the same thing land on this machine
    speed_ratio = train["shards 1x"]["images_per_s"] / train["folder cache"]["images_per_s"]
    result = {
        "quick": quick, "data": args.data, "repeat": args.repeat, "steps": steps,
        "batch_size": batch, "encoder": f"resnet_small width {width}", "precision": "32",
        "rounds": rounds, "threads": os.environ.get("OMP_NUM_THREADS", "all cores"),
        "prepare": prepared, "read": read, "pretrain": train,
        "peak_rss_ratio_big_vs_1x": rss_ratio, "rss_within_10_percent": abs(rss_ratio - 1) <= 0.1,
        "throughput_shards_vs_folder_cache": speed_ratio,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "wall_s": time.perf_counter() - started,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "scale_quick" if quick else "scale"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(_markdown(result))
    print(_markdown(result))


def _markdown(r: dict[str, Any]) -> str:
    mb = 2**20
    lines = [
        f"# Pre-training from shards: 1x and {r['repeat']}x{' (quick)' if r['quick'] else ''}",
        "",
        f"SimCLR, {r['encoder']}, precision {r['precision']}, batch {r['batch_size']}, "
        f"{r['steps']} steps, each source in a fresh process, {r.get('rounds', 1)} round(s) "
        f"with the order rotated (images/s: mean of the rounds; peak RSS: the highest), "
        f"{r.get('threads', '?')} thread(s); data {r['data']}.",
        "",
        "| source | samples | pretrain images/s | pretrain peak RSS (MiB) "
        "| read-only images/s | read-only peak RSS (MiB) | images/s of each round |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, t in r["pretrain"].items():
        rd = r["read"].get(name, {"images_per_s": float("nan"), "peak_rss_bytes": float("nan")})
        lines.append(f"| {name} | {t['num_samples']} | {t['images_per_s']:.0f} | "
                     f"{t['peak_rss_bytes'] / mb:.0f} | {rd['images_per_s']:.0f} | "
                     f"{rd['peak_rss_bytes'] / mb:.0f} | "
                     f"{', '.join(f'{v:.1f}' for v in t.get('rounds_images_per_s', []))} |")
    lines += ["", "| prepare | samples | shards | seconds | MiB on disk |",
              "|---|---:|---:|---:|---:|"]
    for name, p in r["prepare"].items():
        lines.append(f"| {name} | {p['count']} | {p['shards']} | {p['seconds']:.1f} | "
                     f"{p['bytes'] / mb:.0f} |")
    lines += [
        "",
        f"- peak RSS {r['repeat']}x / 1x: {r['peak_rss_ratio_big_vs_1x']:.3f} "
        f"(within 10%: {r['rss_within_10_percent']})",
        f"- pre-training throughput shards 1x / folder cache: "
        f"{r['throughput_shards_vs_folder_cache']:.3f}",
        f"- {r['machine']['cpus']} CPUs, {r['machine']['platform']}; {r['wall_s']:.0f} s in all",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "pretrain":
            child_pretrain(rest[0], rest[1], int(rest[2]), int(rest[3]), int(rest[4]))
        elif kind == "read":
            child_read(rest[0], int(rest[1]), int(rest[2]))
        else:
            child_prepare(rest[0], rest[1], int(rest[2]))
    else:
        main()
