"""The reader seam: what every modality's data offers the engine, the monitors and the probes.

A reader turns a path into a :class:`TrainData`. The engine never asks what is inside a batch:
it asks the data how to build the encoder (``encoder_inputs``), what a method may know
(``data_info``), and for a batch-indexable dataset. Probes and monitors ask for un-augmented,
model-ready ``inputs`` of some samples. Images, text and series each implement this once.

Readers are registered per modality and imported lazily, so that reading images never pays for
importing ``tokenizers`` or ``transformers``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup.data import shards
from selfsup.errors import SelfsupError
from selfsup.registry import Registry

if TYPE_CHECKING:
    from selfsup.config import PretrainConfig


@dataclass
class DataInfo:
    """What a method may know about the data it trains on (what a reader tells a method)."""

    channels: int | None = None  # images and series
    image_size: int | None = None  # images
    num_classes: int | None = None
    num_images: int | None = None  # samples, where known; MoCo keeps its queue of keys below it
    vocab_size: int | None = None  # text
    length: int | None = None  # text: context window; series: (longest) length
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class TrainData(Protocol):
    """What a reader returns, whatever the modality."""

    modality: str  # "image" | "text" | "series"
    source: str  # the path (or built-in name) it came from, for messages
    labels: np.ndarray | None  # int64 class per sample, or None
    skipped: list  # inputs skipped under --skip-bad, for the counts in the log and summary

    def __len__(self) -> int: ...

    @property
    def num_classes(self) -> int | None: ...

    def data_info(self) -> DataInfo:
        """What a method may know about this data (sizes, vocabulary, classes)."""
        ...

    def encoder_inputs(self) -> dict[str, Any]:
        """Encoder constructor arguments that follow from the data (channels, statistics...)."""
        ...

    def encoder_spec(self) -> dict[str, Any]:
        """Fields recorded in encoder.json so that later data can be checked against it."""
        ...

    def batch_dataset(self, with_labels: bool) -> Dataset:
        """A dataset whose ``__getitems__`` returns one stacked batch as a dict of tensors."""
        ...

    def inputs(self, indices: np.ndarray) -> torch.Tensor:
        """Un-augmented, model-ready encoder inputs of those samples (for probes and monitors)."""
        ...

    def subset(self, indices: np.ndarray, source: str) -> TrainData:
        """The same data restricted to ``indices`` (for train/test splits and label subsets)."""
        ...


def class_count(labels: np.ndarray | None, class_names: list[str] | None) -> int | None:
    """Number of classes: the named ones, else the largest label + 1; None for unlabelled data."""
    if labels is None:
        return None
    if class_names is not None:
        return len(class_names)
    return int(labels.max()) + 1 if len(labels) else 0


#: modality -> ``load(path, options, config, method) -> TrainData``; ``options`` are
#: ``data_options``, ``method`` the class of the method that will train on the data (or None).
READERS: Registry = Registry("data modality")
#: modality -> ``load(path, config, method) -> TrainData`` for a `selfsup prepare` folder.
PREPARED_READERS: Registry = Registry("prepared data modality")

#: Where each modality's reader lives (imported on first use, where it registers itself).
_READER_MODULES = {
    "image": "selfsup.data.images",
    "text": "selfsup.data.documents",  # framed sequences or data/tokens.py's token stream
    "series": "selfsup.data.series",
    "image_text": "selfsup.data.pairs",  # CLIP: image paths + captions
}


def load_data(
    modality: str, path: str, config: PretrainConfig, method: Any = None
) -> TrainData:
    """Read ``path`` with the reader of ``modality``, passing the config's ``data_options``.

    ``method`` is the class of the method that will train on the data (``METHODS.get(name)``),
    or None: what a reader needs to know of the method (text: its ``framing`` and tokenizer
    needs) it reads from there, so that readers never look methods up.
    """
    if modality not in READERS and modality in _READER_MODULES:
        importlib.import_module(_READER_MODULES[modality])  # lazily: see the module docstring
    if shards.is_prepared(path):  # `selfsup prepare` output, whatever the modality
        _, manifest = shards.read_manifest(path)
        if manifest["modality"] != modality:
            raise SelfsupError(f"{path} holds {manifest['modality']} shards but this method "
                               f"reads {modality} data")
        if modality not in PREPARED_READERS:
            raise SelfsupError(f"{path}: {modality} shards cannot be read yet")
        return PREPARED_READERS.get(modality)(path, config, method)
    reader = READERS.get(modality)
    return reader(path, dict(config.data_options), config, method)
