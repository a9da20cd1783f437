"""Series readers: .npz, CSV and parquet in, (n, channels, length) float32 plus lengths out.

Layouts accepted (each problem is one :class:`SelfsupError` naming the file, row or key):

- ``.npz`` with ``X`` (or ``x``) of shape (n, length) or (n, channels, length), optional
  ``y``/``labels`` and ``lengths``; or the train/test layout of the UCR/UEA copies in
  ``../shared/data/timeseries`` (``X_train``, ``X_test``, ``y_*``, ``len_*``, ``class_labels``)
  read one split at a time (data option ``split=train|test``).
- CSV or parquet, **wide** form: one series per row, one column per step (a header row is
  optional in CSV); ``label_column`` and ``length_column`` name (or, without a header, number)
  the columns that are not steps. Rows of different lengths need ``length_column``.
- CSV or parquet, **long** form (chosen by ``id_column``): one row per (series, step) with
  ``id_column``, ``time_column`` (sorts the steps) and ``value_columns`` (the channels,
  comma-separated; default: every other column except ``label_column``).

Pooled pre-training: ``--data A.npz,B.npz,...`` or a folder of series files reads every file
(with the same data options; the UCR layout's train split by default) into one unlabelled set,
padded to the longest series; labels are never read. Files must all carry labels or all carry
none (a mix usually means a file was named by mistake). Files of different channel counts are
pooled channel by channel: every channel becomes a one-channel series and the encoder is built
channel-independent (it embeds each channel of a C-channel series on its own and concatenates),
as MOMENT does. See :func:`pool_series`.

Variable lengths: steps after a series' length may be NaN (the "NaN padding" of the UCR copies);
without explicit lengths, trailing steps where every channel is NaN are taken as padding. A NaN
inside a series is an error unless ``fill=zero|ffill|linear`` says how to fill it.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup.data import shards
from selfsup.data.base import PREPARED_READERS, READERS, DataInfo, class_count
from selfsup.errors import SelfsupError

__all__ = [
    "FILLS",
    "SeriesBatchDataset",
    "SeriesData",
    "from_arrays",
    "load_series",
]

FILLS = ("none", "zero", "ffill", "linear")
log = logging.getLogger("selfsup")
_OPTIONS = {
    "split", "fill", "id_column", "time_column", "value_columns", "label_column",
    "length_column",
}


@dataclass
class SeriesData:
    """Series (n, C, L) float32 with zeros after each length, their lengths, labels if any."""

    values: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray | None
    source: str
    class_names: list[str] | None = None
    skipped: list = field(default_factory=list)
    pooled_from: list[str] | None = None  # the files of a pooled set (pool_series)
    channel_independent: bool = False  # pooled channel by channel: build the encoder so

    modality = "series"

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def channels(self) -> int:
        return int(self.values.shape[1])

    @property
    def num_classes(self) -> int | None:
        return class_count(self.labels, self.class_names)

    # -- the TrainData protocol (selfsup/data/base.py) --

    def data_info(self) -> DataInfo:
        return DataInfo(
            channels=self.channels,
            num_classes=self.num_classes,
            num_images=len(self),
            length=int(self.values.shape[2]),
            extra={
                "min_length": int(self.lengths.min()) if len(self) else 0,
                # Where the shortest series is, so a method refusing it can name file and index.
                "shortest_index": int(self.lengths.argmin()) if len(self) else None,
                "source": self.source,
            },
        )

    def encoder_inputs(self) -> dict[str, Any]:
        """Channel count and per-channel mean/std over the valid steps (stored in the encoder)."""
        valid = np.arange(self.values.shape[2])[None, :] < self.lengths[:, None]  # (n, L)
        count = max(1, int(valid.sum()))
        mean = (self.values * valid[:, None, :]).sum(axis=(0, 2)) / count
        var = (((self.values - mean[None, :, None]) * valid[:, None, :]) ** 2).sum(axis=(0, 2))
        std = np.sqrt(var / count)
        std = np.where(std > 1e-6, std, 1.0)
        inputs = {"in_channels": self.channels, "mean": mean.tolist(), "std": std.tolist()}
        if self.channel_independent:
            inputs["channel_independent"] = True
        return inputs

    def encoder_spec(self) -> dict[str, Any]:
        """What evaluation data must share with the training data: a pooled encoder reads any
        length, a channel-independent one any channel count."""
        spec: dict[str, Any] = {"channels": self.channels, "length": int(self.values.shape[2])}
        if self.pooled_from:
            spec.pop("length")
            spec["pooled_from"] = list(self.pooled_from)
        if self.channel_independent:
            spec.pop("channels")
        return spec

    def batch_dataset(self, with_labels: bool) -> SeriesBatchDataset:
        return SeriesBatchDataset(self, with_labels=with_labels)

    def inputs(self, indices: np.ndarray) -> torch.Tensor:
        """Float (B, C, L) with NaN after each length (the encoders read lengths from it),
        trimmed to the longest of the selection."""
        rows = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[rows]
        width = int(lengths.max()) if len(rows) else 1
        x = self.values[rows, :, :width].copy()
        pad = np.arange(width)[None, :] >= lengths[:, None]  # (B, L)
        x[np.broadcast_to(pad[:, None, :], x.shape)] = np.nan
        return torch.from_numpy(x)

    def subset(self, indices: np.ndarray, source: str) -> SeriesData:
        rows = np.sort(np.asarray(indices, dtype=np.int64))
        labels = self.labels[rows] if self.labels is not None else None
        return replace(
            self, values=self.values[rows], lengths=self.lengths[rows], labels=labels,
            source=source, skipped=[],
        )

    # -- series-specific --

    def check_compatible(self, other: SeriesData) -> None:
        """Refuse evaluation data whose channels differ from the training data's."""
        if other.channels != self.channels:
            raise SelfsupError(
                f"{other.source} has {other.channels} channel(s) but {self.source} has "
                f"{self.channels}; train and test series must have the same channels"
            )

    def check_min_length(self, minimum: int, why: str) -> None:
        """A clear error for series shorter than an encoder can read (patch, kernel)."""
        short = np.flatnonzero(self.lengths < minimum)
        if len(short):
            i = int(short[0])
            raise SelfsupError(
                f"{self.source}: series {i} has {int(self.lengths[i])} steps, fewer than the "
                f"{minimum} the encoder needs ({why}); {len(short)} series are that short"
            )


