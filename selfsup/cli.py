"""The `selfsup` command line: pretrain, evaluate, demo. Every verb calls the Python API.

Bad input ends with one line on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from selfsup import distributed
from selfsup.api import pretrain as run_pretrain
from selfsup.captions import captions_from_labels
from selfsup.config import PretrainConfig
from selfsup.data.prepare import prepare
from selfsup.demo import run_demo
from selfsup.embed import embed
from selfsup.errors import SelfsupError
from selfsup.evaluate.dispatch import evaluate as run_evaluate
from selfsup.evaluate.sweep import sweep
from selfsup.evaluate.text import budget_accuracy, evaluate_text, is_text_target, text_sweep
from selfsup.export import export_hf
from selfsup.generate import generate as run_generate
from selfsup.index import build_index, search
from selfsup.methods import METHODS
from selfsup.models import ENCODERS
from selfsup.options import (
    EvaluateOptions,
    ReaderFlags,
    collect,
    key_value_pairs,
    merge_reader_flags,
    option_parameters,
    with_parameters,
)
from selfsup.report import build_compare, build_report, compare_rows, verdict
from selfsup.run import RunDir

app = typer.Typer(
    help="Self-supervised pre-training, and an honest answer to whether it helped.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def _method_defaults() -> dict[str, dict[str, Any]]:
    """What each method changes of the config's defaults (shown in --help)."""
    changed: dict[str, dict[str, Any]] = {}
    for name in METHODS.names():
        method = METHODS.get(name)
        if method.config_defaults:
            changed[name] = dict(method.config_defaults)
        if method.init_config_defaults:
            changed[f"{name} --init"] = dict(method.init_config_defaults)
    return changed


