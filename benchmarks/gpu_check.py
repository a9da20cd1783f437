"""The GPU path, proven on a lent GPU (issue 25, item 5).

Runs, on CUDA in bf16 through selfsup's one engine (``selfsup.api.pretrain`` with
``accelerator="gpu"``):

1. every registered method a few steps on small data made here (digit images, a class-per-
   folder image tree with captions for CLIP, a synthetic text corpus, synthetic series), and
   that its loss is finite;
2. one DDP run on one GPU (``strategy="ddp"``, ``devices=1``);
3. throughput: SimCLR with a CIFAR-stem ResNet-18 at batch 256 on 32x32 images (images/s,
   each image counted once with its two views) and the Tiny Shakespeare GPT recipe
   (benchmarks/shakespeare_char.py's RECIPE) on a synthetic character corpus (tokens/s). The
   data are synthetic because the device machine holds only the repository; throughput does
   not depend on the pixels or characters.

Writes benchmarks/results/gpu_check.{json,md}. Without a CUDA device it says so and exits 2
(nothing written), unless ``--device cpu`` asks for the same checks on the CPU, a smoke run of
this script (results written under --out, default /tmp).

    .venv/bin/python benchmarks/gpu_check.py                      # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick # smoke run here
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from selfsup import atomic  # noqa: E402
from selfsup.api import pretrain  # noqa: E402
from selfsup.methods import METHODS  # noqa: E402

sys.path[:0] = [str(REPO / "benchmarks")]
from shakespeare_char import RECIPE  # noqa: E402  (the Tiny Shakespeare recipe's model)

RESULTS = REPO / "benchmarks" / "results"
WORDS = ("the", "model", "learns", "from", "raw", "data", "without", "labels", "and", "then",
         "transfers", "to", "a", "task", "with", "few", "examples", "of", "each", "class")


def make_data(root: Path) -> dict[str, str]:
    """Small inputs of every modality, written under ``root``."""
    rng = np.random.default_rng(0)
    folder = root / "images"
    rows = ["image,caption"]
    for label in range(4):
        (folder / f"class{label}").mkdir(parents=True)
        for i in range(24):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            pixels[:, :, label % 3] = 40 * (label + 1)
            path = folder / f"class{label}" / f"{i}.png"
            Image.fromarray(pixels).save(path)
            rows.append(f"{path},a picture of class {label}")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    sentences = [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 14)))) + "."
                 for _ in range(3000)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                               for t in sentences))  # one document a line
    x = rng.normal(size=(64, 2, 64)).astype(np.float32)
    y = np.arange(64) % 2
    x[y == 1] += np.sin(np.arange(64) / 3.0)[None, None, :]
    np.savez(root / "series.npz", X=x, y=y)
    images = rng.integers(0, 255, (2048, 32, 32, 3), dtype=np.uint8)
    np.savez(root / "cifar_like.npz", images=images, labels=np.arange(2048) % 10)
    chars = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz ,.\n"), size=1_200_000))
    (root / "chars.txt").write_text(chars)
    return {"image": str(folder), "pairs": str(root / "pairs.csv"), "text": str(root /
            "corpus.jsonl"), "series": str(root / "series.npz"), "cifar": str(root /
            "cifar_like.npz"), "chars": str(root / "chars.txt")}


def data_for(method: str, data: dict[str, str]) -> str:
    modality = METHODS.get(method).modality
    if method == "clip":
        return data["pairs"]
    return {"image": data["image"], "text": data["text"], "series": data["series"]}[modality]


def engine(device: str) -> dict[str, Any]:
    return {"accelerator": "gpu" if device == "cuda" else "cpu",
            "precision": "bf16", "progress": False, "monitor_size": 0,
            "checkpoint_minutes": 60.0}


def run_one(name: str, out: Path, **values: Any) -> dict[str, Any]:
    started = time.monotonic()
    try:
        run = pretrain(name, out=str(out), **values)
        summary = json.loads((run.path / "pretrain.json").read_text())
        loss = summary.get("final_loss")
        ok = loss is None or math.isfinite(float(loss))
        return {"ok": ok, "steps": summary.get("steps"), "loss": loss,
                "images_per_s": summary.get("images_per_s"),
                "train_seconds": summary.get("train_seconds"),
                "seconds": time.monotonic() - started}
    except Exception as error:  # a check reports every failure, it does not stop at the first
        return {"ok": False, "error": f"{type(error).__name__}: {error}",
                "trace": traceback.format_exc(limit=4), "seconds": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--out", default=None, help="results folder (default: benchmarks/"
                        "results on CUDA, /tmp/selfsup-gpu-check on the CPU)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: nothing run (use --device cpu for a smoke run)")
    out = Path(args.out or (RESULTS if args.device == "cuda" else "/tmp/selfsup-gpu-check"))
    steps, speed_steps = (2, 3) if args.quick else (5, 40)
    result: dict[str, Any] = {"device": args.device, "quick": args.quick, "methods": {}}
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="selfsup-gpu-") as tmp:
        root = Path(tmp)
        data = make_data(root)
        for name in METHODS.names():
            batch = 16 if METHODS.get(name).modality != "text" else 8
            result["methods"][name] = run_one(
                name, root / f"run-{name}", data=data_for(name, data), steps=steps,
                batch_size=batch, **engine(args.device))
            print(name, result["methods"][name].get("ok"), result["methods"][name].get(
                "error", ""), flush=True)
        result["ddp_one_gpu"] = run_one("simclr", root / "ddp", data=data["image"], steps=steps,
                                        batch_size=16, strategy="ddp", devices=1,
                                        **engine(args.device))
        print("ddp", result["ddp_one_gpu"].get("ok"), flush=True)
        result["simclr_resnet18"] = run_one(
            "simclr", root / "speed-simclr", data=data["cifar"], steps=speed_steps,
            batch_size=256, encoder="resnet18", **engine(args.device))
        gpt = run_one("gpt", root / "speed-gpt", data=data["chars"], steps=speed_steps,
                      batch_size=RECIPE["batch_size"], lr=RECIPE["lr"], encoder="gpt_small",
                      data_options={"block_size": RECIPE["block_size"]},
                      encoder_options=RECIPE["model"],
                      **engine(args.device))
        if gpt["ok"]:
            gpt["tokens_per_s"] = (gpt["steps"] * RECIPE["batch_size"] * RECIPE["block_size"]
                                   / gpt["train_seconds"])
        result["gpt_char"] = gpt
    result["machine"] = f"{platform.machine()}, torch {torch.__version__}"
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "gpu_check.json", result)
    (out / "gpu_check.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    failed = [n for n, r in result["methods"].items() if not r["ok"]]
    lines = [f"# GPU check ({result.get('gpu', result['device'])})", "",
             f"Every registered method a few steps in bf16 on {result['device']}: "
             f"{len(result['methods']) - len(failed)} of {len(result['methods'])} ran with a "
             f"finite loss{'; failed: ' + ', '.join(failed) if failed else ''}.", "",
             "| method | ok | steps | loss | s | error |", "|---|---|---|---|---|---|"]
    for name, r in result["methods"].items():
        lines.append(f"| {name} | {'yes' if r['ok'] else '**no**'} | {r.get('steps', '—')} | "
                     f"{r.get('loss', '—')} | {r['seconds']:.1f} | {r.get('error', '')[:120]} |")
    ddp, sim, gpt = result["ddp_one_gpu"], result["simclr_resnet18"], result["gpt_char"]
    lines += ["", f"1-GPU DDP (strategy ddp, devices 1): {'ran' if ddp['ok'] else 'FAILED'} "
              f"{ddp.get('error', '')}", "",
              f"SimCLR ResNet-18, batch 256, 32x32: {sim.get('images_per_s')} images/s "
              f"({sim.get('steps')} steps) {sim.get('error', '')}", "",
              f"GPT (the Tiny Shakespeare recipe: {RECIPE}): "
              f"{gpt.get('tokens_per_s')} tokens/s ({gpt.get('steps')} steps) "
              f"{gpt.get('error', '')}", "", f"Machine: {result['machine']}.",
              "", "Reproduce: `.venv/bin/python benchmarks/gpu_check.py` on a CUDA machine."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