class SeriesBatchDataset(Dataset):
    """Whole batches by one fancy index: {"series": (B, C, L) zeros after each length,
    "lengths": (B,), "labels"?}, L the longest length in the batch."""

    def __init__(self, data: SeriesData, with_labels: bool = False) -> None:
        if with_labels and data.labels is None:
            raise SelfsupError(f"{data.source} has no labels")
        self.data = data
        self.with_labels = with_labels
        self.values = torch.from_numpy(data.values)
        self.lengths = torch.from_numpy(data.lengths)

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(positions, dtype=torch.long)
        lengths = self.lengths[rows]
        batch = {"series": self.values[rows, :, : int(lengths.max())], "lengths": lengths}
        if self.with_labels:
            batch["labels"] = torch.from_numpy(self.data.labels[rows.numpy()])
        return batch

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}


# ---------------------------------------------------------------------------------------------
# Shared checks: lengths, NaN inside a series, fills


def _fill_series(row: np.ndarray, fill: str) -> np.ndarray:
    """Fill NaN in one (C, length) series; ffill/linear fall back to the nearest value at the
    edges, and a channel with no value at all becomes zeros."""
    out = row.copy()
    for c in range(out.shape[0]):
        v = out[c]
        bad = np.isnan(v)
        if not bad.any():
            continue
        if fill == "zero" or bad.all():
            v[bad] = 0.0
        elif fill == "linear":
            steps = np.arange(len(v))
            v[bad] = np.interp(steps[bad], steps[~bad], v[~bad])
        else:  # ffill
            idx = np.where(~bad, np.arange(len(v)), 0)
            np.maximum.accumulate(idx, out=idx)
            first = int(np.flatnonzero(~bad)[0])
            filled = v[idx]
            filled[:first] = v[first]
            out[c] = filled
    return out


