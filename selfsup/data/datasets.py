"""PyTorch views over an :class:`ImageData`: whole batches fetched with one fancy index.

``__getitems__`` lets the DataLoader ask for a batch at once, so a batch of 256 small images
costs one memmap slice instead of 256 Python calls and a collate. ``ResumableLoader`` shuffles
by (seed, epoch) and remembers its place, so a resumed run sees the batches it would have seen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from selfsup import distributed
from selfsup.errors import SelfsupError

log = logging.getLogger("selfsup")


class ImageBatchDataset(Dataset):
    """Images (uint8, N x H x W x C) and, when asked for, labels, over a subset of indices.

    ``data`` is an :class:`~selfsup.data.images.ImageData` (not imported: images.py builds
    this dataset, so the dependency points from images to here).
    """

    def __init__(
        self, data: Any, indices: np.ndarray | None = None, with_labels: bool = False
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


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    """The shuffle of one epoch, a function of (seed, epoch) alone, so it can be drawn again."""
    return np.random.default_rng([seed, epoch]).permutation(size)


class _EpochSampler(Sampler[int]):
    """Indices of one epoch's order from position ``start``; the loader sets both per epoch.

    With ``replicas`` processes (DDP), global batch k is ``order[k*B*R : (k+1)*B*R]`` (B the
    per-process batch size) and rank r takes its r-th block of B: the ranks' batches, gathered
    in rank order, are exactly the batch one process would draw with batch size B*R, and no
    sample is seen twice per epoch. The rank is read when iterating, once the process group
    exists (Lightning builds the loader before it launches the processes).
    """

    def __init__(self, size: int, seed: int, batch_size: int = 1, replicas: int = 1) -> None:
        self.size, self.seed = size, seed
        self.batch_size, self.replicas = batch_size, replicas
        self.epoch, self.start = 0, 0  # start: this rank's position, in samples

    def __len__(self) -> int:
        if self.replicas == 1:
            return self.size  # the whole epoch: Lightning counts the batches done itself
        return self.size // (self.batch_size * self.replicas) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.seed, self.epoch, self.size)
        if self.replicas == 1:
            return iter(order[self.start :].tolist())
        if distributed.world_size() != self.replicas:
            raise SelfsupError(
                f"the data loader was built for {self.replicas} processes but "
                f"{distributed.world_size()} are running (check --devices and --num-nodes "
                "against the launcher's process count)"
            )
        step = self.batch_size * self.replicas
        whole = order[: self.size // step * step].reshape(-1, self.replicas, self.batch_size)
        mine = whole[:, distributed.rank()].reshape(-1)
        return iter(mine[self.start :].tolist())


class ResumableLoader(DataLoader):
    """A shuffling DataLoader whose position Lightning saves and restores with a checkpoint.

    Lightning treats a loader with ``state_dict``/``load_state_dict`` as resumable: it stores the
    state in the checkpoint (``loops.fit_loop.state_dict.combined_loader``) and hands it back
    before the resumed run's first batch. The state is the epoch, its permutation seed and the
    batches handed out so far, so a run resumed mid-epoch gets the rest of that epoch in the same
    order, and every later epoch reshuffles from (seed, epoch) exactly as an uninterrupted run.
    Batches are counted as they leave the loader, so worker prefetching does not skew the count.
    """

    def __init__(
        self, dataset: Dataset, *, batch_size: int, seed: int, replicas: int = 1, **kwargs: Any
    ) -> None:
        if replicas > 1 and not kwargs.get("drop_last"):
            raise ValueError("a loader split over several processes needs drop_last=True")
        size = len(dataset)  # type: ignore[arg-type]
        self._order = _EpochSampler(size, seed, batch_size, replicas)
        super().__init__(dataset, batch_size=batch_size, sampler=self._order, **kwargs)
        self.epoch = 0  # the epoch being (or about to be) handed out
        self.batches = 0  # how many of its batches have left the loader
        self._continue = True  # the next iteration continues (epoch, batches) as they are

    def __iter__(self) -> Iterator[Any]:
        # A generator: its body runs at the first next(), so an iter() without batches (Lightning
        # creates one before each epoch starts) does not count as an epoch.
        if self._continue:
            self._continue = False
        else:
            self.epoch, self.batches = self.epoch + 1, 0
        if self.batches >= len(self):  # the saved epoch was complete: the next one starts
            self.epoch, self.batches = self.epoch + 1, 0
        self._order.epoch, self._order.start = self.epoch, self.batches * self.batch_size
        for batch in super().__iter__():
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {
            "seed": self._order.seed,
            "size": self._order.size,
            "epoch": self.epoch,
            "batches": self.batches,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batches, self._continue = int(state["epoch"]), int(state["batches"]), True
        self._order.seed = int(state["seed"])
        if int(state["size"]) != self._order.size:
            log.warning(
                "the data has %d items but the checkpoint's epoch had %d; this epoch restarts"
                " with a fresh order",
                self._order.size,
                state["size"],
            )
            self.batches = 0
