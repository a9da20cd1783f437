"""The pre-training configuration: one dataclass, filled from defaults <- YAML recipe <- CLI.

The run directory keeps the fully resolved result as ``config.yaml``, so a run can be resumed or
repeated from it alone. Unknown keys and wrong types are refused with the list of valid options.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from selfsup.errors import SelfsupError


def option(default: Any = None, help: str = "", **kwargs: Any) -> Any:  # noqa: A002
    """A config field with the help text that the CLI's ``--help`` and the docs show for it:
    each option is declared here once, and the command line is derived from these fields."""
    return field(default=default, metadata={"help": help}, **kwargs)


def mapping(help: str) -> Any:  # noqa: A002
    """A KEY=VALUE mapping field (``--method-option temperature=0.2``, repeatable)."""
    return field(default_factory=dict, metadata={"help": help})


@dataclass
class PretrainConfig:
    """Everything a pre-training run needs; every field is also a CLI option and a YAML key."""

    method: str = option("simclr", "The pretext method (see selfsup pretrain --help).")
    # None: the user named no data, which is refused (``digits`` is the built-in example data;
    # nothing trains on it unless asked).
    data: str | None = option(None, "What to train on: an image folder (class sub-folders = "
                              "labels), an .npz or 'digits'; text .txt/.md/.jsonl(.gz)/.parquet "
                              "(several: a,b); series .npz/.csv/.ts; image-caption pairs "
                              ".csv/.jsonl (clip); or a `selfsup prepare` folder.")
    out: str | None = option(None, "Run directory (default: runs/METHOD-N).")
    # Budget: the first one reached ends the run. With none given, ``minutes`` defaults to 5.
    minutes: float | None = option(None, "Wall-clock budget (5 if no budget is given).")
    epochs: int | None = option(None, "Budget in passes over the data.")
    steps: int | None = option(None, "Budget in optimiser steps.")
    batch_size: int = option(256, "Samples per step and per process (global: x devices x "
                             "nodes); shrinks to the data when it holds fewer.")
    # None: the method's default encoder (resnet_small for images).
    encoder: str | None = option(None, "Encoder, by registered name (default: the method's).")
    encoder_options: dict[str, Any] = mapping("Encoder option KEY=VALUE, e.g. width=64.")
    # Continued pre-training: a local model folder whose weights (text: and tokenizer) the
    # run starts from (text methods that support it, e.g. mlm; every image method but clip).
    init: str | None = option(None, "Continue pre-training an existing model. Text (mlm, "
                              "span, simcse, tsdae): a local Hugging Face model folder; its "
                              "tokenizer is used. A sentence encoder (a sentence-transformers "
                              "folder such as MiniLM): simcse or tsdae (long documents: simcse "
                              "with --method-option views=spans --block-size 512); a masked-LM "
                              "model (BERT with its head): mlm. Images: a selfsup image run or "
                              "`selfsup export` folder, or a transformers ViT folder; the "
                              "architecture is its own.")
    # Reader options of the method's modality (text: tokenizer, vocab_size...; images: none).
    data_options: dict[str, Any] = mapping("Reader option KEY=VALUE of the method's data "
                                           "(text, series, pairs), e.g. split=train.")
    method_options: dict[str, Any] = mapping("Method option KEY=VALUE, e.g. temperature=0.2.")
    augment_options: dict[str, Any] = mapping("Augmentation option KEY=VALUE, e.g. flip_p=0.")
    # "auto": bf16 autocast where the CPU computes bf16 natively (AVX-512 BF16 / AMX, ~2.7x
    # faster than fp32 there), else fp32 (emulated bf16 is many times slower than fp32).
    precision: str = option("auto", "auto (bf16 autocast where the CPU or GPU has native bf16, "
                            "else 32), bf16 or 32.")
    # "auto": compile the training step where the budget wins the compilation time back (at
    # least 3 minutes or 500 steps) and a C++ compiler is present; config.yaml records on/off.
    compile: str = option("auto", "torch.compile the training step: auto (on for runs of 3+ "
                          "minutes or 500+ steps, where a C++ compiler is present), on or off.")
    seed: int = option(0, "Random seed.")
    # Optimiser: AdamW (or Muon on the linear layers' weights, selfsup/optim.py) with linear
    # warm-up then cosine decay over the budget's progress.
    optimizer: str = option("adamw", "adamw, or muon: Muon on the linear layers' weights, "
                            "AdamW on the rest, one lr for both (selfsup/optim.py).")
    lr: float = option(2e-3, "Peak learning rate, used as given: with k times the global "
                       "batch (more devices), scale it by k yourself (linear rule).")
    # AdamW's second-moment decay: 0.999 (PyTorch's default) averages over ~1000 steps; a
    # method taking many small steps may want less (a language model's 0.99, as nanoGPT's).
    adam_beta2: float = option(0.999, "AdamW's second-moment decay.")
    weight_decay: float = option(1e-5, "Weight decay (decoupled; not on norms and biases).")
    warmup_fraction: float = option(0.05, "Share of the budget spent warming the lr up.")
    grad_clip: float | None = option(3.0, "Clip the gradient norm to this (none: no clipping).")
    # A step whose loss is NaN/inf is skipped (no update, counted) instead of ending the run.
    skip_nonfinite: bool = option(False, "Skip (and count) steps whose loss is NaN/inf.")
    # The collapse alarm always logs a warning; with this it also ends the run (cleanly).
    stop_on_collapse: bool = option(False, "End the run when the collapse alarm fires (it "
                                    "always logs a warning).")
    # Processes (Lightning): accelerator, devices per node, nodes, strategy. ``batch_size`` is
    # per device, so the global batch is batch_size * devices * num_nodes; ``lr`` is used as
    # given (scale it yourself: linearly with the global batch, Goyal et al. 2017).
    accelerator: str = option("cpu", "cpu, gpu, or auto (GPUs if any).")
    devices: int = option(1, "Processes per node (GPUs, or CPU processes); needs --out if > 1.")
    num_nodes: int = option(1, "Machines (SLURM, torchrun).")
    strategy: str = option("auto", "auto (ddp when several processes), ddp, or fsdp (GPUs).")
    image_size: int | None = option(None, "Resize images to SxS (default: their common size).")
    skip_bad: bool = option(False, "Skip unreadable inputs (counted).")
    num_workers: int = option(0, "DataLoader worker processes.")
    channels_last: bool = option(True, "Convolutions in channels-last memory order.")
    checkpoint_minutes: float = option(2.0, "Minutes between checkpoints.")
    checkpoint_steps: int | None = option(None, "Steps between checkpoints (instead of "
                                          "minutes).")
    monitor_minutes: float = option(2.0, "Minutes between kNN-monitor checks (labelled data).")
    monitor_size: int = option(2000, "Labelled samples the kNN monitor uses (0: none).")
    log_every_steps: int = option(10, "Steps between logged metrics and collapse checks.")
    progress: bool = option(True, "Show the progress bar.")
    cache_dir: str | None = option(None, "Decode cache for image folders (default: "
                                   "~/.cache/selfsup or $SELFSUP_CACHE).")

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "32"):
            raise SelfsupError(
                f"precision must be 'auto', 'bf16' or '32', not {self.precision!r}"
            )
        if self.precision == "auto":  # the run's config.yaml records what was chosen
            on_gpu = self.accelerator in ("gpu", "auto") and _cuda_available()
            self.precision = "bf16" if native_bf16("cuda" if on_gpu else "cpu") else "32"
        if self.compile not in ("auto", "on", "off"):
            raise SelfsupError(f"compile must be 'auto', 'on' or 'off', not {self.compile!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise SelfsupError(f"optimizer must be 'adamw' or 'muon', not {self.optimizer!r}")
        if self.optimizer == "muon" and self.strategy == "fsdp":
            raise SelfsupError("--optimizer muon needs whole weight matrices; FSDP shards them "
                               "(use --strategy ddp, or --optimizer adamw)")
        if self.skip_nonfinite and self.devices * self.num_nodes > 1:
            raise SelfsupError(
                "--skip-nonfinite works in one process only: a step skipped on one rank and "
                "not the others would leave the processes waiting for each other"
            )
        positive = ("minutes", "epochs", "steps", "batch_size", "checkpoint_minutes", "lr",
                    "checkpoint_steps", "monitor_minutes", "log_every_steps", "image_size")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SelfsupError(f"{name} must be positive, not {value}")
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            raise SelfsupError(
                f"image_size {self.image_size} is too large: each image would take "
                f"{_bytes(3 * self.image_size**2)} decoded; at most {MAX_IMAGE_SIZE} "
                "(these encoders are built for 32 to 224 pixels)"
            )
        if self.out is not None and not self.out.strip():
            raise SelfsupError("out must name a run directory, not an empty string")
        for name in ("weight_decay", "num_workers", "monitor_size", "grad_clip"):
            if (getattr(self, name) or 0) < 0:
                raise SelfsupError(f"{name} must not be negative, not {getattr(self, name)}")
        if not 0 <= self.adam_beta2 < 1:
            raise SelfsupError(f"adam_beta2 must be in [0, 1), not {self.adam_beta2}")
        if not 0 <= self.warmup_fraction < 1:
            raise SelfsupError(f"warmup_fraction must be in [0, 1), not {self.warmup_fraction}")
        if not 0 <= self.seed < 2**32:  # numpy's and Lightning's seeding take 32-bit seeds
            raise SelfsupError(f"seed must be in [0, 2**32), not {self.seed}")
        if self.minutes is None and self.epochs is None and self.steps is None:
            self.minutes = 5.0
        self._check_processes()

    def _check_processes(self) -> None:
        """Refuse process settings that cannot work, before any data is read."""
        choices = {"accelerator": ("cpu", "gpu", "auto"), "strategy": ("auto", "ddp", "fsdp")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise SelfsupError(
                    f"{name} must be one of {', '.join(valid)}, not {getattr(self, name)!r}"
                )
        for name in ("devices", "num_nodes"):
            if getattr(self, name) < 1:
                raise SelfsupError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.strategy == "fsdp" and self.accelerator == "cpu":
            raise SelfsupError(
                "strategy 'fsdp' needs GPUs: it shards parameters over NCCL collectives, which "
                "CPU processes (gloo) do not provide; on CPUs use --strategy ddp"
            )
        if self.devices * self.num_nodes > 1 and self.out is None:
            raise SelfsupError(
                f"{self.devices * self.num_nodes} processes (--devices {self.devices}, "
                f"--num-nodes {self.num_nodes}) must all write to one run directory: name it "
                "with --out"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The largest --image-size: 4096 x 4096 x 3 is 48 MiB an image, already far past what these
#: encoders train on; 100,000 would be a 30 GB image and terabytes of decode cache.
MAX_IMAGE_SIZE = 4096


def _bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def config_fields(cls: type = PretrainConfig) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


#: How values are read: as users write them (YAML's ``1e-3`` is a string, and is a number
#: here; an int where a float is wanted is that float), never NaN or infinity, which pass
#: every range check and fail much later.
_LAX = ConfigDict(allow_inf_nan=False, coerce_numbers_to_str=True)


@functools.cache
def _adapter(hint: Any) -> TypeAdapter:
    return TypeAdapter(hint, config=_LAX)


def _check_type(name: str, value: Any, hint: Any) -> Any:
    """``value`` validated as ``hint`` by pydantic (lax: "1e-3" is a float); a boolean is
    refused where no boolean is wanted (YAML's ``yes`` is not a step count)."""
    if isinstance(value, bool) and bool not in (hint, *typing.get_args(hint)):
        raise SelfsupError(f"option {name!r}: {value!r} is not a valid {_type_name(hint)}")
    try:
        return _adapter(hint).validate_python(value)
    except ValidationError as error:
        problem = error.errors()[0].get("type", "")
        if problem in ("finite_number", "float_type") and isinstance(value, int | float):
            raise SelfsupError(f"option {name!r}: {value!r} is not a finite number") from None
        raise SelfsupError(f"option {name!r}: {value!r} is not a valid {_type_name(hint)}"
                           ) from None


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:
        return " or ".join(_type_name(a) for a in args)
    return getattr(hint, "__name__", str(hint))


def build_config(values: dict[str, Any], cls: type = PretrainConfig) -> Any:
    """A config from a mapping, refusing unknown keys and wrong types with a helpful message."""
    fields = config_fields(cls)
    valid = ", ".join(sorted(fields)) or "(none)"
    normalised = _normalised(values)
    unknown = sorted(set(normalised) - set(fields))
    if unknown:
        raise SelfsupError(f"unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    checked = {key: _check_type(key, value, fields[key]) for key, value in normalised.items()}
    return cls(**checked)


def _normalised(values: Mapping[Any, Any]) -> dict[str, Any]:
    """Keys as field names ("batch-size" -> "batch_size"); one option spelt both ways is refused."""
    if not isinstance(values, Mapping):
        raise SelfsupError(f"options must be a mapping of name: value, not {values!r}")
    normalised: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in normalised:  # which of the two was meant?
            raise SelfsupError(f"option {name!r} is given twice")
        normalised[name] = value
    return normalised


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe (a mapping of option -> value)."""
    path = Path(path)
    if not path.is_file():
        raise SelfsupError(f"recipe {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise SelfsupError(f"recipe {path} is not valid YAML: {error}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SelfsupError(f"recipe {path} must be a mapping of option: value")
    return loaded


def resolve_config(
    recipe: str | Path | None,
    overrides: dict[str, Any],
    cls: type = PretrainConfig,
    defaults: dict[str, Any] | None = None,
) -> Any:
    """Defaults (the class's, then ``defaults``, e.g. a method's), then the recipe's values,
    then every CLI option the user actually gave."""
    values = _normalised(defaults or {})
    values.update(_normalised(read_recipe(recipe)) if recipe else {})
    values.update(_normalised({k: v for k, v in overrides.items() if v is not None}))
    return build_config(values, cls)


def options_dataclass(cls: type, values: dict[str, Any], what: str) -> Any:
    """Build a method's or augmentation's own options dataclass from a user mapping; numbers
    are range-checked by name (:func:`check_option_ranges`)."""
    try:
        options = build_config(values, cls)
        check_option_ranges(dataclasses.asdict(options))
    except SelfsupError as error:
        raise SelfsupError(f"{what}: {error}") from None
    return options


# What a method option's name says of its range. Temperatures divide logits (0 is a NaN step,
# a negative one turns the loss upside down); sizes, widths and counts must be at least 1;
# momenta, probabilities and ratios are fractions.
_POSITIVE = ("temperature", "_dim", "_size", "_layers", "_heads", "_width", "_depth",
             "_tokens", "_length", "_scale")
_POSITIVE_NAMES = {"dim", "layers", "heads", "span", "local_crops_size"}
_FRACTION = ("momentum", "_ratio", "_prob", "_p", "dropout", "density", "_warmup",
             "replace_mask", "replace_random")
_NON_NEGATIVE = ("_weight", "eps", "lambda_", "alpha", "minutes", "images", "local_crops")


def check_option_ranges(values: Mapping[str, Any]) -> None:
    """Refuse a method option outside the range its name implies (see the tables above):
    ``temperature=-1`` or ``projection_dim=0`` would otherwise train a broken model quietly or
    fail steps later with a NaN."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if name.endswith(_POSITIVE) or "temperature" in name or name in _POSITIVE_NAMES:
            if value <= 0:
                raise SelfsupError(f"option {name!r} must be positive, not {value}")
        elif name.endswith(_FRACTION) or name.startswith(_FRACTION):
            if not 0 <= value <= 1:
                raise SelfsupError(f"option {name!r} must be between 0 and 1, not {value}")
        elif (name.endswith(_NON_NEGATIVE) or name.startswith(_NON_NEGATIVE)) and value < 0:
            raise SelfsupError(f"option {name!r} must not be negative, not {value}")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.cache
def native_bf16(device: str = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU with bf16, or a CPU with AVX-512
    BF16 or AMX that oneDNN uses. Without it, bf16 is emulated and slower than fp32."""
    import torch

    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def inference_precision(precision: str) -> str:
    """The precision to run a trained model's forward passes in on this machine: a run trained
    in bf16 elsewhere is evaluated in fp32 where bf16 would only be emulated (same answers to
    within bf16 rounding, many times faster)."""
    if precision == "auto" or (precision == "bf16" and not native_bf16()):
        return "bf16" if native_bf16() else "32"
    return precision