def from_arrays(
    x: np.ndarray,
    lengths: np.ndarray | None,
    labels: np.ndarray | None,
    source: str,
    *,
    fill: str = "none",
    class_names: list[str] | None = None,
) -> SeriesData:
    """Check and pack arrays: x (n, L) or (n, C, L), NaN-padded after ``lengths`` (inferred
    from trailing all-NaN steps when None)."""
    if fill not in FILLS:
        raise SelfsupError(f"fill must be one of {', '.join(FILLS)}, not {fill!r}")
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise SelfsupError(f"{source}: the series are not numbers ({error})") from None
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise SelfsupError(
            f"{source}: series must be (n, length) or (n, channels, length), not {x.shape}"
        )
    n, channels, width = x.shape
    if n == 0 or channels == 0 or width == 0:
        raise SelfsupError(f"{source}: no series (shape {x.shape})")
    if np.isinf(x).any():
        i = int(np.flatnonzero(np.isinf(x).any(axis=(1, 2)))[0])
        raise SelfsupError(f"{source}: series {i} holds an infinite value")
    if lengths is None:
        present = ~np.isnan(x).all(axis=1)  # (n, L)
        lengths = np.where(present.any(axis=1), width - np.argmax(present[:, ::-1], axis=1), 0)
    lengths = np.asarray(lengths)
    if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
        raise SelfsupError(f"{source}: lengths must be {n} integers, not {lengths.shape}")
    lengths = lengths.astype(np.int64)
    bad = np.flatnonzero((lengths < 1) | (lengths > width))
    if len(bad):
        i = int(bad[0])
        raise SelfsupError(
            f"{source}: series {i} has length {int(lengths[i])}; lengths must lie in 1..{width}"
        )
    valid = np.arange(width)[None, :] < lengths[:, None]
    holes = np.isnan(x) & valid[:, None, :]
    if holes.any():
        rows = np.flatnonzero(holes.any(axis=(1, 2)))
        if fill == "none":
            i = int(rows[0])
            c, t = (int(v[0]) for v in np.nonzero(holes[i]))
            raise SelfsupError(
                f"{source}: series {i} has a missing value (NaN) at step {t}, channel {c}, "
                f"inside its length {int(lengths[i])} ({len(rows)} series have gaps); choose "
                "how to fill them with --data-option fill=zero|ffill|linear"
            )
        for i in rows:
            length = int(lengths[i])
            x[i, :, :length] = _fill_series(x[i, :, :length], fill)
    x = np.where(valid[:, None, :], x, 0.0).astype(np.float32)
    if labels is not None:
        labels, class_names = _encode_labels(np.asarray(labels), n, source, class_names)
    return SeriesData(x, lengths, labels, source, class_names)


def _encode_labels(
    y: np.ndarray, n: int, source: str, class_names: list[str] | None
) -> tuple[np.ndarray, list[str] | None]:
    if y.shape != (n,):
        raise SelfsupError(f"{source}: {y.shape} labels for {n} series")
    if np.issubdtype(y.dtype, np.integer):
        if y.min() < 0:
            raise SelfsupError(f"{source}: labels must not be negative")
        return y.astype(np.int64), class_names
    names, codes = np.unique(y.astype(str), return_inverse=True)
    return codes.astype(np.int64), [str(v) for v in names]


# ---------------------------------------------------------------------------------------------
# .npz


