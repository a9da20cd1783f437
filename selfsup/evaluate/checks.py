"""Checks made before an evaluation's long work: bad input fails in seconds, not after the
baselines have trained (issue 28)."""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path
from typing import Any

from selfsup.errors import SelfsupError


def check_writable(folder: str | Path, what: str = "the results",
                   hint: str | None = None) -> None:
    """Refuse, before any long work, a folder the results cannot be written to.

    A read-only run folder used to fail with a traceback when eval.json was written, after
    the baselines had trained. A folder that does not exist yet is checked at its nearest
    existing parent (it will be created there). ``hint`` says what to do instead (default:
    copy the run and evaluate the copy).
    """
    path = Path(folder)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise SelfsupError(f"{probe} is a file, not a folder; {what} cannot be written there")
    if not os.access(probe, os.W_OK | os.X_OK):
        hint = hint or (f"copy the run to a writable place (cp -r {path} COPY) and evaluate "
                        "the copy")
        raise SelfsupError(f"{path} cannot be written ({what} go there): it is read-only; "
                           f"{hint}")


CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")


def check_csv_rows(path: str | Path, options: dict[str, Any] | None = None) -> None:
    """Refuse a CSV/TSV (labelled texts, CLIP pairs) with a row whose field count differs from
    the header's.

    The readers (csv.DictReader, in selfsup/data/) take such a row silently: an unquoted comma
    in a text moves the rest into the label column, a short row's label is empty. Blank lines
    are skipped as the readers skip them; other problems (encoding, a missing file) are the
    readers' to name.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(CSV_SUFFIXES) or not path.is_file():
        return
    delimiter = "\t" if name.endswith((".tsv", ".tsv.gz")) else ","
    opener = gzip.open if name.endswith(".gz") else open
    errors = (options or {}).get("encoding_errors") or "strict"
    try:
        with opener(path, "rt", encoding="utf-8", errors=errors, newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, None)
            for row in reader if header else ():
                if row and len(row) != len(header):
                    raise SelfsupError(
                        f"{path} line {reader.line_num}: {len(row)} "
                        f"field{'s' if len(row) != 1 else ''}, but the header has "
                        f"{len(header)} ({', '.join(header)}); quote a field that holds "
                        f"{'a tab' if delimiter != ',' else 'a comma'}, and give every row "
                        "each column"
                    )
    except (OSError, EOFError, UnicodeDecodeError, csv.Error):
        return  # read_labelled_text says what is wrong with such a file


__all__ = ["CSV_SUFFIXES", "check_csv_rows", "check_writable"]