def _pretrain_parameters() -> list[inspect.Parameter]:
    """`selfsup pretrain`'s parameters: METHOD, every config field, the reader's flags, and the
    options of the call itself (recipe, resume, probe curve)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    by_modality: dict[str, list[str]] = {}
    for name in METHODS.names():
        by_modality.setdefault(METHODS.get(name).modality, []).append(name)
    methods = "; ".join(f"{modality}: {', '.join(names)}"
                        for modality, names in sorted(by_modality.items()))
    return [
        inspect.Parameter("method", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
            str, typer.Argument(help=f"Pretext method ({methods}).", show_default=False)]),
        *option_parameters(PretrainConfig, skip={"method"}, method_defaults=_method_defaults(),
                           extra_help={"encoder": f" One of: {', '.join(ENCODERS.names())}."}),
        *option_parameters(ReaderFlags),
        inspect.Parameter("config", keyword, default=None, annotation=Annotated[
            Path | None, typer.Option(help="YAML recipe holding any of these options (the "
                                           "command line wins).")]),
        inspect.Parameter("resume", keyword, default=False, annotation=Annotated[
            bool, typer.Option("--resume", help="Continue the run in --out from its last "
                                                "checkpoint.")]),
        inspect.Parameter("probe_data", keyword, default=None, annotation=Annotated[
            str | None, typer.Option(help="Text: labelled texts for the probe curve (a linear "
                                          "probe on frozen embeddings every --probe-every "
                                          "steps; RUN/probe_curve.json).")]),
        inspect.Parameter("probe_every", keyword, default=100, annotation=Annotated[
            int, typer.Option(help="Text: steps between probe-curve points.")]),
    ]


def pretrain(**values: Any) -> None:
    """Pre-train an encoder with a self-supervised METHOD on unlabelled data: images, text,
    series or image-caption pairs. Every option is also a key of a --config recipe."""
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


app.command("pretrain")(with_parameters(pretrain, _pretrain_parameters()))


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


@app.command()
def generate(
    run: Annotated[Path, typer.Argument(help="A run directory of `selfsup pretrain gpt`.")],
    prompt: Annotated[str, typer.Option(help="Text to continue [a new line].")] = "\n",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to sample.")] = 500,
    temperature: Annotated[
        float, typer.Option(help="Softmax temperature; 0 is greedy decoding.")
    ] = 0.8,
    top_k: Annotated[int | None, typer.Option(help="Sample from the k likeliest tokens.")] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Nucleus sampling: the likeliest tokens up to mass p.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same text.")] = 0,
) -> None:
    """Sample text from a trained language model, printing it as it comes."""

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    run_generate(run, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                 top_p=top_p, seed=seed, stream=stream, echo=True)
    stream("\n")


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory of `selfsup pretrain gpt`.")],
    out: Annotated[Path, typer.Option(help="Folder for the Hugging Face model and tokenizer.")],
) -> None:
    """Export a language model to a Hugging Face folder (LlamaForCausalLM + tokenizer)."""

    path = export_hf(run, out)
    console.print(f"exported to {path}; load it with "
                  f"transformers.AutoModelForCausalLM.from_pretrained({str(path)!r})")


def evaluate(**values: Any) -> None:
    """Linear probe and kNN on frozen features against a supervised baseline (same budget).

    With --fractions or --labels-per-class: the label-efficiency sweep (probes and baseline on
    stratified label subsets, several seeds), written to RUN/sweep.json.

    Text (a run with an hf_text encoder, or a Hugging Face model folder as RUN): probes and,
    with --protocol finetune, fine-tuning at each of --labels-per-class 10,100,all or
    --fractions, against the same architecture from scratch and the run's starting model;
    with --fractions or --labels-per-class each budget is run for --seeds label subsets, and
    RUN/sweep.json holds the curve in the image sweep's form.
    """
    o = EvaluateOptions(**collect(values, EvaluateOptions))  # mappings parsed, None: default
    if o.protocol not in ("probes", "finetune"):
        raise SelfsupError(f"--protocol must be 'probes' or 'finetune', not {o.protocol!r}")
    run = values["run"]
    if is_text_target(run):
        print_text_eval(_evaluate_text(run, o))
    elif o.finetune_head != "random":
        raise SelfsupError("--finetune-head is for text models; image fine-tuning starts from a "
                           "random head")
    elif o.fractions is not None or o.labels_per_class is not None:
        print_sweep(sweep(
            run, o.data, o.test, fractions=o.fractions, labels_per_class=o.labels_per_class,
            seeds=o.seeds, baseline=o.baseline, baseline_minutes=o.baseline_minutes,
            baseline_steps=o.baseline_steps, skip_bad=o.skip_bad, progress=o.progress,
            finetune_minutes=o.finetune_minutes if o.protocol == "finetune" else None,
            data_options=o.data_options or None, test_options=o.test_options or None))
    else:
        result = _evaluate_run(run, o)
        (print_clip_eval if "zero_shot" in result or "retrieval" in result else print_eval)(
            result)


def _evaluate_text(run: Path, o: EvaluateOptions) -> dict[str, Any]:
    """The text protocols of a text run or a Hugging Face folder."""
    fields = {"text_field": o.text_field, "label_field": o.label_field}
    swept = o.fractions is not None or o.labels_per_class is not None
    return evaluate_text(
        run, o.data, o.test, out=o.out, fractions=o.fractions,
        labels_per_class=o.labels_per_class, protocol=o.protocol, baseline=o.baseline,
        finetune_minutes=o.finetune_minutes, finetune_epochs=o.finetune_epochs,
        finetune_head=o.finetune_head, max_length=o.max_length, seed=o.seed,
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
    )


app.command("evaluate")(with_parameters(evaluate, [
    inspect.Parameter("run", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
        Path, typer.Argument(help="A run directory written by `selfsup pretrain`, or a Hugging "
                                  "Face model folder (text).", show_default=False)]),
    *option_parameters(EvaluateOptions, own_defaults=True),
]))


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
    kinds = [("model", "linear"), ("model", "knn"), ("model", "finetune"),
             ("start", "linear"), ("start", "finetune"), ("scratch", "finetune")]
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
    if result.get("supervised") is not None:  # the report's verdict, from the same numbers
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
    if "supervised" in result:  # worded where the report words it: one verdict, one function
        console.print(f"Verdict: {verdict(None, result)}")
    console.print(f"written to {Path(result['run']) / 'eval.json'}")


def _chosen(chosen: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in chosen.items() if k != "converged")


@app.command()
def captions(
    from_labels: Annotated[
        Path, typer.Option("--from-labels", help="A labelled image folder (class sub-folders).")
    ],
    out: Annotated[Path, typer.Option(help="The pairs CSV to write (image, caption, label).")],
    classes: Annotated[
        str | None, typer.Option(help="Only these classes, comma-separated (e.g. hold some out).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the template choice.")] = 0,
) -> None:
    """Build image-caption pairs for CLIP from class names with varied templates.

    Such captions teach only the label vocabulary: what the model knows of other words comes
    from its text tower's own pre-training.
    """

    chosen = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    result = captions_from_labels(from_labels, out, classes=chosen, seed=seed)
    console.print(f"[bold]done[/]: {result['rows']} pairs of {len(result['classes'])} classes "
                  f"({result['templates']} templates) written to {result['out']}")
    console.print(f"next: selfsup pretrain clip --data {result['out']} "
                  "--method-option text_init=HF_FOLDER")


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Run directory for the demo.")] = "runs/demo",
    minutes: Annotated[float, typer.Option(help="Pre-training budget.")] = 1.5,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """The whole flow on scikit-learn's digits: SimCLR pre-training, then evaluation."""

    print_eval(run_demo(out=out, minutes=minutes, progress=progress))