def _load_npz(path: Path, split: str | None, fill: str) -> SeriesData:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as error:
        raise SelfsupError(f"{path}: not a readable .npz file ({error})") from None
    names = arrays.get("class_labels")
    class_names = [str(v) for v in names] if names is not None else None
    if "X_train" in arrays or "X_test" in arrays:
        split = split or "train"
        if split not in ("train", "test"):
            raise SelfsupError(f"{path}: split must be 'train' or 'test', not {split!r}")
        if f"X_{split}" not in arrays:
            raise SelfsupError(f"{path}: no X_{split} array (keys: {', '.join(arrays)})")
        if "X_train" in arrays and "X_test" in arrays:
            shapes = [arrays[k].shape for k in ("X_train", "X_test")]
            chans = [s[1] if len(s) == 3 else 1 for s in shapes]
            if chans[0] != chans[1]:
                raise SelfsupError(
                    f"{path}: X_train has {chans[0]} channel(s) but X_test has {chans[1]}; "
                    "train and test series must have the same channels"
                )
        x = arrays[f"X_{split}"]
        y = arrays.get(f"y_{split}")
        lengths = arrays.get(f"len_{split}")
        source = f"{path} ({split})"
    else:
        if split not in (None, "train", "all"):
            raise SelfsupError(f"{path} holds one set (X), not X_train/X_test; drop split")
        key = next((k for k in ("X", "x", "series") if k in arrays), None)
        if key is None:
            raise SelfsupError(
                f"{path}: expected an array X (n, [channels,] length) or X_train/X_test; "
                f"found {', '.join(arrays) or 'nothing'}"
            )
        x = arrays[key]
        y = next((arrays[k] for k in ("y", "labels") if k in arrays), None)
        lengths = next((arrays[k] for k in ("lengths", "length") if k in arrays), None)
        source = str(path)
    return from_arrays(x, lengths, y, source, fill=fill, class_names=class_names)


# ---------------------------------------------------------------------------------------------
# CSV and parquet


