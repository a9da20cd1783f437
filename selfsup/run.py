"""The run directory: one layout that every verb reads and writes.

    runs/<name>/
      config.yaml            the fully resolved pre-training config
      checkpoints/last.ckpt  Lightning checkpoint (atomic), what --resume continues from
      logs/<attempt>/        Lightning CSV logs of each (resumed) attempt; tensorboard/ beside
      metrics.csv            all attempts' metrics, merged
      pretrain.json          summary: steps, images seen, wall time, throughput, final monitors
      encoder.safetensors    the encoder's weights ...
      encoder.json           ... and how to rebuild it (registry name + options)
      eval.json              what `selfsup evaluate` measured
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from selfsup import atomic
from selfsup.errors import SelfsupError
from selfsup.models import build_encoder

#: Files a CLIP run writes beside the image tower (selfsup/methods/clip.py writes them,
#: selfsup/loading.py reads them back): its text tower, tokenizer and projection heads.
TEXT_WEIGHTS = "text_encoder.safetensors"
TEXT_SPEC = "text_encoder.json"
TOKENIZER = "tokenizer.json"
HEADS_WEIGHTS = "clip.safetensors"
HEADS_SPEC = "clip.json"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary(self) -> Path:
        return self.path / "pretrain.json"

    @property
    def encoder_weights(self) -> Path:
        return self.path / "encoder.safetensors"

    @property
    def encoder_spec(self) -> Path:
        return self.path / "encoder.json"

    @property
    def eval(self) -> Path:
        return self.path / "eval.json"

    def write_config(self, config: dict[str, Any]) -> None:
        atomic.write_text(self.config, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        if not self.config.is_file():
            raise SelfsupError(f"{self.path} is not a selfsup run (no config.yaml)")
        try:
            config = yaml.safe_load(self.config.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise SelfsupError(f"{self.config} is damaged (not valid YAML: "
                               f"{str(error).splitlines()[0]}); the run cannot be read") from None
        if not isinstance(config, dict):
            raise SelfsupError(f"{self.config} is damaged (not a mapping of option: value)")
        return config

    def read_summary(self) -> dict[str, Any]:
        if not self.summary.is_file():
            raise SelfsupError(f"{self.path} has no finished pre-training (no pretrain.json)")
        try:
            return json.loads(self.summary.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise SelfsupError(f"{self.summary} is damaged (not valid JSON)") from None

    def merge_metrics(self) -> None:
        """Concatenate every attempt's CSV log into ``metrics.csv`` (a union of the columns)."""
        rows: list[dict[str, str]] = []
        for path in sorted(self.logs.glob("*/metrics.csv"), key=lambda p: int(p.parent.name)):
            with open(path, newline="", encoding="utf-8") as handle:
                rows.extend(csv.DictReader(handle))
        if not rows:
            return
        columns = sorted({key for row in rows for key in row})
        with atomic.atomic_path(self.metrics) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    def next_attempt(self) -> str:
        done = [int(p.name) for p in self.logs.glob("*") if p.name.isdigit()]
        return str(max(done) + 1 if done else 0)


def save_encoder(run: RunDir, encoder: nn.Module, spec: dict[str, Any]) -> None:
    """Export the encoder: weights as safetensors, and the registry name + options to rebuild it."""
    state, seen = {}, set()
    for key, value in encoder.state_dict().items():
        value = value.detach().contiguous().cpu()
        # Tied weights (T5's encoder embedding is its shared one) are one tensor under two
        # names; safetensors refuses shared memory, so the second name gets a copy.
        state[key] = value.clone() if value.data_ptr() in seen else value
        seen.add(value.data_ptr())
    with atomic.atomic_path(run.encoder_weights) as tmp:
        save_file(state, str(tmp))
    atomic.write_json(run.encoder_spec, {**spec, "embed_dim": encoder.embed_dim})


def load_encoder(run: RunDir) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an exported encoder (eval mode) and return it with its spec."""
    spec = read_encoder_spec(run)
    try:
        encoder = build_encoder(spec["name"], **spec.get("options", {}))
    except (TypeError, ValueError) as error:
        raise SelfsupError(f"{run.encoder_spec}: the encoder {spec['name']!r} cannot be built "
                           f"from its options ({error})") from None
    try:
        weights = load_file(str(run.encoder_weights))
    except (SafetensorError, OSError) as error:
        raise SelfsupError(f"{run.encoder_weights} is damaged or cut short ({error}); copy it "
                           "again from the run's original folder") from None
    try:
        encoder.load_state_dict(weights)
    except RuntimeError as error:  # "Error(s) in loading state_dict ...:\n\tsize mismatch ..."
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else "")[:200]
        raise SelfsupError(f"{run.encoder_weights} does not hold the weights of the encoder "
                           f"{run.encoder_spec} describes ({detail})") from None
    return encoder.eval(), spec


def read_encoder_spec(run: RunDir) -> dict[str, Any]:
    """The exported encoder's spec (``encoder.json``: registered name, options, modality),
    read without building it; the weights beside it must exist too."""
    if not run.encoder_spec.is_file() or not run.encoder_weights.is_file():
        raise SelfsupError(
            f"{run.path} has no exported encoder (encoder.json + encoder.safetensors); "
            "did its pre-training finish?"
        )
    # A damaged export (cut short by a copy, edited by hand) is bad input: name the file.
    try:
        spec = json.loads(run.encoder_spec.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise SelfsupError(f"{run.encoder_spec} is damaged (not valid JSON: {error}); copy it "
                           "again from the run's original folder") from None
    if (not isinstance(spec, dict) or not isinstance(spec.get("name"), str)
            or not isinstance(spec.get("options", {}), dict)):
        raise SelfsupError(f"{run.encoder_spec} is damaged: it needs the encoder's \"name\" "
                           "and its \"options\" (a mapping)")
    return spec


def default_run_name(method: str, root: Path = Path("runs")) -> Path:
    """runs/<method>-<n> with the first n not taken."""
    n = 1
    while (root / f"{method}-{n}").exists():
        n += 1
    return root / f"{method}-{n}"


def as_run(path: str | Path) -> RunDir:
    run = RunDir(Path(path))
    if not run.path.is_dir():
        raise SelfsupError(f"run directory {run.path} does not exist")
    return run


__all__ = ["RunDir", "as_run", "default_run_name", "load_encoder", "read_encoder_spec",
           "save_encoder"]