@app.command("prepare")
def prepare_cmd(
    path: Annotated[
        str, typer.Argument(help="An image folder, an .npz, 'digits', a series file, or a text "
                             "corpus (.txt/.md file or folder, .jsonl(.gz), .parquet).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for the shards (new, empty or a previous "
                                           "prepare's output).")],
    repeat: Annotated[int, typer.Option(help="Write the data K times over (scale tests).")] = 1,
    shard_size_mb: Annotated[
        float, typer.Option("--shard-size-mb", help="Target size of one tar shard.")
    ] = 256,
    image_size: Annotated[
        int | None, typer.Option(help="Resize images to SxS (default: their common size).")
    ] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images.")] = False,
    cache_dir: Annotated[str | None, typer.Option(help="Decode cache for image folders.")] = None,
    data_option: Annotated[
        list[str] | None, typer.Option(help="Series or text reader option KEY=VALUE, e.g. "
                                            "text_field=body (repeatable).")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Convert data into WebDataset shards + manifest; every --data option then reads OUT."""

    manifest = prepare(
        path, out, repeat=repeat, shard_bytes=int(shard_size_mb * 2**20), image_size=image_size,
        skip_bad=skip_bad, cache_dir=cache_dir,
        data_options=key_value_pairs(data_option, "--data-option"), progress=progress,
    )
    if manifest["modality"] == "text":
        what = f"documents ({manifest['characters']:,} characters)"
    else:
        sample = manifest["sample"]
        what = f"{manifest['modality']} samples {tuple(sample['shape'])} {sample['dtype']}"
    console.print(
        f"[bold]done[/]: {manifest['count']} {what} in {len(manifest['shards'])} shard(s), "
        f"written to {out}"
    )
    console.print(f"next: selfsup pretrain METHOD --data {out}")


@app.command("embed")
def embed_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory with an exported encoder.")],
    data: Annotated[str, typer.Option(help="Data to embed (images: folder, .npz, 'digits').")],
    out: Annotated[Path, typer.Option(help="Output Parquet file.")] = Path("embeddings.parquet"),
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 256,
    resume: Annotated[
        bool, typer.Option("--resume", help="Keep the rows a killed run already wrote.")
    ] = False,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable inputs.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Stream DATA through the run's encoder into a Parquet file (id, label, embedding)."""

    result = embed(run, data, out, batch_size=batch_size, resume=resume, skip_bad=skip_bad,
                   progress=progress)
    rate = f", {result['rows_per_s']:.0f} rows/s" if result["rows_per_s"] else ""
    kept = f" ({result['resumed_rows']} kept from before)" if result["resumed_rows"] else ""
    console.print(f"[bold]done[/]: {result['rows']} rows x {result['dim']} dims{kept}{rate};"
                  f" written to {result['out']}")
    console.print(f"next: selfsup index {result['out']} --out index/")


@app.command("index")
def index_cmd(
    embeddings: Annotated[Path, typer.Argument(help="Parquet file with an 'embedding' column.")],
    out: Annotated[Path, typer.Option(help="Folder for the index.")] = Path("index"),
    metric: Annotated[str, typer.Option(help="cosine or l2.")] = "cosine",
    kind: Annotated[
        str, typer.Option(help="auto (exact up to 100k vectors, else IVF), flat, ivf or hnsw.")
    ] = "auto",
) -> None:
    """Build a FAISS index; an approximate one records its measured recall@10."""

    info = build_index(embeddings, out, metric=metric, kind=kind)
    params = ", ".join(f"{k}={v}" for k, v in info["params"].items())
    console.print(
        f"[bold]done[/]: {info['kind']} index ({info['metric']}{', ' + params if params else ''})"
        f" of {info['count']} x {info['dim']} in {info['build_seconds']:.1f} s, recall@10"
        f" {info['recall_at_10']:.3f} vs exact; written to {out}"
    )


@app.command("search")
def search_cmd(
    run: Annotated[Path, typer.Argument(help="The run whose encoder embeds the query.")],
    query: Annotated[str | None, typer.Argument(help="A text query (text and CLIP runs).")] = None,
    index: Annotated[Path, typer.Option(help="Index folder from `selfsup index`.")] = Path("index"),
    image: Annotated[Path | None, typer.Option(help="An image file to search by.")] = None,
    k: Annotated[int, typer.Option(help="How many neighbours.")] = 10,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Top-k neighbours of a text QUERY or an --image in the index, with scores and ids."""
    import json


    result = search(run, index, query, image=image, k=k)
    if json_out:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{result['modality']} query {result['query']!r}")
    table.add_column("rank", justify="right")
    table.add_column(result["score"], justify="right")
    table.add_column("id")
    table.add_column("label")
    for hit in result["hits"]:
        label = hit.get("label_name", hit.get("label", ""))
        table.add_row(str(hit["rank"]), f"{hit['score']:.4f}", hit["id"], str(label))
    console.print(table)


def print_sweep(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['method']} / {result['encoder']}: label efficiency on "
                        f"{result['test_data']} (mean ± std over {result['seeds']} seeds)")
    tuned = any("finetune" in p["summary"] for p in result["points"])
    protocols = ("linear", "knn", *(("finetune",) if tuned else ()), "supervised")
    for column in ("labels", "count", *protocols, "linear − supervised"):
        table.add_column(column, justify="left" if column == "labels" else "right")

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


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run directory.")],
    embedding_map: Annotated[
        bool, typer.Option("--map/--no-map", help="Draw the 2-D map of embeddings (t-SNE).")
    ] = True,
) -> None:
    """Write RUN/report.html: verdict, curves, label efficiency, label-free metrics, map."""
    console.print(f"written {build_report(run, embedding_map=embedding_map)}")


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to compare.")],
    out: Annotated[Path, typer.Option(help="The HTML page to write.")] = Path("compare.html"),
) -> None:
    """One table and one chart across runs (from pretrain.json, eval.json, sweep.json)."""
    written = build_compare(runs, out)  # checks the runs and --out before anything is shown
    rows = compare_rows(runs)
    table = Table(title="selfsup compare")
    for column in ("run", "method", "encoder", "steps", "minutes", "linear", "kNN", "supervised"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], str(r["method"]), str(r["encoder"]), str(r["steps"]),
                      f"{r['minutes']:.1f}" if r["minutes"] is not None else "—",
                      *(f"{r[p]:.4f}" if r.get(p) is not None else "—"
                        for p in ("linear", "knn", "supervised")))
    console.print(table)
    console.print(f"written {written}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = app(standalone_mode=False)
    except SelfsupError as error:
        print(f"{error.label}: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as error:  # click's usage errors arrive here in non-standalone mode
        usage, abort = _click_exceptions()
        if isinstance(error, usage):
            error.show()
            sys.exit(error.exit_code)
        if isinstance(error, abort):
            sys.exit(1)
        raise
    sys.exit(result if isinstance(result, int) else 0)


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Usage-error and abort classes of click, and of the copy newer typers bundle."""
    import click

    usage: list[type] = [click.exceptions.ClickException]
    abort: list[type] = [click.exceptions.Abort]
    try:
        from typer._click import exceptions as bundled  # typer >= 0.25 vendors click
    except ImportError:
        pass
    else:
        usage.append(bundled.ClickException)
        if hasattr(bundled, "Abort"):
            abort.append(bundled.Abort)
    return tuple(usage), tuple(abort)
