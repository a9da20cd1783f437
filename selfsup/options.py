"""Command-line options derived from config dataclasses: each option is declared once.

A field of :class:`~selfsup.config.PretrainConfig` (its type, default and ``help`` metadata)
becomes a typer option of ``selfsup pretrain``: ``batch_size`` is ``--batch-size``, a boolean
``progress`` is ``--progress/--no-progress``, a mapping ``method_options`` is the repeatable
``--method-option KEY=VALUE``. Defaults are shown from the field, with the methods that change
them (``config_defaults``), so ``--help`` cannot drift from what a run uses. Every option
defaults to None on the command line: "not given", so that a recipe and the method's defaults
apply under it.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from selfsup.config import mapping, option
from selfsup.errors import SelfsupError


def key_value_pairs(values: list[str] | None, flag: str) -> dict[str, Any] | None:
    """KEY=VALUE strings -> a mapping; values are read as YAML (numbers, lists, booleans)."""
    if not values:
        return None
    parsed: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SelfsupError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            parsed[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise SelfsupError(f"{flag} {item!r}: the value is not valid YAML") from None
    return parsed


@dataclass
class ReaderFlags:
    """Reader options common enough to have their own flags; they land in ``data_options``."""

    tokenizer: str | None = option(None, "Text: char (default) or bpe (byte-level), trained "
                                   "on the corpus.")
    vocab_size: int | None = option(None, "Text: BPE vocabulary size (default 4096); char: an "
                                    "upper bound.")
    block_size: int | None = option(None, "Text: context in tokens (default 128).")
    text_field: str | None = option(None, "Text: the .jsonl field holding the text (default "
                                    "text).")
    text_column: str | None = option(None, "Text: the .parquet column holding the text "
                                     "(default text).")
    encoding_errors: str | None = option(None, "Text: invalid UTF-8 is an error (strict, the "
                                         "default) or replace.")
    image_column: str | None = option(None, "Pairs (clip): the column of image paths (default "
                                      "image).")
    caption_column: str | None = option(None, "Pairs (clip): the column of captions (default "
                                        "caption).")


def flag(name: str, hint: Any) -> str:
    """The command-line spelling of a field: method_options -> --method-option."""
    if typing.get_origin(hint) is dict:
        return "--" + name.removesuffix("s").replace("_", "-")
    return "--" + name.replace("_", "-")


def _shown_default(field: dataclasses.Field, changed_by: dict[str, Any]) -> str | None:
    """The default as --help shows it: the field's, then what each method makes of it."""
    parts = [] if field.default in (None, dataclasses.MISSING) else [str(field.default)]
    parts += [f"{method} {value}" for method, value in sorted(changed_by.items())
              if value != field.default]
    return "; ".join(parts) or None


def option_parameters(cls: type, *, skip: Iterable[str] = (),
                      method_defaults: dict[str, dict[str, Any]] | None = None,
                      extra_help: dict[str, str] | None = None,
                      own_defaults: bool = False) -> list[inspect.Parameter]:
    """Keyword-only typer parameters for the fields of ``cls``: each defaults to None ("not
    given", so a recipe and the method's defaults apply under it), or with ``own_defaults``
    to the field's default (a field without one is a required option)."""
    hints = typing.get_type_hints(cls)
    if own_defaults:
        return [_own_default_parameter(field, hints[field.name])
                for field in dataclasses.fields(cls) if field.name not in skip]
    parameters = []
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        hint = hints[field.name]
        changed_by = {method: defaults[field.name]
                      for method, defaults in (method_defaults or {}).items()
                      if field.name in defaults}
        text = field.metadata.get("help", "") + (extra_help or {}).get(field.name, "")
        shown = _shown_default(field, changed_by)
        if typing.get_origin(hint) is dict:
            annotation: Any = Annotated[list[str] | None, typer.Option(
                flag(field.name, hint), help=text + " (repeatable)")]
        elif hint is bool:
            dashed = field.name.replace("_", "-")
            annotation = Annotated[bool | None, typer.Option(
                f"--{dashed}/--no-{dashed}", help=text, show_default=shown or False)]
        else:
            base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            annotation = Annotated[base[0] | None, typer.Option(
                flag(field.name, hint), help=text, show_default=shown or False)]
        parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY,
                                            default=None, annotation=annotation))
    return parameters


def _own_default_parameter(field: dataclasses.Field, hint: Any) -> inspect.Parameter:
    """A typer parameter whose default is the field's own (see :func:`option_parameters`)."""
    text = field.metadata.get("help", "")
    if typing.get_origin(hint) is dict:
        annotation: Any = Annotated[list[str] | None, typer.Option(
            flag(field.name, hint), help=text + " (repeatable)")]
        default: Any = None
    elif hint is bool:
        dashed = field.name.replace("_", "-")
        annotation = Annotated[bool, typer.Option(f"--{dashed}/--no-{dashed}", help=text)]
        default = field.default
    else:
        annotation = Annotated[hint, typer.Option(flag(field.name, hint), help=text)]
        default = (inspect.Parameter.empty if field.default is dataclasses.MISSING
                   and field.default_factory is dataclasses.MISSING else
                   None if field.default is dataclasses.MISSING else field.default)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)