def _number(cell: Any, where: str) -> float:
    if cell is None:
        return math.nan
    if isinstance(cell, int | float):
        return float(cell)
    text = str(cell).strip()
    if text == "" or text.lower() in ("nan", "na", "null"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise SelfsupError(f"{where}: {text[:40]!r} is not a number") from None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return cell.strip() == ""


def _read_table(path: Path) -> tuple[list[str] | None, list[list[Any]], int]:
    """(header or None, rows, line number of the first row) of a CSV or parquet file."""
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        except Exception as error:  # pyarrow raises several types for a bad file
            raise SelfsupError(f"{path}: not a readable parquet file ({error})") from None
        columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
        return list(table.column_names), [list(r) for r in zip(*columns, strict=True)], 0
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.reader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SelfsupError(f"{path}: cannot read the CSV ({error})") from None
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()
    if not rows:
        raise SelfsupError(f"{path}: the file is empty")
    if all(_is_number(c) for c in rows[0]):
        return None, rows, 1
    return [c.strip() for c in rows[0]], rows[1:], 2


def _column(header: list[str] | None, name: Any, path: Path, what: str) -> int:
    """Index of a column given by name (with a header) or by number (without)."""
    if header is not None and str(name) in header:
        return header.index(str(name))
    if isinstance(name, int) or str(name).isdigit():
        return int(name)
    known = ", ".join(header) if header else "no header: give column numbers"
    raise SelfsupError(f"{path}: no {what} column {name!r} ({known})")


def _row_name(path: Path, first_line: int, r: int) -> str:
    return f"{path}, line {first_line + r}" if first_line else f"{path}, row {r}"


def _load_wide(path: Path, options: dict[str, Any], fill: str) -> SeriesData:
    header, rows, first = _read_table(path)
    label = options.get("label_column")
    length = options.get("length_column")
    label_i = _column(header, label, path, "label") if label is not None else None
    length_i = _column(header, length, path, "length") if length is not None else None
    skip = {i for i in (label_i, length_i) if i is not None}
    if not rows:
        raise SelfsupError(f"{path}: no series (the file has no data rows)")
    series, labels, lengths = [], [], []
    for r, row in enumerate(rows):
        where = _row_name(path, first, r)
        cells = [c for i, c in enumerate(row) if i not in skip]
        values = [_number(c, where) for c in cells]
        while values and math.isnan(values[-1]):  # trailing empty cells: a shorter row
            values.pop()
        if not values:
            raise SelfsupError(f"{where}: the row holds no values")
        if length_i is not None:
            n = _number(row[length_i] if length_i < len(row) else None, f"{where} (length)")
            if not n >= 1 or n != int(n) or n > len(cells):
                raise SelfsupError(f"{where}: bad length {row[length_i]!r}")
            values = [_number(c, where) for c in cells[: int(n)]]
        lengths.append(len(values))
        series.append(values)
        if label_i is not None:
            labels.append(row[label_i] if label_i < len(row) else "")
    if length_i is None and len(set(lengths)) > 1:
        r = next(i for i, n in enumerate(lengths) if n != lengths[0])
        raise SelfsupError(
            f"{_row_name(path, first, r)}: the row holds {lengths[r]} values but the first row "
            f"holds {lengths[0]}; rows of different lengths need a length column "
            "(--data-option length_column=NAME), else pad every row to one length"
        )
    width = max(lengths)
    x = np.full((len(series), 1, width), np.nan, dtype=np.float32)
    for i, values in enumerate(series):
        x[i, 0, : len(values)] = values
    y = _label_array(labels) if label_i is not None else None
    return from_arrays(x, np.asarray(lengths, dtype=np.int64), y, str(path), fill=fill)


def _label_array(labels: list[Any]) -> np.ndarray:
    """Integer labels when every label is an integer, else their strings."""
    try:
        as_int = [int(str(v).strip()) for v in labels]
        return np.asarray(as_int, dtype=np.int64)
    except ValueError:
        return np.asarray([str(v) for v in labels])


def _load_long(path: Path, options: dict[str, Any], fill: str) -> SeriesData:
    header, rows, first = _read_table(path)
    if header is None:
        raise SelfsupError(f"{path}: long form needs a header row naming its columns")
    id_i = _column(header, options["id_column"], path, "id")
    if options.get("time_column") is None:
        raise SelfsupError(f"{path}: long form needs --data-option time_column=NAME")
    time_i = _column(header, options["time_column"], path, "time")
    label = options.get("label_column")
    label_i = _column(header, label, path, "label") if label is not None else None
    value_names = options.get("value_columns")
    if value_names is None:
        value_i = [i for i in range(len(header)) if i not in (id_i, time_i, label_i)]
    else:
        if isinstance(value_names, str):
            value_names = [v.strip() for v in value_names.split(",") if v.strip()]
        value_i = [_column(header, v, path, "value") for v in value_names]
    if not value_i:
        raise SelfsupError(f"{path}: no value columns")
    groups: dict[str, list[tuple[Any, list[float], int]]] = {}
    group_label: dict[str, Any] = {}
    for r, row in enumerate(rows):
        where = _row_name(path, first, r)
        if len(row) < len(header):
            raise SelfsupError(f"{where}: {len(row)} cells for {len(header)} columns")
        key = str(row[id_i])
        t = row[time_i]
        t = _number(t, f"{where} (time)") if _is_number(str(t)) else str(t)
        groups.setdefault(key, []).append((t, [_number(row[i], where) for i in value_i], r))
        if label_i is not None:
            previous = group_label.setdefault(key, row[label_i])
            if str(previous) != str(row[label_i]):
                raise SelfsupError(
                    f"{where}: series {key!r} has label {row[label_i]!r} here but {previous!r} "
                    "earlier; a series has one label"
                )
    if not groups:
        raise SelfsupError(f"{path}: no rows")
    width = max(len(g) for g in groups.values())
    x = np.full((len(groups), len(value_i), width), np.nan, dtype=np.float32)
    lengths = np.zeros(len(groups), dtype=np.int64)
    for s, (key, items) in enumerate(groups.items()):
        try:
            items.sort(key=lambda item: item[0])
        except TypeError:
            raise SelfsupError(f"{path}: series {key!r} mixes numeric and text times") from None
        for a, b in zip(items, items[1:], strict=False):
            if a[0] == b[0]:
                raise SelfsupError(
                    f"{_row_name(path, first, b[2])}: series {key!r} has two rows at time "
                    f"{b[0]!r}"
                )
        x[s, :, : len(items)] = np.asarray([v for _, v, _ in items], dtype=np.float32).T
        lengths[s] = len(items)
    y = _label_array(list(group_label.values())) if label_i is not None else None
    return from_arrays(x, lengths, y, str(path), fill=fill)


# ---------------------------------------------------------------------------------------------
# The "series" reader of the registry


_SUFFIXES = (".npz", ".csv", ".parquet", ".pq")


def series_files(path: str | Path) -> list[Path] | None:
    """The files of a pooled set: a comma-separated list or a folder of series files (sorted);
    None for one file."""
    text = str(path)
    if "," in text and not Path(text).exists():
        parts = [Path(p.strip()) for p in text.split(",") if p.strip()]
        missing = [p for p in parts if not p.exists()]
        if missing:
            raise SelfsupError(f"{missing[0]}: no such file (one of the pooled --data files)")
        return parts
    folder = Path(text)
    if folder.is_dir() and not shards.is_prepared(folder):
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in _SUFFIXES)
        if not files:
            raise SelfsupError(f"{folder}: no series files (.npz, .csv, .parquet) in the folder")
        return files
    return None


