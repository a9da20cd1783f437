"""Chaos: kill a CIFAR-10 pre-training with SIGKILL at random moments, resume it each time.

Reports how many kills the run survived, the steps lost per kill (work done since the last
complete checkpoint: at most one checkpoint interval), whether every kill left a loadable
checkpoint (kills that land during a checkpoint write included), and whether the final encoder
matches an uninterrupted run with the same seed: its weights, and its kNN accuracy on the
CIFAR-10 test set.

    python benchmarks/chaos.py                       # 20 kills, 240 steps (about 15 min)
    python benchmarks/chaos.py --kills 3 --steps 40  # a quick look

Each training attempt runs in its own process (``--worker``), as a user's would; a heartbeat
callback writes the step reached after every optimiser step, so the script knows how far an
attempt got before it was killed.

    python benchmarks/chaos.py --disk-full           # a real full disk (root: a small tmpfs)

fills a tmpfs to the last byte at two moments, after a checkpoint (so the next checkpoint
write fails) and just before the final encoder write, and checks each time that the run ends
with one clear message (exit 2), leaves no half-written file, and, once space is freed,
resumes to the same weights as a run that never hit a full disk
(``benchmarks/results/chaos_disk_full.{json,md}``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
RESULTS = ROOT / "benchmarks" / "results"

RECIPE = {
    "batch_size": 128,
    "encoder": "resnet_small",
    "encoder_options": {"width": 16},
    "checkpoint_steps": 10,
    "monitor_size": 0,
    "log_every_steps": 5,
    "progress": False,
    "seed": 0,
}


def worker(out: str, steps: int, heartbeat: str, resume: bool) -> None:
    """One training attempt (the process the chaos loop kills)."""
    import lightning.pytorch as pl

    import selfsup

    class Heartbeat(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            # A plain write: the page cache keeps it across SIGKILL of this process.
            Path(heartbeat).write_text(str(trainer.global_step))

    if resume:
        selfsup.pretrain("simclr", out=out, steps=steps, resume=True, progress=False,
                         callbacks=[Heartbeat()])
    else:
        selfsup.pretrain("simclr", str(DATA / "train"), out=out, steps=steps,
                         callbacks=[Heartbeat()], **RECIPE)


DISK_RECIPE = {**RECIPE, "batch_size": 64, "encoder_options": {"width": 8},
               "checkpoint_steps": 4}
DISK_STEPS = 12


def write_results(stem: str, result: dict, lines: list[str]) -> None:
    """``benchmarks/results/STEM.json`` (the figures) and ``STEM.md`` (the table, printed)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def fill(folder: Path) -> Path:
    """Take every free byte of ``folder``'s file system with one file; return it."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        chunk = b"\0" * 2**20
        while True:
            try:
                handle.write(chunk)
                handle.flush()
            except OSError:
                break
        for size in (2**16, 2**12, 2**9, 1):  # the last scraps
            try:
                while True:
                    handle.write(b"\0" * size)
                    handle.flush()
            except OSError:
                continue
    return filler


def disk_worker(out: str, fill_when: str) -> None:
    """A digits run that fills its disk after step 4's checkpoint ("checkpoint": the step-8
    checkpoint write fails) or just before the final encoder write ("encoder")."""
    import lightning.pytorch as pl

    import selfsup
    import selfsup.api
    import selfsup.engine
    from selfsup.cli import main as cli_main

    folder = Path(out).parent

    class FillAfterCheckpoint(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 5 and not (folder / "filler").exists():
                fill(folder)

    if fill_when == "checkpoint":
        real_fit = selfsup.api.fit
        selfsup.api.fit = lambda *a, callbacks=None, **k: real_fit(
            *a, callbacks=[*(callbacks or []), FillAfterCheckpoint()], **k)
    else:
        real_save = selfsup.engine.save_encoder

        def full_then_save(*args, **kwargs):
            fill(folder)
            return real_save(*args, **kwargs)

        selfsup.engine.save_encoder = full_then_save  # fit looks it up in its own module
    encoder = DISK_RECIPE["encoder_options"]["width"]
    sys.argv = ["selfsup", "pretrain", "simclr", "--data", "digits", "--out", out,
                "--steps", str(DISK_STEPS), "--batch-size", str(DISK_RECIPE["batch_size"]),
                "--encoder-option", f"width={encoder}", "--checkpoint-steps",
                str(DISK_RECIPE["checkpoint_steps"]), "--no-progress", "--seed", "0"]
    cli_main()


def disk_full(work: Path) -> None:
    """The --disk-full scenarios on a real tmpfs (see the module docstring)."""
    import shutil

    import selfsup
    from selfsup.run import RunDir, load_encoder

    work.mkdir(parents=True, exist_ok=True)
    reference = work / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    selfsup.pretrain("simclr", "digits", out=str(reference), steps=DISK_STEPS, seed=0,
                     batch_size=DISK_RECIPE["batch_size"], checkpoint_steps=4,
                     encoder_options=DISK_RECIPE["encoder_options"], progress=False)
    rows = []
    for when in ("checkpoint", "encoder"):
        mount = work / f"tmpfs-{when}"
        mount.mkdir(exist_ok=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            raise SystemExit(f"--disk-full needs root to mount a tmpfs: {mounted.stderr.strip()}")
        try:
            out = mount / "run"
            started = time.monotonic()
            failed = subprocess.run([sys.executable, __file__, "--disk-worker", when, "--out",
                                     str(out)], cwd=ROOT, capture_output=True, text=True)
            message = failed.stderr.strip().splitlines()[-1] if failed.stderr.strip() else ""
            leftovers = sorted(str(p.relative_to(out)) for p in out.rglob(".*.tmp"))
            step_kept = checkpoint_step(out)
            (mount / "filler").unlink()
            resumed = subprocess.run([str(Path(sys.executable).parent / "selfsup"), "pretrain",
                                      "simclr",
                                      "--out", str(out), "--resume", "--no-progress"],
                                     cwd=ROOT, capture_output=True, text=True)
            encoder, _ = load_encoder(RunDir(out))  # the whole run loads
            summary = json.loads((out / "pretrain.json").read_text())
            rows.append({
                "disk_full_during": "a checkpoint write" if when == "checkpoint"
                else "the final encoder write",
                "exit_code": failed.returncode,
                "message": message,
                "traceback": "Traceback" in failed.stderr,
                "temporaries_left": leftovers,
                "checkpoint_step_kept": step_kept,
                "resume_exit_code": resumed.returncode,
                "final_steps": summary["steps"],
                "final_loss": summary["final_loss"],
                "max_abs_weight_difference": weight_difference(reference, out),
                "seconds": round(time.monotonic() - started, 1),
            })
            del encoder
        finally:
            subprocess.run(["umount", str(mount)], capture_output=True)
    result = {"scenarios": rows, "steps": DISK_STEPS,
              "checkpoint_every_steps": DISK_RECIPE["checkpoint_steps"],
              "command": "python benchmarks/chaos.py --disk-full"}
    lines = [
        "# Chaos: the disk fills up mid-run, then space is freed and the run resumed",
        "",
        f"`{result['command']}` — SimCLR on digits, resnet_small (width 8), batch 64, "
        f"{DISK_STEPS} steps, a checkpoint every {DISK_RECIPE['checkpoint_steps']} steps, on a "
        "32 MiB tmpfs filled to its last byte by another file at the moment named.",
        "",
        "| disk full during | exit | traceback | temporaries left | checkpoint kept | "
        "resume exit | final steps | max abs weight diff vs never full |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *(f"| {r['disk_full_during']} | {r['exit_code']} | {'yes' if r['traceback'] else 'no'} "
          f"| {len(r['temporaries_left'])} | step {r['checkpoint_step_kept']} | "
          f"{r['resume_exit_code']} | {r['final_steps']} | {r['max_abs_weight_difference']:.3g} |"
          for r in rows),
        "",
        "What the user read:",
        "",
        *(f"- {r['disk_full_during']}: `{r['message']}`" for r in rows),
        "",
    ]
    write_results("chaos_disk_full", result, lines)


def attempt(out: Path, steps: int, resume: bool, kill_after: float | None) -> dict:
    """Start an attempt; SIGKILL it after ``kill_after`` seconds (None: let it finish)."""
    heartbeat = out.parent / f"{out.name}.heartbeat"
    heartbeat.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--worker", "--out", str(out), "--steps", str(steps),
               "--heartbeat", str(heartbeat)] + (["--resume"] if resume else [])
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        process.wait(timeout=kill_after)
        killed = False
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        killed = True
    stderr = process.stderr.read() if process.stderr else ""
    if not killed and process.returncode != 0:
        raise SystemExit(f"attempt failed (exit {process.returncode}):\n{stderr[-3000:]}")
    reached = int(heartbeat.read_text()) if heartbeat.is_file() else None
    return {"killed": killed, "seconds": time.monotonic() - started, "step_reached": reached}


def checkpoint_step(out: Path) -> int | None:
    """The global step of the run's last complete checkpoint (loading it proves it is whole)."""
    import torch

    path = out / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def knn_accuracy(run: Path) -> float:
    """kNN (k=20, cosine) accuracy of the CIFAR-10 test set on 10,000 train images."""
    import numpy as np

    from selfsup.data import load_images
    from selfsup.evaluate.features import extract_features
    from selfsup.evaluate.probes import knn_classify
    from selfsup.run import RunDir, load_encoder

    encoder, _ = load_encoder(RunDir(run))
    train = load_images(DATA / "train", progress=False)
    test = load_images(DATA / "test", progress=False)
    bank = np.sort(np.random.default_rng(0).choice(len(train), 10_000, replace=False))
    bank_x = extract_features(encoder, train, bank)
    test_x = extract_features(encoder, test)
    predicted = knn_classify(bank_x, train.labels[bank], test_x, k=20)
    return float((predicted == test.labels).mean())


def weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    left = load_file(str(a / "encoder.safetensors"))
    right = load_file(str(b / "encoder.safetensors"))
    assert left.keys() == right.keys()
    return max(float((left[k].float() - right[k].float()).abs().max()) for k in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--work", type=Path, default=Path("/tmp/selfsup-chaos"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--heartbeat", help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--disk-full", action="store_true",
                        help="fill a tmpfs mid-run instead of killing (needs root)")
    parser.add_argument("--disk-worker", choices=["checkpoint", "encoder"],
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.out, args.steps, args.heartbeat, args.resume)
        return
    if args.disk_worker:
        disk_worker(args.out, args.disk_worker)
        return
    if args.disk_full:
        disk_full(args.work / "disk-full")
        return
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: this benchmark needs ../shared/data/cifar10")

    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    reference, chaos = args.work / "reference", args.work / "chaos"

    from selfsup.data import load_images

    print("reading CIFAR-10 (decoded once into the image cache) ...", flush=True)
    load_images(DATA / "train", progress=False)
    print(f"uninterrupted reference run, {args.steps} steps ...", flush=True)
    ref = attempt(reference, args.steps, resume=False, kill_after=None)
    per_step = ref["seconds"] / args.steps  # an over-estimate: it includes start-up
    print(f"  {ref['seconds']:.0f} s", flush=True)

    rng = random.Random(args.seed)
    kills: list[dict] = []
    resume = False
    attempts = 0
    while True:
        attempts += 1
        before = checkpoint_step(chaos) or 0
        # Kill moments: uniformly random between 20% and 150% of the work left for a 20th of the
        # run, plus start-up, so that kills land in start-up, in steps and in checkpoint writes.
        kill_after = None
        if len(kills) < args.kills:
            kill_after = rng.uniform(3.0, 8.0 + 1.5 * per_step * args.steps / args.kills)
        result = attempt(chaos, args.steps, resume, kill_after)
        after = checkpoint_step(chaos)  # raises if the kill left a corrupt checkpoint
        leftovers = sorted(p.name for p in (chaos / "checkpoints").glob("*")
                           if p.name != "last.ckpt") if (chaos / "checkpoints").is_dir() else []
        if result["killed"]:
            reached = result["step_reached"]
            lost = (reached - (after or 0)) if reached is not None else 0
            kills.append({
                "kill": len(kills) + 1,
                "after_seconds": round(kill_after or 0, 2),
                "checkpoint_step_before": before,
                "step_reached": reached,
                "checkpoint_step_after": after,
                "steps_lost": max(0, lost),
                "temp_files_left": leftovers,
            })
            print(f"  kill {len(kills):2d} at {kill_after:5.1f} s: reached step {reached}, "
                  f"checkpoint at {after}, lost {max(0, lost)}", flush=True)
            resume = after is not None or (chaos / "config.yaml").is_file()
            if after is None:  # killed before the first checkpoint: start afresh
                shutil.rmtree(chaos, ignore_errors=True)
                resume = False
        else:
            break

    summary = json.loads((chaos / "pretrain.json").read_text())
    difference = weight_difference(reference, chaos)
    print("kNN accuracy of both encoders ...", flush=True)
    knn_ref, knn_chaos = knn_accuracy(reference), knn_accuracy(chaos)
    interval = RECIPE["checkpoint_steps"]
    lost = [k["steps_lost"] for k in kills]
    result = {
        "kills": len(kills),
        "kills_survived": len(kills) if summary["steps"] == args.steps else None,
        "attempts": attempts,
        "steps": args.steps,
        "checkpoint_every_steps": interval,
        "steps_lost_max": max(lost, default=0),
        "steps_lost_mean": sum(lost) / len(lost) if lost else 0.0,
        "all_losses_within_one_interval": all(x <= interval for x in lost),
        "final_steps": summary["steps"],
        "max_abs_weight_difference": difference,
        "knn_reference": knn_ref,
        "knn_chaos": knn_chaos,
        "precision": yaml.safe_load((chaos / "config.yaml").read_text())["precision"],
        "per_kill": kills,
        "command": " ".join(["python benchmarks/chaos.py",
                             *(a for a in sys.argv[1:] if not a.startswith("--work"))]),
    }
    lines = [
        "# Chaos: SIGKILL at random moments, resume each time",
        "",
        f"`{result['command']}` — SimCLR, resnet_small (width 16), batch 128, "
        f"{args.steps} steps, a checkpoint every {interval} steps, CIFAR-10 train, precision "
        f"{result['precision']}.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| kills survived | {result['kills_survived']} of {len(kills)} |",
        f"| steps lost per kill, max / mean | {result['steps_lost_max']} / "
        f"{result['steps_lost_mean']:.1f} (interval {interval}) |",
        f"| final steps | {summary['steps']} of {args.steps} |",
        f"| max abs weight difference vs uninterrupted | {difference:.3g} |",
        f"| kNN accuracy, uninterrupted / chaos | {knn_ref:.4f} / {knn_chaos:.4f} |",
        "",
    ]
    write_results("chaos", result, lines)


if __name__ == "__main__":
    main()
