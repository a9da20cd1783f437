"""Which TSDAE keeps MiniLM's embeddings spread? Chosen on held-out IMDB *train* reviews.

Issue 24 asks that continued SimCSE/TSDAE keep the embeddings spread. tsdae's light decoder
(one fresh layer reading centred sentence vectors) kept them apart (mean cosine 0.06) but lost
rank (94 against MiniLM's 273 on IMDB test; benchmarks/README.md). This compares, one change
at a time, MiniLM continued for the same ``--minutes`` on IMDB train + unsup (exactly as
text_adaptation.py continues it) by each TSDAE variant of :data:`VARIANTS`, and reports for the
starting MiniLM and each variant the spread of ``--held-size`` IMDB train reviews outside the
label pool (mean cosine of two reviews, uniformity, effective rank; the same reviews and label
subsets as text_adaptation_validation.py) and the linear probe and kNN at 100 labels per class,
paired by label subset. The test split is never read; a variant chosen here is only then scored
on test by text_adaptation.py.

    .venv/bin/python benchmarks/tsdae_spread.py                 # ~80 min on 2 cores
    .venv/bin/python benchmarks/tsdae_spread.py --variants tied
    .venv/bin/python benchmarks/tsdae_spread.py --reuse     # score only the variants not yet in

Writes benchmarks/results/tsdae_spread.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from imdb_continued import RESULTS, minilm_folder  # noqa: E402  (siblings)
from imdb_finetune_diagnosis import geometry  # noqa: E402
from text_adaptation import FULL, QUICK, continue_minilm, paired_gains, pm  # noqa: E402
from text_adaptation_validation import pool_and_held  # noqa: E402

from selfsup import atomic  # noqa: E402
from selfsup.data.labelled_text import LabelledText  # noqa: E402
from selfsup.evaluate.budgets import LabelBudget  # noqa: E402
from selfsup.evaluate.text import (  # noqa: E402
    budget_accuracy,
    evaluate_models,
    load_folder_model,
    load_run_model,
)

#: tsdae's options before this comparison: a light decoder reading centred, raw vectors.
BEFORE = {"decoder": "light", "center_memory": True, "memory_norm": False, "decoder_warmup": 0.0}


def variant(lr: float | None = None, **changes: Any
            ) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """text_adaptation.py's (method, its options, reader options, config overrides) spec."""
    return "tsdae", {**BEFORE, **changes}, {}, ({"lr": lr} if lr else {})


#: variant -> spec, each changing BEFORE (in the order they were tried).
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "light": variant(),
    "tied": variant(decoder="tied"),  # the paper's decoder: the encoder, causal, weights shared
    # The decoder alone trains for the first quarter (LP-FT's idea: a fresh decoder's noise
    # does not reach the encoder), with and without the centred memory.
    "light-warmup": variant(decoder_warmup=0.25),
    "light-warmup-uncentred": variant(decoder_warmup=0.25, center_memory=False),
    # MiniLM's vector has length 1, a twentieth of the decoder's layer-normed token states
    # beside it; a LayerNorm on the memory reads it at their scale.
    "light-warmup-memory-norm": variant(decoder_warmup=0.25, memory_norm=True),
    "light-warmup-lr1e-5": variant(1e-5, decoder_warmup=0.25),
    # Which parts of the last but one matter: without the warm-up; without the centring.
    "memory-norm": variant(memory_norm=True),
    "light-warmup-memory-norm-uncentred": variant(decoder_warmup=0.25, memory_norm=True,
                                                  center_memory=False),
    # The chosen one keeps uniformity but loses a third of the effective rank: does the encoder
    # move less far from MiniLM with a longer warm-up, or a smaller step after it?
    "warmup-half-memory-norm-uncentred": variant(decoder_warmup=0.5, memory_norm=True,
                                                 center_memory=False),
    "warmup-memory-norm-uncentred-lr1e-5": variant(1e-5, decoder_warmup=0.25, memory_norm=True,
                                                   center_memory=False),
    # Neither: the encoder moves as far. The light decoder writes through the encoder's word
    # table, so every step's softmax gradient moves all of its rows; here only the encoder's
    # own reading trains them.
    "warmup-memory-norm-uncentred-words-fixed": variant(decoder_warmup=0.25, memory_norm=True,
                                                        center_memory=False, word_grad=False),
    # Nor that. A pull towards the starting model's vector of each (damaged) text.
    "warmup-memory-norm-uncentred-anchor": variant(decoder_warmup=0.25, memory_norm=True,
                                                   center_memory=False, anchor=1.0),
    # That kept the rank (269) and gained nothing: a fifth of the pull.
    "warmup-memory-norm-uncentred-anchor-0.2": variant(decoder_warmup=0.25, memory_norm=True,
                                                       center_memory=False, anchor=0.2),
}
PROTOCOLS = ("linear", "knn")
log = logging.getLogger("selfsup")


