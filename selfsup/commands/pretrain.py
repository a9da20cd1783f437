"""`selfsup pretrain`'s body (its options: selfsup/cli.py)."""

from __future__ import annotations

import json
from typing import Any

from selfsup import distributed
from selfsup.api import pretrain as run_pretrain
from selfsup.commands import console
from selfsup.config import PretrainConfig
from selfsup.options import ReaderFlags, collect, merge_reader_flags
from selfsup.run import RunDir


def pretrain(**values: Any) -> None:
    """`selfsup pretrain`: the run from the parsed options, then its summary."""
    options = collect(values, PretrainConfig)
    options.pop("method", None)
    options["data_options"] = merge_reader_flags(options.get("data_options"),
                                                 collect(values, ReaderFlags))
    run = run_pretrain(values["method"], options.pop("data", None), config=values["config"],
                       resume=values["resume"], probe_data=values["probe_data"],
                       probe_every=values["probe_every"],
                       **{k: v for k, v in options.items() if v is not None})
    if distributed.rank() != 0:  # one of several processes: rank 0 reports for all
        return
    print_pretrain(run)


def print_pretrain(run: RunDir) -> None:
    """The run's summary line and what to do next."""
    summary = run.read_summary()
    loss = summary.get("final_loss")
    rate = summary.get("samples_per_s")
    console.print(
        f"[bold]done[/]: {summary.get('steps')} steps"
        f"{f', {rate:.1f} samples/s' if rate else ''}"
        f"{f', loss {loss:.3f}' if loss is not None else ''}; run in {run.path}"
    )
    if summary.get("stopped_early"):
        console.print(f"[bold red]stopped early[/]: {summary['stopped_early']}")
    language = run.path / "language.json"
    if language.is_file():  # a language model: its own evaluation and next steps
        result = json.loads(language.read_text(encoding="utf-8"))
        unit = "character" if "bits_per_character" in result else "byte"
        scored = (f"over {result['tokens']} of the {result['split']} split's "
                  f"{result['split_tokens']} tokens (evenly spaced windows; --method-option "
                  "eval_token_limit=0 scores all)" if result.get("sampled") else
                  f"over the whole {result['split']} split ({result['tokens']} tokens)")
        console.print(f"validation loss {result['loss']:.4f} {scored}, "
                      f"{result[f'bits_per_{unit}']:.3f} bits per {unit}")
        console.print(f"next: selfsup generate {run.path} --prompt TEXT; selfsup export "
                      f"{run.path} --out DIR")
        return
    console.print(f"next: selfsup evaluate {run.path} --data LABELLED [--test LABELLED_TEST]")