def pool_series(parts: list[SeriesData]) -> SeriesData:
    """One unlabelled set of every series in ``parts``, padded to the longest.

    Refused: a mix of labelled and unlabelled files (name the odd one). Different channel
    counts are pooled channel by channel (``channel_independent``): an encoder reads a fixed
    number of input channels, and channels of different sets share no meaning to align them by.
    """
    labelled = [p.labels is not None for p in parts]
    if any(labelled) and not all(labelled):
        odd = parts[labelled.index(not labelled[0], 1)]
        first = parts[0]
        raise SelfsupError(
            f"{odd.source} {'has' if odd.labels is not None else 'has no'} labels but "
            f"{first.source} {'has them' if first.labels is not None else 'has none'}: pooled "
            "pre-training reads every file's series and never their labels; pool files of one "
            "kind (all labelled or all unlabelled) so that none is named by mistake"
        )
    independent = len({p.channels for p in parts}) > 1 or any(p.channel_independent for p in parts)
    counts = ", ".join(f"{Path(p.source.split(' (')[0]).name} {len(p)} x {p.channels} ch"
                       for p in parts)
    if independent:
        parts = [split_channels(p) for p in parts]
    log.info("pooled %d files (%s)%s", len(parts), counts,
             ": channel counts differ, so every channel is a one-channel series and the "
             "encoder embeds channels one by one" if independent else "")
    width = max(p.values.shape[2] for p in parts)
    values = np.concatenate(
        [np.pad(p.values, ((0, 0), (0, 0), (0, width - p.values.shape[2]))) for p in parts]
    )
    sources = [p.source for p in parts]
    return SeriesData(
        values, np.concatenate([p.lengths for p in parts]), None,
        f"{len(parts)} pooled files ({', '.join(sources)})",
        pooled_from=sources, channel_independent=independent,
    )


def split_channels(data: SeriesData) -> SeriesData:
    """Every channel of every series as a one-channel series (labels dropped)."""
    n, channels, width = data.values.shape
    values = data.values.reshape(n * channels, 1, width)
    return SeriesData(values, np.repeat(data.lengths, channels), None, data.source)