@dataclass
class EvaluateOptions:
    """`selfsup evaluate`'s options, declared once: the command line is derived from them."""

    data: str = dataclasses.field(metadata={"help": "Labelled training data: images (folder, "
                                  ".npz, digits), series, or texts (.jsonl/.csv/.parquet, for "
                                  "a text run or HF folder)."})
    test: str | None = option(None, "Labelled test data; default: a stratified 20% held out "
                              "of --data.")
    baseline: bool = option(True, "Train the supervised baseline.")
    baseline_minutes: float | None = option(None, "Baseline budget (default: the "
                                            "pre-training's time).")
    seed: int = option(0, "Seed for the splits and the baseline.")
    skip_bad: bool = option(False, "Skip unreadable images.")
    progress: bool = option(True, "Show the plan's progress bar.")
    data_options: dict[str, Any] = mapping("Reader option KEY=VALUE for --data and --test (over "
                                           "the run's).")
    test_options: dict[str, Any] = mapping("Reader option KEY=VALUE for --test only, e.g. "
                                           "split=test.")
    fractions: str | None = option(None, "Label-efficiency sweep over these label fractions, "
                                   "e.g. 0.01,0.1,1.")
    labels_per_class: str | None = option(None, "Sweep over labels per class, e.g. 1,10,100.")
    seeds: int = option(3, "Sweep: seeds (label subsets) per point.")
    baseline_steps: int | None = option(None, "Sweep: each baseline's budget in steps (with "
                                        "--baseline-minutes, whichever ends first).")
    protocol: str = option("probes", "probes (linear, kNN) or finetune (probes + fine-tuning "
                           "the whole encoder, against the same encoder from scratch); text "
                           "also setfit (probes + SetFit-style contrastive fine-tuning on "
                           "same/different-label pairs, then a logistic head) or "
                           "finetune,setfit.")
    compile: str = option("auto", "Image, series and CLIP runs: torch.compile the feature "
                          "extraction and fine-tuning: auto (extraction of 500,000+ images; "
                          "fine-tuning on GPUs only), on or off.")
    finetune_minutes: float = option(5.0, "Finetune: budget of each fine-tuning run (text: "
                                     "and of each SetFit-style one).")
    finetune_fractions: str = option("1", "Finetune: label fractions to fine-tune with, e.g. "
                                     "0.1,1.")
    pairs: str | None = option(None, "CLIP: held-out image-caption pairs for retrieval R@K.")
    class_names: str | None = option(None, "CLIP: class names for the prompts, comma-separated, "
                                     "in label order (default: the class folders' names).")
    template: list[str] | None = option(None, "CLIP: a prompt template with one {}, e.g. 'a "
                                        "photo of a {}.' (repeat; default: 16 photo prompts).")
    class_subset: list[str] | None = option(None, "CLIP: also score zero-shot among these "
                                            "classes only, NAME=class,class (repeat), e.g. "
                                            "unseen=cat,truck.")
    text_field: str | None = option(None, "Text: the field/column holding the text (default "
                                    "text).")
    label_field: str | None = option(None, "Text: the field/column holding the label (default "
                                     "label).")
    max_length: int | None = option(None, "Text: tokens per text, at most the model's "
                                    "positions (default: the model's own length: its "
                                    "sentence-transformers max_seq_length, e.g. MiniLM's 256, "
                                    "else its positions up to 512).")
    finetune_epochs: int | None = option(None, "Text: also end each fine-tuning after this many "
                                         "epochs.")
    finetune_head: str | None = option(None, "The fine-tuning head starts as a linear 'probe' "
                                       "of the frozen features (LP-FT; kept unless fine-tuning "
                                       "beats it on the validation carve) or 'random' (near "
                                       "zero). Default: probe for text, random for images.")
    setfit_iterations: int | None = option(None, "Text, setfit: rounds of pair generation, each "
                                           "one same-label and one other-label pair per text "
                                           "(default 20, SetFit's R).")
    setfit_max_pairs: int | None = option(None, "Text, setfit: at most this many pairs, half "
                                          "of each kind (default 1920: R=20 up to 48 texts).")
    test_size: int | None = option(None, "Text: score on a fixed seeded random subset of the "
                                   "test.")
    out: Path | None = option(None, "Text, evaluating a Hugging Face folder: where eval.json "
                              "goes.")


def with_parameters(func: Callable[..., Any], parameters: list[inspect.Parameter]
                    ) -> Callable[..., Any]:
    """``func`` (taking ``**values``) as typer sees a function with these parameters."""
    func.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    func.__annotations__ = {p.name: p.annotation for p in parameters}
    return func


def collect(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """The given options of ``cls`` from parsed command-line values: mappings parsed from
    their KEY=VALUE lists; options not given (None) left out."""
    hints = typing.get_type_hints(cls)
    given = {}
    for field in dataclasses.fields(cls):
        value = values.get(field.name)
        if typing.get_origin(hints[field.name]) is dict:
            value = key_value_pairs(value, flag(field.name, hints[field.name]))
        if value is not None:
            given[field.name] = value
    return given


def merge_reader_flags(data_options: dict[str, Any] | None, flags: dict[str, Any]
                       ) -> dict[str, Any] | None:
    """The reader's own flags (--tokenizer, --block-size ...) merged into data_options."""
    if not flags:
        return data_options
    merged = dict(data_options or {})
    for key, value in flags.items():
        if key in merged and merged[key] != value:
            raise SelfsupError(f"--{key.replace('_', '-')} and --data-option {key}= disagree")
        merged[key] = value
    return merged


__all__ = ["EvaluateOptions", "ReaderFlags", "collect", "flag", "key_value_pairs",
           "merge_reader_flags", "option_parameters", "with_parameters"]
