"""The sentence-transformers folder format, read and written without the library.

A sentence encoder is more than its transformer: ``modules.json`` lists the modules that turn
token states into one vector (Reimers & Gurevych 2019), typically ``Transformer`` ->
``Pooling`` (``1_Pooling/config.json``: mean, CLS, max ...) -> ``Normalize``. MiniLM
(all-MiniLM-L6-v2) is mean pooling + L2 normalisation. A run that starts from such a folder must
pool the same way, or its vectors are not the ones the model was trained to produce, and its
export must declare the same modules, so that ``SentenceTransformer(path)`` encodes exactly as
``selfsup.load(run).embed`` does.

Read: both the classic layout (``pooling_mode_*_tokens`` flags, module types
``sentence_transformers.models.*``) and sentence-transformers >= 6 (``"pooling_mode": "mean"``).
Written: the classic layout, which every version from 2.0 on loads. Standard library + torch
only; the library itself is a test dependency, never imported here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from selfsup.errors import SelfsupError

log = logging.getLogger("selfsup")

#: Pooling modes selfsup applies, with their classic sentence-transformers flag.
POOLING_FLAGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
                 "max": "pooling_mode_max_tokens",
                 "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
                 "last": "pooling_mode_lasttoken"}
POOLING_MODES = tuple(POOLING_FLAGS)
#: sentence-transformers >= 6 names (``"pooling_mode"``) -> selfsup's.
_NEW_NAMES = {"mean": "mean", "cls": "cls", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len",
              "lasttoken": "last"}
_CLASSIC = "sentence_transformers.models."


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """One vector per text from token states (B, T, D), as sentence-transformers' Pooling
    computes ``mode`` (right padding; padding never counts)."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    if mode == "cls":
        return states[:, 0]
    if mode == "max":
        return states.masked_fill(weights == 0, float("-inf")).max(1).values
    if mode == "last":
        last = mask.long().sum(1).clamp_min(1) - 1
        return states[torch.arange(states.shape[0], device=states.device), last]
    count = weights.sum(1).clamp_min(1.0)
    total = (states * weights).sum(1)
    return total / (count.sqrt() if mode == "mean_sqrt_len" else count)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SelfsupError(f"{path}: not readable JSON ({error})") from None


def _pooling_mode(config: dict[str, Any], path: Path) -> str:
    if "pooling_mode" in config:  # sentence-transformers >= 6
        named = config["pooling_mode"]
        names = [named] if isinstance(named, str) else list(named)
        modes = [_NEW_NAMES.get(str(name), str(name)) for name in names]
    else:
        modes = [mode for mode, flag in POOLING_FLAGS.items() if config.get(flag)]
        modes += ["weightedmean"] if config.get("pooling_mode_weightedmean_tokens") else []
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise SelfsupError(f"{path}: pooling {' + '.join(modes) or 'none'} is not supported "
                           f"(one of {', '.join(POOLING_MODES)})")
    return modes[0]


def _max_seq_length(folder: Path) -> int | None:
    """``sentence_bert_config.json``'s ``max_seq_length``, None where it declares none."""
    path = folder / "sentence_bert_config.json"
    config = _json(path) if path.is_file() else {}
    if not isinstance(config, dict):
        raise SelfsupError(f"{path}: expected a JSON object")
    value = config.get("max_seq_length")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise SelfsupError(f"{path}: max_seq_length must be an integer of at least 2, not "
                           f"{value!r}")
    return value


def sentence_pooling(folder: str | Path) -> dict[str, Any] | None:
    """``{"pooling": mode, "normalize": bool, "max_seq_length": int | None}`` as the folder's
    ``modules.json`` and ``sentence_bert_config.json`` declare, or None when it has no
    ``modules.json`` (then: mean pooling, no normalisation). ``max_seq_length`` is the length
    the model's users encode a text at (MiniLM: 256), which selfsup then reads texts at too."""
    folder = Path(folder)
    listing = folder / "modules.json"
    if not listing.is_file():
        return None
    modules = _json(listing)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise SelfsupError(f"{listing}: expected a list of modules")
    found: dict[str, Any] = {"pooling": "mean", "normalize": False,
                             "max_seq_length": _max_seq_length(folder)}
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            path = folder / str(module.get("path", "")) / "config.json"
            found["pooling"] = _pooling_mode(_json(path) if path.is_file() else {}, path)
        elif kind == "Normalize":
            found["normalize"] = True
        elif kind != "Transformer":
            log.warning("%s lists a %s module, which selfsup does not apply or export: its "
                        "vectors are the pooled ones before it", listing, kind)
    return found


def write_sentence_transformers(folder: str | Path, *, pooling: str, normalize: bool, dim: int,
                                max_seq_length: int) -> None:
    """Add the sentence-transformers files to a Hugging Face model folder (its root holds the
    transformer: ``path: ""``, as the hub's models do)."""
    folder = Path(folder)
    if pooling not in POOLING_MODES:
        raise SelfsupError(f"pooling {pooling!r} is not one of {', '.join(POOLING_MODES)}")
    modules = [{"idx": 0, "name": "0", "path": "", "type": _CLASSIC + "Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": _CLASSIC + "Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": _CLASSIC + "Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    # The four classic flags (as sentence-transformers 2.0 wrote them), the last-token one only
    # where used: older versions refuse keys they do not know.
    config: dict[str, Any] = {"word_embedding_dimension": int(dim)}
    config.update({flag: mode == pooling for mode, flag in POOLING_FLAGS.items()
                   if mode != "last" or pooling == "last"})
    (folder / "1_Pooling").mkdir(exist_ok=True)
    files = {"modules.json": modules, "1_Pooling/config.json": config,
             "sentence_bert_config.json": {"max_seq_length": int(max_seq_length),
                                           "do_lower_case": False}}
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


__all__ = ["POOLING_MODES", "pool", "sentence_pooling", "write_sentence_transformers"]
