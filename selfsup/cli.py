"""The `selfsup` command line: pretrain, evaluate, demo. Every verb calls the Python API.

Bad input ends with one line on stderr and exit code 2; never a traceback.

This module declares the verbs and their options and nothing more: each verb's body is a
function in selfsup/commands/, named by a deferred reference (``@verb("selfsup.commands.
search:search")``, resolved by selfsup/lazy.py when the verb runs) and called with the parsed
options by name. ``selfsup --help``, every verb's ``--help`` and the argument errors typer
reports before a body runs therefore import neither torch nor Lightning (tests/test_startup.py;
benchmarks/startup.py times it). What ``selfsup pretrain --help`` shows of the methods and
encoders comes from selfsup/catalog.py, which their registries read.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from selfsup.catalog import ENCODER_NAMES, method_defaults, methods_by_modality
from selfsup.config import PretrainConfig
from selfsup.errors import SelfsupError
from selfsup.lazy import resolve
from selfsup.options import EvaluateOptions, ReaderFlags, option_parameters, with_parameters

app = typer.Typer(
    help="Self-supervised pre-training, and an honest answer to whether it helped.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Each command's body, by command name: its deferred reference (tests/test_startup.py checks
#: that each resolves to a function taking the command's parameters).
BODIES: dict[str, str] = {}


def verb(body: str, parameters: list[inspect.Parameter] | None = None
         ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Declare the decorated function as a command: its name, docstring (the help) and
    parameters (or ``parameters``) are the command's; running it calls ``body`` (a deferred
    reference, ``"selfsup.commands.<module>:<function>"``) with the parsed values by name. The
    declaration's own body is empty; the name is bound to the command's callable."""

    def declare(declaration: Callable[..., None]) -> Callable[..., None]:
        def run(**values: Any) -> None:
            resolve(body)(**values)

        run.__name__ = run.__qualname__ = declaration.__name__
        run.__doc__ = declaration.__doc__
        declared = parameters if parameters is not None else list(
            inspect.signature(declaration, eval_str=True).parameters.values())
        app.command(declaration.__name__)(with_parameters(run, declared))
        BODIES[declaration.__name__] = body
        return run

    return declare


def _pretrain_parameters() -> list[inspect.Parameter]:
    """`selfsup pretrain`'s parameters: METHOD, every config field, the reader's flags, and the
    options of the call itself (recipe, resume, probe curve)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    methods = "; ".join(f"{modality}: {', '.join(names)}"
                        for modality, names in methods_by_modality().items())
    return [
        inspect.Parameter("method", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
            str, typer.Argument(help=f"Pretext method ({methods}).", show_default=False)]),
        *option_parameters(PretrainConfig, skip={"method"}, method_defaults=method_defaults(),
                           extra_help={"encoder": f" One of: {', '.join(ENCODER_NAMES)}."}),
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


@verb("selfsup.commands.pretrain:pretrain", _pretrain_parameters())
def pretrain() -> None:
    """Pre-train an encoder with a self-supervised METHOD on unlabelled data: images, text,
    series or image-caption pairs. Every option is also a key of a --config recipe."""


@verb("selfsup.commands.language:generate")
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


@verb("selfsup.commands.export:export")
def export(
    run: Annotated[Path, typer.Argument(help="A run directory (gpt, a text or an image method).")],
    out: Annotated[Path, typer.Option(help="Folder to write the model to.")],
) -> None:
    """Export a run's model to a folder that loads without selfsup.

    gpt: a Hugging Face LlamaForCausalLM + tokenizer. Text (mlm, span, simcse, tsdae): the
    Hugging Face folder (sentence-transformers where the start was one). Images: a torch.export
    program (encoder.pt2) + selfsup's safetensors, and for a ViT a transformers ViTModel folder.
    """


@verb("selfsup.commands.evaluate:evaluate", [
    inspect.Parameter("run", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
        Path, typer.Argument(help="A run directory written by `selfsup pretrain`, or a Hugging "
                                  "Face model folder (text).", show_default=False)]),
    *option_parameters(EvaluateOptions, own_defaults=True),
])
def evaluate() -> None:
    """Linear probe and kNN on frozen features against a supervised baseline (same budget).

    With --fractions or --labels-per-class: the label-efficiency sweep (probes and baseline on
    stratified label subsets, several seeds), written to RUN/sweep.json.

    Text (a run with an hf_text encoder, or a Hugging Face model folder as RUN): probes and,
    with --protocol finetune, fine-tuning (with --protocol setfit, SetFit-style contrastive
    fine-tuning on label pairs + a logistic head; finetune,setfit: both) at each of
    --labels-per-class 10,100,all or --fractions, against the same architecture from scratch
    and the run's starting model;
    with --fractions or --labels-per-class each budget is run for --seeds label subsets, and
    RUN/sweep.json holds the curve in the image sweep's form.
    """


@verb("selfsup.commands.data:captions")
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


@verb("selfsup.commands.evaluate:demo")
def demo(
    out: Annotated[str, typer.Option(help="Run directory for the demo.")] = "runs/demo",
    minutes: Annotated[float, typer.Option(help="Pre-training budget.")] = 1.5,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """The whole flow on scikit-learn's digits: SimCLR pre-training, then evaluation."""


@verb("selfsup.commands.data:prepare")
def prepare(
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


@verb("selfsup.commands.search:embed")
def embed(
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


@verb("selfsup.commands.search:index")
def index(
    embeddings: Annotated[Path, typer.Argument(help="Parquet file with an 'embedding' column.")],
    out: Annotated[Path, typer.Option(help="Folder for the index.")] = Path("index"),
    metric: Annotated[str, typer.Option(help="cosine or l2.")] = "cosine",
    kind: Annotated[
        str, typer.Option(help="auto (exact up to 100k vectors, else IVF), flat, ivf or hnsw.")
    ] = "auto",
) -> None:
    """Build a FAISS index; an approximate one records its measured recall@10."""


@verb("selfsup.commands.search:search")
def search(
    run: Annotated[Path, typer.Argument(help="The run whose encoder embeds the query.")],
    query: Annotated[str | None, typer.Argument(help="A text query (text and CLIP runs).")] = None,
    index: Annotated[Path, typer.Option(help="Index folder from `selfsup index`.")] = Path("index"),
    image: Annotated[Path | None, typer.Option(help="An image file to search by.")] = None,
    k: Annotated[int, typer.Option(help="How many neighbours.")] = 10,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Top-k neighbours of a text QUERY or an --image in the index, with scores and ids."""


@verb("selfsup.commands.reports:report")
def report(
    run: Annotated[Path, typer.Argument(help="A run directory.")],
    embedding_map: Annotated[
        bool, typer.Option("--map/--no-map", help="Draw the 2-D map of embeddings (t-SNE).")
    ] = True,
) -> None:
    """Write RUN/report.html: verdict, curves, label efficiency, label-free metrics, map."""


@verb("selfsup.commands.reports:compare")
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to compare.")],
    out: Annotated[Path, typer.Option(help="The HTML page to write.")] = Path("compare.html"),
) -> None:
    """One table and one chart across runs (from pretrain.json, eval.json, sweep.json)."""


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
