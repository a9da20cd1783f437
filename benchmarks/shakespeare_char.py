"""Tiny Shakespeare, character level: selfsup's GPT against nanoGPT's CPU recipe.

Reference (../shared/data/README.md, this machine kind): nanoGPT's own CPU recipe (4 layers,
4 heads, 128 wide, block 64, batch 12, 2000 iterations) reaches validation loss 1.886 (its
estimate from 20 batches) after 135 s wall. Targets: validation loss over the *whole* validation
split at or below 1.886 within 30 s wall (issue 25; 45 s before it), start-up included; and
the lowest loss in 135 s (<= 1.50 is issue 25's target). ``--compile`` gives each target run its
``--compile`` choice (default ``off,on``: a cold compilation, about 20 s, would eat most of 30 s,
while the 135 s run wins it back); compiled runs start with an empty inductor cache, so they pay
the compilation inside their wall time.

Both runs are the real CLI (`selfsup pretrain gpt ...`, trained by the one engine) in a fresh
process with an empty cache, so Python and library imports, tokenization, the final whole-split
evaluation and the writes all count. The script first times a 3-step run of the same command to
learn that fixed overhead, then gives training what is left of the wall-clock target (minus a
safety margin); the measured wall time is reported as it was, over the target or not.

Split: nanoGPT's (first 90% of the characters train, last 10% validate). The recipe below was
chosen on a tuning split carved from the training 90% (`--tuning`: train on its first 90%,
validate on its last 10%; the reported validation split is never read), never on the reported
one. Precision: bf16 autocast where the CPU multiplies bf16 natively (AVX-512 BF16 / AMX), else
fp32 (emulated bf16 is ~50x slower than fp32 on an AVX2-only CPU).

Writes benchmarks/results/shakespeare_char.{json,md}.

    .venv/bin/python benchmarks/shakespeare_char.py             # ~5 min: calibrations, 30 s, 135 s
    .venv/bin/python benchmarks/shakespeare_char.py --compile off,off  # both eager
    .venv/bin/python benchmarks/shakespeare_char.py --tuning    # the same on the tuning split
    .venv/bin/python benchmarks/shakespeare_char.py --tuning --lr 5e-3 --batch-size 16  # a choice
    .venv/bin/python benchmarks/shakespeare_char.py --quick     # ~1 min smoke run (tiny model)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from compiled_steps import matmul_peak  # noqa: E402

from selfsup.evaluate.language import cpu_has_native_bf16  # noqa: E402
from selfsup.methods.gpt import GPTMethod  # noqa: E402
from selfsup.models.gpt import GPT, GPTConfig  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
NANOGPT = {"val_loss": 1.886, "seconds": 135.0}
#: Validation loss to reach by the first and the second target (issue 25): nanoGPT's, then 1.50.
GOALS = (NANOGPT["val_loss"], 1.50)
BF16_PEAK = 360.0  # GFLOP/s, bf16 matmul on this machine kind (../shared/data/README.md)
FP32_PEAK = 130.0
VOCAB = 66  # 65 characters + the document separator

#: The recipes, one per budget, chosen on the tuning split (never the reported one): nanoGPT's
#: width, a longer context, and the gpt method's optimiser: Muon on the linear layers' weights
#: with AdamW on the rest, lr 6e-3 (AdamW beta2 0.99, clipping at 1 and weight decay 0.1).
#: - Short budgets (up to a minute, eager): 2 layers, batch 8. In 30 s on the tuning split
#:   Muon at lr 6e-3 reached 1.7028 and at 3e-3 1.7828; AdamW at 3e-3 1.7233, against 1.7794
#:   for 3 layers, 1.8054 for 3 at batch 16, 1.7634 for 2 at batch 16 and 1.859 for 3 at lr
#:   5e-3 (results/shakespeare_char_tuning*.json).
#: - Longer budgets (compiled): 4 layers, batch 32. In 135 s on the tuning split, compiled, with
#:   Muon: 1.4692, against 1.4747 for 3 layers (1.4895 at lr 3e-3, 1.4849 at 1e-2), 1.4965 for
#:   4 at batch 16, 1.5042 and 1.4954 at batch 64 (lr 6e-3, 1e-2), 1.5066 with block 256 at
#:   batch 16 and 1.496 for 3 layers 192 wide. With AdamW the best was 1.5205 (3 layers, batch
#:   32, lr 3e-3; results/shakespeare_char_tuning*.json).
RECIPE = {
    "model": {"n_layer": 4, "n_head": 4, "d_model": 128},
    "block_size": 128,
    "batch_size": 32,
    "lr": 6e-3,
    "optimizer": "muon",
}
SHORT_RECIPE = {**RECIPE, "model": {**RECIPE["model"], "n_layer": 2}, "batch_size": 8}
SHORT_SECONDS = 60.0  # budgets up to this take SHORT_RECIPE
QUICK = {"model": {"n_layer": 2, "n_head": 2, "d_model": 64}, "block_size": 64,
         "batch_size": 16, "lr": 6e-3, "optimizer": "muon"}


def command(out: Path, recipe: dict, precision: str, *, minutes: float | None = None,
            steps: int | None = None, tuning: bool = False,
            compile_choice: str = "auto") -> list[str]:
    args = [
        ".venv/bin/selfsup", "pretrain", "gpt", "--data", os.path.relpath(DATA, REPO),
        "--out", os.path.relpath(out, REPO), "--encoder", "gpt_small",
        "--block-size", str(recipe["block_size"]), "--batch-size", str(recipe["batch_size"]),
        "--lr", str(recipe["lr"]), "--precision", precision, "--no-progress",
        "--checkpoint-minutes", "30", "--compile", compile_choice,
        "--optimizer", recipe["optimizer"],
    ]
    for key, value in recipe["model"].items():
        args += ["--encoder-option", f"{key}={value}"]
    if tuning:
        args += ["--data-option", "tuning=true"]
    args += ["--minutes", f"{minutes:.4f}"] if minutes is not None else ["--steps", str(steps)]
    return args


def run(args: list[str], cache: Path) -> tuple[float, dict, dict]:
    """Run one CLI command in a fresh process; (wall seconds, pretrain.json, language.json).

    Both caches start empty: selfsup's and inductor's (a compiled run compiles from cold)."""
    env = {**os.environ, "SELFSUP_CACHE": str(cache),
           "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    started = time.monotonic()
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(args)}\n{done.stderr[-3000:]}")
    out = REPO / args[args.index("--out") + 1]
    summary = json.loads((out / "pretrain.json").read_text())
    language = json.loads((out / "language.json").read_text())
    return wall, summary, language


def timed_run(target: float, recipe: dict, precision: str, root: Path, tuning: bool,
              margin: float, compile_choice: str) -> dict:
    """Calibrate the fixed overhead (compilation included), then train for what is left of
    ``target`` seconds."""
    calibration = command(root / f"calibrate-{target:.0f}", recipe, precision, steps=3,
                          tuning=tuning, compile_choice=compile_choice)
    wall, summary, _ = run(calibration, Path(tempfile.mkdtemp(dir=root)))
    overhead = wall - summary["train_seconds"]
    minutes = max(0.05, (target - overhead - margin) / 60)
    args = command(root / f"run-{target:.0f}", recipe, precision, minutes=minutes, tuning=tuning,
                   compile_choice=compile_choice)
    wall, summary, language = run(args, Path(tempfile.mkdtemp(dir=root)))
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=recipe["block_size"], **recipe["model"]))
    tokens = summary["steps"] * recipe["batch_size"] * recipe["block_size"]
    gflops = model.flops_per_token(recipe["block_size"]) * tokens / summary["train_seconds"] / 1e9
    return {
        "target_seconds": target,
        "compile": compile_choice,
        "command": shlex.join(args),
        "wall_seconds": round(wall, 2),
        "within_target": wall <= target,
        "overhead_seconds_calibrated": round(overhead, 2),
        "train_seconds": round(summary["train_seconds"], 2),
        "steps": summary["steps"],
        "tokens_trained": tokens,
        "tokens_per_s": round(tokens / summary["train_seconds"]),
        "train_gflops": round(gflops, 1),
        "val_loss": round(language["loss"], 4),
        "bits_per_character": round(language["bits_per_character"], 4),
        "val_tokens_scored": language["tokens"],
        "split": language["split"],
        "final_train_loss": summary["final_loss"],
        "parameters": model.num_parameters(non_embedding=False),
        "recipe": recipe,
    }


def markdown(result: dict) -> str:
    peak = result.get("bf16_peak_measured", BF16_PEAK) if result["precision"] == "bf16" \
        else FP32_PEAK
    lines = [
        "# Tiny Shakespeare, char-level: selfsup GPT vs nanoGPT's CPU recipe",
        "",
        f"Machine: {result['machine']}; precision {result['precision']} "
        f"(native bf16: {result['native_bf16']}). Split: {result['split_note']}",
        "",
        "| run | wall (s) | train (s) | steps | tokens | tokens/s | GFLOP/s "
        "| val loss (whole split) | bits/char |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| nanoGPT CPU recipe (reference) | {NANOGPT['seconds']:.0f} | | 2000 | 1,536,000 | | "
        f"| {NANOGPT['val_loss']} (20-batch estimate) | |",
    ]
    runs = [result[f"run_{t:.0f}"] for t in result["targets"]]
    for r in runs:
        lines.append(
            f"| selfsup, {r['target_seconds']:.0f} s target, --compile {r['compile']} | "
            f"{r['wall_seconds']} | "
            f"{r['train_seconds']} | {r['steps']} | {r['tokens_trained']:,} | "
            f"{r['tokens_per_s']:,} | {r['train_gflops']} ({r['train_gflops'] / peak:.0%} of "
            f"{peak:.0f}) | **{r['val_loss']}** | {r['bits_per_character']} |"
        )
    defaults = GPTMethod.config_defaults
    optimiser = (f"each run's (below): AdamW, or Muon on the linear layers' weights with AdamW "
                 f"on the rest; AdamW beta2 {defaults['adam_beta2']}, gradient clipping at "
                 f"{defaults['grad_clip']}, weight decay {defaults['weight_decay']}")
    lines.append("")
    for r, goal in zip(runs, GOALS, strict=False):
        verdict = ("meets" if r["val_loss"] <= goal and r["within_target"]
                   else "does not meet")
        lines.append(
            f"- The {r['target_seconds']:.0f} s run {verdict} its target (validation loss <= "
            f"{goal} within {r['target_seconds']:.0f} s wall): {r['val_loss']} in "
            f"{r['wall_seconds']} s wall.")
    lines += [
        "",
        "Wall time includes start-up, tokenization, compilation (inductor's cache empty) and "
        "the whole-split evaluation. The bf16 peak is a 2048^3 bf16 matmul measured by the "
        "script on this machine. GFLOP/s counts 6 FLOPs per weight per token plus causal "
        "attention (6 x layers x context x width), over training time only (compilation "
        f"included). Optimiser: {optimiser} (the gpt method's defaults); the learning rate "
        "warms up, then decays by a cosine over the wall-clock budget.",
        "",
    ]
    for r in runs:
        recipe = r["recipe"]
        lines.append(f"- {r['target_seconds']:.0f} s: model {recipe['model']}, block "
                     f"{recipe['block_size']}, batch {recipe['batch_size']}, lr {recipe['lr']}, "
                     f"optimizer {recipe.get('optimizer', 'adamw')}, "
                     f"{r['parameters']:,} parameters")
    lines += [
        "",
        "Commands (each run in a fresh process with an empty SELFSUP_CACHE; the `--minutes` value "
        "is what a 3-step calibration run left of the target):",
        "",
        "```bash",
        *(f"# {r['target_seconds']:.0f} s target\n{r['command']}" for r in runs),
        "```",
        "",
        f"Reproduce: `{result['reproduce']}`",
        "",
    ]
    return "\n".join(lines)


def recipe_for(target: float, args: argparse.Namespace) -> dict:
    """The recipe of a ``target``-second run, with the command line's overrides."""
    base = QUICK if args.quick else SHORT_RECIPE if target <= SHORT_SECONDS else RECIPE
    recipe = {**base, "model": dict(base["model"])}
    for key in ("lr", "batch_size", "block_size", "optimizer"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    for key in ("n_layer", "d_model"):
        if getattr(args, key) is not None:
            recipe["model"][key] = getattr(args, key)
    return recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and budgets (smoke)")
    parser.add_argument("--tuning", action="store_true",
                        help="validate on a split carved from the training 90%% (for choices)")
    parser.add_argument("--precision", choices=["auto", "bf16", "32"], default="auto")
    parser.add_argument("--margin", type=float, default=2.0, help="seconds kept in reserve")
    parser.add_argument("--lr", type=float, help="override the recipe (tune with --tuning)")
    parser.add_argument("--batch-size", type=int, help="override the recipe")
    parser.add_argument("--block-size", type=int, help="override the recipe")
    parser.add_argument("--n-layer", type=int, help="override the recipe")
    parser.add_argument("--d-model", type=int, help="override the recipe")
    parser.add_argument("--optimizer", choices=["adamw", "muon"], help="override the recipe")
    parser.add_argument("--compile", default="off,on",
                        help="each target run's --compile, auto|on|off, comma-separated (on: "
                        "the step is compiled, from a cold cache)")
    parser.add_argument("--targets", default="30,135", help="the two wall-clock targets (s)")
    args = parser.parse_args()
    if not DATA.is_file():
        sys.exit(f"{DATA} is missing")
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if cpu_has_native_bf16() else "32"
    targets = (20.0, 30.0) if args.quick else tuple(float(t) for t in args.targets.split(","))
    compiles = args.compile.split(",")
    if len(compiles) != len(targets) or not set(compiles) <= {"auto", "on", "off"}:
        sys.exit(f"--compile needs one of auto|on|off per target ({len(targets)}), "
                 f"not {args.compile!r}")
    with tempfile.TemporaryDirectory(prefix="shakespeare-", dir=REPO / "runs"
                                     if (REPO / "runs").is_dir() else None) as tmp:
        root = Path(tmp)
        result = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "native_bf16": cpu_has_native_bf16(),
            "precision": precision,
            "split_note": (
                "tuning split (first 90% of the training 90% trains, its last 10% validates)"
                if args.tuning else "nanoGPT's: first 90% trains, last 10% (111,540 characters) "
                "validates; every validation character is scored once"
            ),
            "nanogpt": NANOGPT,
            "targets": list(targets),
            "compile": args.compile,
            "bf16_peak_measured": round(matmul_peak(), 1),
            "reproduce": shlex.join([".venv/bin/python", "benchmarks/shakespeare_char.py",
                                     *sys.argv[1:]]),
        }
        for target, compile_choice in zip(targets, compiles, strict=True):
            key = f"run_{target:.0f}"
            result[key] = timed_run(target, recipe_for(target, args), precision, root,
                                    args.tuning, args.margin, compile_choice)
            r = result[key]
            print(f"{target:.0f} s target: wall {r['wall_seconds']} s, val loss {r['val_loss']}, "
                  f"{r['steps']} steps, {r['tokens_per_s']} tokens/s, {r['train_gflops']} GFLOP/s "
                  f"(bf16 peak {result['bf16_peak_measured']:.0f})", flush=True)
    name = "shakespeare_char" + ("_quick" if args.quick else "")
    name += "_tuning" if args.tuning else ""
    name += f"_compile_{'_'.join(compiles)}" if args.compile != "off,on" else ""
    # A recipe other than the committed one is a candidate: its own files, never the results'.
    for key in ("optimizer", "lr", "batch_size", "block_size", "n_layer", "d_model"):
        if getattr(args, key) is not None:
            name += f"_{key}{getattr(args, key)}"
    # A smoke run's figures mean nothing: they stay out of benchmarks/results.
    results = Path(tempfile.gettempdir()) if args.quick else REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (results / f"{name}.md").write_text(markdown(result))
    print(f"written to {results / name}.{{json,md}}")


if __name__ == "__main__":
    main()