def score(model: Any, pool: LabelledText, held: LabelledText, s: dict[str, Any], work: Path,
          name: str) -> dict[str, Any]:
    """Linear probe and kNN at 100/class over the seeds, and the held-out reviews' spread."""
    out = work / f"{name}_held.npz"
    row = evaluate_models(model, pool, held, budgets=[LabelBudget(per_class=s["labels_per_class"])],
                          seeds=s["seeds"], finetune=False, setfit=False, baseline=False,
                          max_length=s["max_length"], seed=0, embeddings_out=out)
    return {"eval": row, "spread": geometry(np.load(out)["features"].astype(np.float64))}


def chosen(contenders: dict[str, Any]) -> str | None:
    """The variant of the highest effective rank whose linear and kNN gains are >= 0."""
    fit = [n for n, c in contenders.items() if n != "start"
           and all(c["gains"][p]["mean"] >= 0 for p in PROTOCOLS)]
    return max(fit, key=lambda n: contenders[n]["spread"]["effective_rank"], default=None)


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = ["# Which TSDAE keeps MiniLM's embeddings spread (held-out IMDB train reviews)", "",
             f"all-MiniLM-L6-v2 continued for {s['minutes']:g} min by each TSDAE variant on IMDB "
             f"train + unsup; scored on {r['held']}, labels {s['labels_per_class']}/class from "
             f"{r['pool']} ({s['seeds']} subsets, the same for every contender). Never IMDB "
             f"test. Reviews cut to {s['max_length']} tokens. Each variant changes tsdae's "
             "options before this comparison (a light decoder reading the centred, raw vector, "
             "no warm-up; `BEFORE` in the script). Generated by "
             f"`benchmarks/tsdae_spread.py{r.get('flags', '')}`.", "",
             "| contender | steps | final loss | mean cosine | uniformity | effective rank | "
             "linear probe | kNN |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in r["contenders"].items():
        q, row = c["spread"], c["eval"]["budgets"][0]
        pre = c.get("pretrain", {})
        lines.append(f"| {name} | {pre.get('steps', '—')} | "
                     + (f"{pre['final_loss']:.2f}" if pre else "—")
                     + f" | {q['mean_cosine']:.2f} | {q['uniformity']:.2f} | "
                     f"{q['effective_rank']:.1f} | "
                     + " | ".join(pm(budget_accuracy(row, "model", p)) for p in PROTOCOLS) + " |")
    lines += ["", "Paired gains over the starting MiniLM (points):", "",
              "| variant | linear probe | kNN |", "|---|---:|---:|"]
    for name, c in r["contenders"].items():
        if name != "start":
            lines.append(f"| {name} | " + " | ".join(pm(c["gains"][p], 1.0, True)
                                                     for p in PROTOCOLS) + " |")
    lines += ["", "Mean cosine near 0, uniformity low (more negative) and a high effective "
              "rank mean spread-out embeddings."]
    if (name := chosen(r["contenders"])) is not None:
        options = r["contenders"][name]["pretrain"]["method_options"]
        lines += ["", f"Chosen (the highest effective rank among the variants that lose "
                  f"nothing on the linear probe and kNN): **{name}** ("
                  + ", ".join(f"`{k}={v}`" for k, v in options.items()) + ")."]
    lines += ["", f"Took {r['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--held-size", type=int, default=1000)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--work", default=None, help="folder for the runs [a temporary one]; "
                        "a finished run of the same variant and budget there is reused")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: the pipeline runs")
    parser.add_argument("--reuse", action="store_true", help="keep the contenders of the last "
                        "results file (same settings) and score only the variants it lacks")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        sys.exit(f"--variants: choose among {', '.join(VARIANTS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    s = dict(QUICK if args.quick else FULL)
    held_size = 60 if args.quick else args.held_size
    flags = (f" --variants {shlex.quote(args.variants)}" * (args.variants != ",".join(VARIANTS))
             + " --quick" * args.quick + " --reuse" * args.reuse)
    began = time.monotonic()
    pool, held = pool_and_held(s, held_size)
    work = Path(args.work or tempfile.mkdtemp(prefix="tsdae-spread-"))
    stem = RESULTS / f"tsdae_spread{'_quick' * args.quick}"
    kept = json.loads(stem.with_suffix(".json").read_text()) if args.reuse else {}
    if kept and kept["settings"] != json.loads(json.dumps(s)):
        sys.exit(f"--reuse: {stem}.json was made with other settings")
    contenders = kept.get("contenders") or {
        "start": score(load_folder_model(minilm_folder()), pool, held, s, work, "start")}
    base = contenders["start"]["eval"]["budgets"][0]
    for name in (v for v in variants if v not in contenders):
        log.info("continuing MiniLM by tsdae, %s decoder", name)
        run, record = continue_minilm(VARIANTS[name], s, work / name)
        model, _, _ = load_run_model(run)
        c = score(model, pool, held, s, work, name)
        c.update(pretrain=record, gains={p: paired_gains(c["eval"]["budgets"][0], base, p)
                                         for p in PROTOCOLS})
        contenders[name] = c
        del model
    result = {"benchmark": "tsdae_spread", "settings": s, "pool": pool.source,
              "held": held.source, "contenders": contenders, "flags": flags,
              "seconds": time.monotonic() - began + kept.get("seconds", 0.0)}
    atomic.write_json(stem.with_suffix(".json"), result)
    atomic.write_text(stem.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
