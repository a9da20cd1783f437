"""PyTorch views over an :class:`ImageData`: whole batches fetched with one fancy index.

``__getitems__`` lets the DataLoader ask for a batch at once, so a batch of 256 small images
costs one memmap slice instead of 256 Python calls and a collate.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup.data.images import ImageData


class ImageBatchDataset(Dataset):
    """Images (uint8, N x H x W x C) and, when asked for, labels, over a subset of indices."""

    def __init__(
        self, data: ImageData, indices: np.ndarray | None = None, with_labels: bool = False
    ) -> None:
        if with_labels and data.labels is None:
            raise ValueError("with_labels needs labelled data")
        self.data = data
        self.indices = np.arange(len(data)) if indices is None else np.asarray(indices)
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = self.indices[np.asarray(positions)]
        order = np.argsort(rows)  # memmaps read fastest in file order
        images = np.empty((len(rows), *self.data.images.shape[1:]), dtype=np.uint8)
        images[order] = self.data.images[rows[order]]
        batch = {"images": torch.from_numpy(images)}
        if self.with_labels:
            batch["labels"] = torch.from_numpy(self.data.labels[rows].astype(np.int64))
        return batch

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([position])
        return {key: value[0] for key, value in batch.items()}


def keep_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate for ``__getitems__`` datasets: the batch is already stacked."""
    return batch
