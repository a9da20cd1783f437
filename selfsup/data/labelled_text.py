"""Labelled text for evaluation: (text, class) pairs from one file, or texts plus a labels file.

Evaluation of text encoders (selfsup/evaluate/text.py) and the probe curve read their labelled
sets here. The forms accepted:

* ``.jsonl`` / ``.jsonl.gz`` / ``.ndjson``: one JSON object a line with a text field and a label
  field (``text_field`` / ``label_field``, default ``text`` / ``label``);
* ``.csv`` (or ``.tsv``): a header row naming the text and label columns;
* ``.parquet``: text and label columns;
* any of the above without a label field, or a ``.txt`` file of one text a line, together with
  ``labels_file``: a ``.txt`` file of one label a line, in the same order.

Labels are integers (used as class ids; they must be >= 0) or strings (class names, mapped to ids
in sorted order, or in the order of ``class_names`` when given, so that a test file shares the
training file's mapping). Every problem is a :class:`SelfsupError` naming the file and the line
or row: a missing field, an empty text, a negative or fractional label, a label count that
differs from the text count.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.errors import SelfsupError

#: Reading options (``--data-option KEY=VALUE``) this reader takes.
OPTIONS = ("text_field", "label_field", "labels_file", "encoding_errors")


@dataclass
class LabelledText:
    """Texts with an int64 class id each; ``class_names[i]`` names class i when labels were
    strings (None for integer labels)."""

    texts: list[str]
    labels: np.ndarray
    class_names: list[str] | None
    source: str
    modality: str = "text"

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise SelfsupError(
                f"{self.source}: {len(self.labels)} labels for {len(self.texts)} texts"
            )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def subset(self, indices: np.ndarray, source: str | None = None) -> LabelledText:
        """The same data restricted to ``indices`` (in that order)."""
        rows = np.asarray(indices, dtype=np.int64)
        return LabelledText(
            texts=[self.texts[i] for i in rows],
            labels=self.labels[rows],
            class_names=self.class_names,
            source=source or self.source,
        )

    def sample(self, size: int | None, seed: int, what: str = "subsample") -> LabelledText:
        """A fixed, seeded random ``size`` of the rows (sorted; all of them when size is None or
        at least the length), its source saying so."""
        if size is None or size >= len(self):
            return self
        if size < 1:
            raise SelfsupError(f"{what} size must be at least 1, not {size}")
        rows = np.sort(np.random.default_rng(seed).permutation(len(self))[:size])
        return self.subset(rows, f"{self.source} (random {size} of {len(self)}, seed {seed})")


def _open_lines(path: Path, errors: str) -> Any:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        return opener(path, "rt", encoding="utf-8", errors=errors, newline="")
    except OSError as error:
        raise SelfsupError(f"{path}: cannot read ({error})") from None


def _records_jsonl(
    path: Path, text_field: str, label_field: str | None, errors: str
) -> tuple[list[str], list[Any] | None]:
    texts: list[str] = []
    labels: list[Any] | None = [] if label_field else None
    try:
        with _open_lines(path, errors) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise SelfsupError(
                        f"{path} line {number}: not valid JSON ({error.msg})"
                    ) from None
                if not isinstance(record, dict):
                    raise SelfsupError(f"{path} line {number}: expected a JSON object")
                texts.append(_text(record, text_field, path, f"line {number}", "--text-field"))
                if labels is not None:
                    if label_field not in record:
                        raise SelfsupError(
                            f"{path} line {number}: no field {label_field!r} (keys: "
                            f"{', '.join(map(str, record))}); name the label field with "
                            "--label-field, or give a labels file"
                        )
                    labels.append(record[label_field])
    except UnicodeDecodeError as error:
        raise SelfsupError(
            f"{path}: invalid UTF-8 ({error.reason}); fix the file or pass "
            "--data-option encoding_errors=replace"
        ) from None
    except (EOFError, gzip.BadGzipFile) as error:
        raise SelfsupError(f"{path}: cannot read ({error})") from None
    return texts, labels


def _text(record: dict[str, Any], field: str, path: Path, where: str, flag: str) -> str:
    if field not in record:
        raise SelfsupError(
            f"{path} {where}: no field {field!r} (keys: {', '.join(map(str, record))}); "
            f"name the text field with {flag}"
        )
    text = record[field]
    if not isinstance(text, str):
        raise SelfsupError(f"{path} {where}: field {field!r} holds {type(text).__name__}, not text")
    return text


def _records_csv(
    path: Path, text_field: str, label_field: str | None, errors: str
) -> tuple[list[str], list[Any] | None]:
    delimiter = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","
    texts: list[str] = []
    labels: list[Any] | None = [] if label_field else None
    try:
        with _open_lines(path, errors) as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            columns = reader.fieldnames or []
            for name, flag in ((text_field, "--text-field"), (label_field, "--label-field")):
                if name is not None and name not in columns:
                    raise SelfsupError(
                        f"{path}: no column {name!r} (columns: {', '.join(columns)}); name it "
                        f"with {flag}"
                    )
            for number, row in enumerate(reader, start=2):
                texts.append(_text(row, text_field, path, f"line {number}", "--text-field"))
                if labels is not None:
                    labels.append(row[label_field])
    except UnicodeDecodeError as error:
        raise SelfsupError(f"{path}: invalid UTF-8 ({error.reason})") from None
    except csv.Error as error:
        raise SelfsupError(f"{path}: not a readable CSV file ({error})") from None
    return texts, labels


def _records_parquet(
    path: Path, text_field: str, label_field: str | None
) -> tuple[list[str], list[Any] | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise SelfsupError(f"{path}: not a readable parquet file ({error})") from None
    columns = table.column_names
    for name, flag in ((text_field, "--text-field"), (label_field, "--label-field")):
        if name is not None and name not in columns:
            raise SelfsupError(
                f"{path}: no column {name!r} (columns: {', '.join(columns)}); name it with {flag}"
            )
    texts = table.column(text_field).to_pylist()
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise SelfsupError(
                f"{path} row {row}: column {text_field!r} holds {type(text).__name__}, not text"
            )
    labels = table.column(label_field).to_pylist() if label_field else None
    return texts, labels


def _lines(path: Path, errors: str) -> list[str]:
    """One item a line; a final newline does not make an extra empty item."""
    try:
        with _open_lines(path, errors) as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise SelfsupError(f"{path}: invalid UTF-8 ({error.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")):
        return "jsonl"
    if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".txt", ".txt.gz")):
        return "txt"
    raise SelfsupError(
        f"{path}: unknown labelled-text format; expected .jsonl / .jsonl.gz (text and label "
        "fields), .csv / .tsv, .parquet, or a .txt of one text a line with a labels file"
    )


def _class_ids(
    raw: Sequence[Any], path: str, class_names: Sequence[str] | None
) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels as they are; string labels mapped to ids (sorted, or ``class_names``)."""
    if not len(raw):
        return np.zeros(0, dtype=np.int64), list(class_names) if class_names else None
    strings = [isinstance(v, str) for v in raw]
    if all(strings):
        values = [v.strip() for v in raw]
        if all(_is_int(v) for v in values) and class_names is None:
            return _class_ids([int(v) for v in values], path, None)  # CSV/txt numbers
        names = list(class_names) if class_names is not None else sorted(set(values))
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise SelfsupError(
                f"{path}: labels {', '.join(map(repr, unknown[:5]))} are not among the training "
                f"data's classes ({', '.join(names)})"
            )
        return np.asarray([index[v] for v in values], dtype=np.int64), names
    if any(strings):
        row = strings.index(not strings[0])
        raise SelfsupError(f"{path} row {row}: labels mix strings and numbers")
    ids = np.empty(len(raw), dtype=np.int64)
    for row, value in enumerate(raw):
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
            raise SelfsupError(
                f"{path} row {row}: label {value!r} is not a whole number or a class name"
            )
        if value < 0:
            raise SelfsupError(
                f"{path} row {row}: label {int(value)} is negative (unlabelled rows, such as "
                "IMDB's unsup split, cannot be used for evaluation)"
            )
        ids[row] = int(value)
    if class_names is not None and len(ids) and ids.max() >= len(class_names):
        raise SelfsupError(
            f"{path}: label {int(ids.max())} is beyond the training data's "
            f"{len(class_names)} classes"
        )
    return ids, list(class_names) if class_names is not None else None


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def read_labelled_text(
    path: str | Path,
    *,
    text_field: str = "text",
    label_field: str = "label",
    labels_file: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    encoding_errors: str = "strict",
) -> LabelledText:
    """Read ``path`` as labelled text (see the module docstring for the forms).

    ``class_names`` maps string labels to ids as the training file did (pass the training
    data's ``class_names`` when reading its test file).
    """
    path = Path(path)
    if not path.is_file():
        raise SelfsupError(f"labelled text {path} does not exist (or is not a file)")
    if encoding_errors not in ("strict", "replace"):
        raise SelfsupError(f"encoding_errors must be strict or replace, not {encoding_errors!r}")
    kind = _kind(path)
    field = None if labels_file is not None else label_field
    if kind == "txt":
        if labels_file is None:
            raise SelfsupError(
                f"{path}: a .txt file holds texts only; give its labels with "
                "--data-option labels_file=LABELS.txt (one label a line)"
            )
        texts, labels = _lines(path, encoding_errors), None
    elif kind == "jsonl":
        texts, labels = _records_jsonl(path, text_field, field, encoding_errors)
    elif kind == "csv":
        texts, labels = _records_csv(path, text_field, field, encoding_errors)
    else:
        texts, labels = _records_parquet(path, text_field, field)
    source = str(path)
    if labels_file is not None:
        labels_path = Path(labels_file)
        if not labels_path.is_file():
            raise SelfsupError(f"labels file {labels_path} does not exist")
        labels = _lines(labels_path, encoding_errors)
        if len(labels) != len(texts):
            raise SelfsupError(
                f"{labels_path} holds {len(labels)} labels but {path} holds {len(texts)} texts; "
                "they must pair up one to one, in order"
            )
        source = f"{path} (labels: {labels_path})"
    if not texts:
        raise SelfsupError(f"{path}: no labelled texts")
    assert labels is not None
    ids, names = _class_ids(labels, str(labels_file or path), class_names)
    return LabelledText(texts=texts, labels=ids, class_names=names, source=source)


def read_with_options(
    path: str | Path, options: dict[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
) -> LabelledText:
    """:func:`read_labelled_text` with reader options as ``--data-option`` gives them; options
    of other readers (a run's tokenizer settings...) are ignored."""
    given = {k: v for k, v in (options or {}).items() if k in OPTIONS and v is not None}
    return read_labelled_text(path, class_names=class_names, **given)


__all__ = ["OPTIONS", "LabelledText", "read_labelled_text", "read_with_options"]