def load_series(path: str | Path, options: dict[str, Any] | None = None) -> SeriesData:
    """Read a series file, or pool several (a comma-separated list, a folder: see
    :func:`pool_series`); ``options`` are the data options of the module docstring."""
    files = series_files(path)
    if files is not None:  # each file refuses having no series itself, naming the file
        return pool_series([load_series(f, options) for f in files])
    options = dict(options or {})
    if shards.is_prepared(path):  # `selfsup prepare` output: read from its shards
        if options:
            raise SelfsupError(f"{path}: prepared shards take no data options (given at prepare)")
        return load_series_shards(path)
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise SelfsupError(
            f"unknown series data option(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(_OPTIONS))}"
        )
    fill = str(options.get("fill", "none"))
    if fill not in FILLS:
        raise SelfsupError(f"fill must be one of {', '.join(FILLS)}, not {fill!r}")
    path = Path(path)
    if not path.exists():
        raise SelfsupError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        split = options.get("split")
        return _load_npz(path, None if split is None else str(split), fill)
    if suffix not in (".csv", ".parquet", ".pq"):
        raise SelfsupError(f"{path}: series are read from .npz, .csv or .parquet files")
    if options.get("split") is not None:
        raise SelfsupError(f"{path}: split applies to .npz files with X_train/X_test only")
    if options.get("id_column") is not None:
        if options.get("length_column") is not None:
            raise SelfsupError("length_column is for the wide form; long form counts its rows")
        return _load_long(path, options, fill)
    for name in ("time_column", "value_columns"):
        if options.get(name) is not None:
            raise SelfsupError(f"{name} is for the long form: give id_column too")
    return _load_wide(path, options, fill)


def _read_series_data(
    path: str, options: dict[str, Any], config: Any, method: Any = None
) -> SeriesData:
    return load_series(path, options)


def _read_prepared_series(path: str, config: Any, method: Any = None) -> SeriesData:
    return load_series_shards(path)


# ---------------------------------------------------------------------------------------------
# Prepared shards (`selfsup prepare`, data/shards.py)


def load_series_shards(path: str | Path) -> SeriesData:
    """A prepared series folder as a :class:`SeriesData` whose values stay in the shards."""
    folder, manifest = shards.read_manifest(path)
    if manifest["modality"] != "series":
        raise SelfsupError(f"{folder} holds {manifest['modality']} shards, not series")
    values, labels = shards.read_arrays(folder, manifest)
    lengths = np.load(folder / "lengths.npy")
    return ShardSeriesData(values, lengths, labels, str(folder), manifest["class_names"], [],  # type: ignore[arg-type]
                           pooled_from=manifest.get("pooled_from"),
                           channel_independent=bool(manifest.get("channel_independent")))


@dataclass
class ShardSeriesData(SeriesData):
    """SeriesData whose values are a :class:`ShardArray`; batches are read, not indexed."""

    def batch_dataset(self, with_labels: bool) -> Any:
        return ShardSeriesBatchDataset(self, with_labels)


class ShardSeriesBatchDataset(Dataset):
    """SeriesBatchDataset's batches ({"series", "lengths", "labels"?}) read from shards."""

    def __init__(self, data: Any, with_labels: bool = False) -> None:
        if with_labels and data.labels is None:
            raise SelfsupError(f"{data.source} has no labels")
        self.data, self.with_labels = data, with_labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = np.asarray(positions, dtype=np.int64)
        lengths = self.data.lengths[rows]
        values = np.asarray(self.data.values[rows])[:, :, : int(lengths.max())]
        batch = {"series": torch.from_numpy(np.ascontiguousarray(values)),
                 "lengths": torch.from_numpy(lengths)}
        if self.with_labels:
            batch["labels"] = torch.from_numpy(self.data.labels[rows])
        return batch

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}



def prepare_source(path: str, options: dict[str, Any]) -> shards.Source:
    """What `selfsup prepare` writes for series: ``options`` data_options (the reader's)."""
    data = load_series(path, options.get("data_options") or {})
    values = np.ascontiguousarray(data.values, dtype=np.float32)
    shape = tuple(int(s) for s in values.shape[1:])
    samples = shards.array_samples(lambda rows: values[rows], len(data), shape, "float32",
                                   data.labels)
    pooled = ({"pooled_from": data.pooled_from, "channel_independent": data.channel_independent}
              if data.pooled_from else {})  # how the encoder is built, kept for the shards
    return shards.Source("series", samples,
                         {"key": "npy", "shape": list(shape), "dtype": "float32"},
                         data.labels, data.class_names, pooled, data.lengths.astype(np.int64))


if "series" not in READERS:
    READERS.register("series")(_read_series_data)
    PREPARED_READERS.register("series")(_read_prepared_series)
