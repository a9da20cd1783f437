"""The `selfsup` command line: pretrain, evaluate, demo. Every verb calls the Python API.

Bad input ends with one line on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from selfsup.errors import SelfsupError

app = typer.Typer(
    help="Self-supervised pre-training, and an honest answer to whether it helped.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def _pairs(values: list[str] | None, option: str) -> dict[str, Any] | None:
    """KEY=VALUE strings -> a mapping; values are read as YAML (numbers, lists, booleans)."""
    if not values:
        return None
    parsed: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SelfsupError(f"{option} expects KEY=VALUE, got {item!r}")
        try:
            parsed[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise SelfsupError(f"{option} {item!r}: the value is not valid YAML") from None
    return parsed


@app.command()
def pretrain(
    method: Annotated[str, typer.Argument(help="Pretext method, e.g. simclr.")],
    data: Annotated[
        str | None,
        typer.Option(help="Images: a folder (class sub-folders = labels), an .npz, or 'digits'."),
    ] = None,
    out: Annotated[str | None, typer.Option(help="Run directory [default: runs/METHOD-N].")] = None,
    minutes: Annotated[
        float | None, typer.Option(help="Wall-clock budget (default 5 if no budget is given).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Budget in passes over the data.")] = None,
    steps: Annotated[int | None, typer.Option(help="Budget in optimiser steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step [256].")] = None,
    encoder: Annotated[
        str | None, typer.Option(help="Encoder: resnet_small (default) or resnet18.")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="bf16 (autocast, default; ~2.7x faster here) or 32.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed [0].")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak AdamW learning rate [2e-3].")] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Resize images to SxS (default: their common size).")
    ] = None,
    skip_bad: Annotated[
        bool | None, typer.Option("--skip-bad", help="Skip unreadable images (counted).")
    ] = None,
    num_workers: Annotated[
        int | None, typer.Option(help="DataLoader worker processes [0].")
    ] = None,
    checkpoint_minutes: Annotated[
        float | None, typer.Option(help="Minutes between checkpoints [2].")
    ] = None,
    checkpoint_steps: Annotated[
        int | None, typer.Option(help="Steps between checkpoints (instead of minutes).")
    ] = None,
    method_option: Annotated[
        list[str] | None, typer.Option(help="Method option KEY=VALUE, e.g. temperature=0.2.")
    ] = None,
    augment_option: Annotated[
        list[str] | None, typer.Option(help="Augmentation option KEY=VALUE, e.g. flip_p=0.")
    ] = None,
    encoder_option: Annotated[
        list[str] | None, typer.Option(help="Encoder option KEY=VALUE, e.g. width=64.")
    ] = None,
    data_option: Annotated[
        list[str] | None,
        typer.Option(help="Reader option KEY=VALUE of the method's data (text, series)."),
    ] = None,
    skip_nonfinite: Annotated[
        bool | None,
        typer.Option("--skip-nonfinite", help="Skip (and count) steps whose loss is NaN/inf."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    config: Annotated[
        Path | None, typer.Option(help="YAML recipe holding any of these options.")
    ] = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Show progress bars.")
    ] = None,
) -> None:
    """Pre-train an encoder with a self-supervised METHOD on unlabelled images."""
    from selfsup.api import pretrain as run_pretrain

    run = run_pretrain(
        method,
        data,
        config=config,
        resume=resume,
        out=out,
        minutes=minutes,
        epochs=epochs,
        steps=steps,
        batch_size=batch_size,
        encoder=encoder,
        precision=precision,
        seed=seed,
        lr=lr,
        image_size=image_size,
        skip_bad=skip_bad,
        num_workers=num_workers,
        checkpoint_minutes=checkpoint_minutes,
        checkpoint_steps=checkpoint_steps,
        method_options=_pairs(method_option, "--method-option"),
        augment_options=_pairs(augment_option, "--augment-option"),
        encoder_options=_pairs(encoder_option, "--encoder-option"),
        data_options=_pairs(data_option, "--data-option"),
        skip_nonfinite=skip_nonfinite,
        progress=progress,
    )
    summary = run.read_summary()
    console.print(
        f"[bold]done[/]: {summary['steps']} steps, {summary['images_per_s']:.1f} images/s, "
        f"loss {summary['final_loss']:.3f}; run in {run.path}"
    )
    console.print(f"next: selfsup evaluate {run.path} --data LABELLED [--test LABELLED_TEST]")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run directory written by `selfsup pretrain`.")],
    data: Annotated[str, typer.Option(help="Labelled training images (folder, .npz, digits).")],
    test: Annotated[
        str | None,
        typer.Option(help="Labelled test images; default: a stratified 20% held out of --data."),
    ] = None,
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Train the supervised baseline.")
    ] = True,
    baseline_minutes: Annotated[
        float | None, typer.Option(help="Baseline budget (default: the pre-training's time).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the splits and the baseline.")] = 0,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Linear probe and kNN on frozen features against a supervised baseline (same budget)."""
    from selfsup.evaluate import evaluate as run_evaluate

    result = run_evaluate(
        run,
        data,
        test,
        baseline=baseline,
        baseline_minutes=baseline_minutes,
        seed=seed,
        skip_bad=skip_bad,
        progress=progress,
    )
    print_eval(result)


def print_eval(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['method']} / {result['encoder']} on {result['test_data']}")
    table.add_column("protocol")
    table.add_column("test accuracy", justify="right")
    table.add_column("chosen on validation")
    table.add_row("linear probe", f"{result['linear']['accuracy']:.4f}",
                  _chosen(result["linear"]["chosen"]))
    table.add_row("kNN", f"{result['knn']['accuracy']:.4f}", _chosen(result["knn"]["chosen"]))
    if "supervised" in result:
        sup = result["supervised"]
        table.add_row("supervised baseline", f"{sup['accuracy']:.4f}",
                      f"same encoder from scratch, {sup['minutes']:.1f} min")
        ratio = result["linear_over_supervised"]
        table.add_row("linear / supervised", f"{ratio:.3f}" if ratio is not None else "n/a", "")
    table.add_row("chance (majority class)", f"{result['chance_accuracy']:.4f}", "")
    console.print(table)
    if "supervised" in result and result["linear_over_supervised"] is not None:
        linear, sup = result["linear"]["accuracy"], result["supervised"]["accuracy"]
        verdict = "beats" if linear > sup else "matches" if linear == sup else "does not beat"
        console.print(
            f"Verdict: with all {result['num_train']} labels, the self-supervised encoder + linear "
            f"probe {verdict} the supervised baseline ({linear:.1%} vs {sup:.1%}, "
            f"{result['linear_over_supervised']:.0%} of it) at the same CPU-time budget."
        )
    console.print(f"written to {Path(result['run']) / 'eval.json'}")


def _chosen(chosen: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in chosen.items() if k != "converged")


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Run directory for the demo.")] = "runs/demo",
    minutes: Annotated[float, typer.Option(help="Pre-training budget.")] = 1.5,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """The whole flow on scikit-learn's digits: SimCLR pre-training, then evaluation."""
    from selfsup.demo import run_demo

    print_eval(run_demo(out=out, minutes=minutes, progress=progress))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = app(standalone_mode=False)
    except SelfsupError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as error:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(error, click.exceptions.ClickException):
            error.show()
            sys.exit(error.exit_code)
        if isinstance(error, click.exceptions.Abort):
            sys.exit(1)
        raise
    sys.exit(result if isinstance(result, int) else 0)
