"""Text readers: a path becomes a stream of documents, read piece by piece.

Five sources, picked by :func:`iter_documents` from the path:

* a ``.txt`` / ``.md`` file: one document;
* a folder: every ``.txt`` / ``.md`` file under it (sorted, hidden ones skipped), a document each;
* ``.jsonl`` / ``.jsonl.gz``: one JSON object a line, the document in ``text_field``;
* ``.parquet``: one row a document, the text in ``text_column`` (read a row group at a time);
* a ``selfsup prepare`` output (a folder with ``manifest.json``, or that file): the documents of
  the corpus it was prepared from, in the same order, streamed one document at a time (the
  text options were applied when it was prepared, so given here they are refused).

A document arrives as one or more pieces (:class:`Piece`) so that a file larger than memory
streams: big text files are cut at line ends into pieces of about ``PIECE_CHARS`` characters.
Invalid UTF-8 is a :class:`SelfsupError` naming the file and the byte offset (or the jsonl
line), unless ``encoding_errors="replace"``. The masked-LM and CLIP readers reuse this module.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from selfsup.data import shards
from selfsup.errors import SelfsupError

#: File extensions (lower case) read as plain text, alone or inside a folder.
TEXT_EXTENSIONS = (".txt", ".md")
#: Characters per piece a large plain-text file is cut into (at a line end where there is one).
PIECE_CHARS = 1 << 22
_READ_BYTES = 1 << 22
ENCODING_ERRORS = ("strict", "replace")


@dataclass(frozen=True)
class TextSource:
    """How to read a corpus: the path and the options that say where its text is."""

    path: str
    text_field: str = "text"  # .jsonl: the key holding the document
    text_column: str = "text"  # .parquet: the column holding the document
    encoding_errors: str = "strict"  # "strict": invalid UTF-8 is an error; "replace": U+FFFD

    def __post_init__(self) -> None:
        if self.encoding_errors not in ENCODING_ERRORS:
            raise SelfsupError(
                f"encoding_errors must be one of {', '.join(ENCODING_ERRORS)}, "
                f"not {self.encoding_errors!r}"
            )


#: TextSource's reading options: where a corpus's text is and how its bytes decode.
READING_OPTIONS = ("text_field", "text_column", "encoding_errors")


@dataclass(frozen=True)
class Piece:
    """Part of a document; ``last`` marks the document's final piece."""

    text: str
    last: bool


def kind_of(path: str | Path) -> str:
    """"txt", "folder", "jsonl", "parquet" or "shards" (a prepared folder), from the path; a
    clear error for anything else."""
    path = Path(path)
    if not path.exists():
        raise SelfsupError(f"text data {path} does not exist")
    if shards.is_prepared(path):
        return "shards"
    if path.is_dir():
        return "folder"
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(TEXT_EXTENSIONS):
        return "txt"
    raise SelfsupError(
        f"{path}: unknown text format; expected a .txt or .md file, a folder of them, "
        ".jsonl / .jsonl.gz (--text-field) or .parquet (--text-column)"
    )


def list_text_files(root: str | Path) -> list[Path]:
    """Every .txt/.md file under ``root``, sorted by relative path, hidden entries skipped."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(TEXT_EXTENSIONS):
                found.append(Path(folder) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def source_files(source: TextSource) -> list[Path]:
    """The files a corpus reads, for cache keys and messages."""
    kind = kind_of(source.path)
    if kind == "folder":
        return list_text_files(source.path)
    if kind == "shards":
        folder, manifest = shards.read_manifest(source.path)
        return [folder / "manifest.json", *(folder / s["name"] for s in manifest["shards"])]
    return [Path(source.path)]


def fingerprint(source: TextSource, extra: dict[str, Any] | None = None) -> str:
    """A key that changes when any file of the corpus or any reading option changes.

    A prepared folder is keyed by its manifest's bytes (which name every shard and its size, and
    an id unique to each prepare), not by paths and times: a copy or a move of the folder keeps its
    token caches, and preparing it again makes new ones.
    """
    digest = hashlib.sha256()
    if kind_of(source.path) == "shards":
        manifest = shards.manifest_path(source.path)
        assert manifest is not None
        digest.update(b"prepared\0" + hashlib.sha256(manifest.read_bytes()).digest())
    else:
        for path in source_files(source):
            stat = path.stat()
            digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    options = {**{name: getattr(source, name) for name in READING_OPTIONS}, **(extra or {})}
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def iter_documents(source: TextSource) -> Iterator[Piece]:
    """Every document of the corpus, as pieces, in a fixed order."""
    kind = kind_of(source.path)
    if kind == "txt":
        yield from _text_file(Path(source.path), source.encoding_errors)
    elif kind == "folder":
        files = list_text_files(source.path)
        if not files:
            raise SelfsupError(f"{source.path}: no .txt or .md files in this folder")
        for path in files:
            yield from _text_file(path, source.encoding_errors)
    elif kind == "jsonl":
        yield from _jsonl(Path(source.path), source.text_field, source.encoding_errors)
    elif kind == "shards":
        _refuse_options_on_shards(source)
        yield from TextShards(source.path).pieces()
    else:
        yield from _parquet(Path(source.path), source.text_column)


def _refuse_options_on_shards(source: TextSource) -> None:
    """A prepared folder holds documents already read with its prepare's options; options given
    now cannot apply, so say so rather than ignore them."""
    given = [f"{name}={getattr(source, name)}" for name in READING_OPTIONS
             if getattr(source, name) != getattr(TextSource, name)]
    if given:
        raise SelfsupError(
            f"{source.path} is a prepared folder: its documents were read when it was prepared, "
            f"so {', '.join(given)} cannot apply now; pass the option(s) to `selfsup prepare` "
            "(--data-option) and prepare again, or drop them here"
        )


def read_text(source: TextSource, separator: str = "\n") -> str:
    """The whole corpus as one string (small corpora, tests); documents joined by ``separator``."""
    parts: list[str] = []
    for piece in iter_documents(source):
        parts.append(piece.text)
        if piece.last:
            parts.append(separator)
    return "".join(parts[:-1])


def _bad_utf8(path: Path, offset: int, error: UnicodeDecodeError, where: str = "") -> SelfsupError:
    byte = error.object[error.start : error.start + 1].hex()
    return SelfsupError(
        f"{path}{where}: invalid UTF-8 at byte offset {offset} (byte 0x{byte}: {error.reason}); "
        "fix the file or pass --encoding-errors replace"
    )


def pieces_of(texts: Iterable[str]) -> Iterator[Piece]:
    """One document arriving as consecutive strings, re-cut into pieces of at most
    ``PIECE_CHARS`` characters ending at a line end where one exists.

    Where the cuts fall depends on the text only, not on how it arrived, so a document read
    back from prepared shards comes in the same pieces as from its original file.
    """
    pending = ""
    for text in texts:
        pending += text
        while len(pending) >= PIECE_CHARS:
            cut = pending.rfind("\n", 0, PIECE_CHARS) + 1 or PIECE_CHARS
            yield Piece(pending[:cut], last=False)
            pending = pending[cut:]
    yield Piece(pending, last=True)


def _text_file(path: Path, errors: str) -> Iterator[Piece]:
    """One file, decoded incrementally; pieces end at a line end where one exists."""
    try:
        handle = open(path, "rb")  # noqa: SIM115  (closed in _decoded; errors named here)
    except OSError as error:
        raise SelfsupError(f"{path}: cannot read ({error.strerror})") from None
    yield from pieces_of(_decoded(path, handle, errors))


def _decoded(path: Path, handle: BinaryIO, errors: str) -> Iterator[str]:
    """The file's text in parts of about ``_READ_BYTES``, without a leading byte-order mark."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    offset = 0  # bytes of the file decoded before the current chunk
    first = True
    with handle:
        while True:
            chunk = handle.read(_READ_BYTES)
            final = not chunk
            try:
                text = decoder.decode(chunk, final=final)
            except UnicodeDecodeError as error:
                # The decoder's buffered bytes (an incomplete sequence from the last chunk) come
                # first in ``error.object``.
                buffered = len(error.object) - len(chunk)
                raise _bad_utf8(path, offset - buffered + error.start, error) from None
            offset += len(chunk)
            if first and text.startswith("\ufeff"):
                text = text[1:]  # a byte-order mark is not text
            first = text == "" and first
            yield text
            if final:
                break


def _jsonl(path: Path, field: str, errors: str) -> Iterator[Piece]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    offset = 0
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                where = f" line {number}"
                try:
                    line = raw.decode("utf-8", errors=errors)
                except UnicodeDecodeError as error:
                    raise _bad_utf8(path, offset + error.start, error, where) from None
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise SelfsupError(f"{path}{where}: not valid JSON ({error.msg})") from None
                if not isinstance(record, dict) or field not in record:
                    keys = ", ".join(map(str, record)) if isinstance(record, dict) else "none"
                    raise SelfsupError(
                        f"{path}{where}: no field {field!r} (keys: {keys}); choose the field "
                        "holding the text with --text-field"
                    )
                text = record[field]
                if not isinstance(text, str):
                    raise SelfsupError(
                        f"{path}{where}: field {field!r} holds {type(text).__name__}, not text"
                    )
                yield Piece(text, last=True)
    except (OSError, EOFError) as error:  # a truncated or corrupt .gz
        raise SelfsupError(f"{path}: cannot read ({error})") from None


def _parquet(path: Path, column: str) -> Iterator[Piece]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as error:
        raise SelfsupError(f"{path}: not a readable parquet file ({error})") from None
    names = handle.schema_arrow.names
    if column not in names:
        raise SelfsupError(
            f"{path}: no column {column!r} (columns: {', '.join(names)}); choose the column "
            "holding the text with --text-column"
        )
    kind = handle.schema_arrow.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise SelfsupError(f"{path}: column {column!r} holds {kind}, not text")
    row = 0
    for group in range(handle.num_row_groups):
        values = handle.read_row_group(group, columns=[column]).column(0).to_pylist()
        for value in values:
            if value is None:
                raise SelfsupError(f"{path} row {row}: column {column!r} is empty (null)")
            yield Piece(value, last=True)
            row += 1


# ---------------------------------------------------------------------------------------------
# Prepared corpora (`selfsup prepare`, data/shards.py): read back and written


class TextShards(shards.ShardFiles):
    """A prepared text corpus: document i is ``lengths[i]`` UTF-8 bytes at ``offsets[i]``.

    :meth:`document` reads one document with one pread; :meth:`pieces` streams them all in
    order the way :func:`iter_documents` yields documents, holding at most about ``_READ_BYTES`` of
    one document at a time (offsets and lengths stay memory-mapped), whatever the corpus size.
    """

    def __init__(self, path: str | Path) -> None:
        folder, manifest = shards.read_manifest(path)
        if manifest["modality"] != "text":
            raise SelfsupError(
                f"{folder} holds {manifest['modality']} shards, not text; text methods read a "
                "text corpus (prepare one with: selfsup prepare CORPUS --out FOLDER)"
            )
        offsets = np.load(folder / "offsets.npy", mmap_mode="r")
        self.lengths = np.load(folder / "lengths.npy", mmap_mode="r")
        if not len(offsets) == len(self.lengths) == manifest["count"]:
            raise SelfsupError(f"{folder}: offsets.npy / lengths.npy do not match the manifest's "
                               f"{manifest['count']} documents; run selfsup prepare again")
        super().__init__(folder, manifest["shards"], offsets)
        self.manifest = manifest

    def document(self, index: int) -> str:
        """Document ``index`` (negative counts from the end), whole."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"document {index} out of range for {n} documents")
        index %= n
        shard = int(self.shard_of(np.array([index]))[0])
        size = int(self.lengths[index])
        data = os.pread(self._fd(shard), size, int(self.offsets[index]))
        if len(data) != size:
            raise self._truncated(self.folder / self.names[shard], index)
        return self._decode(data, index)

    def _decode(self, data: bytes, index: int, decoder: Any = None, final: bool = True) -> str:
        """``data`` as text (through ``decoder`` when a document comes in parts)."""
        try:
            return data.decode("utf-8") if decoder is None else decoder.decode(data, final=final)
        except UnicodeDecodeError:
            raise SelfsupError(f"{self.folder}: document {index} is not valid UTF-8 (a damaged "
                               "shard); run selfsup prepare again") from None

    @staticmethod
    def _truncated(where: Any, index: int) -> SelfsupError:
        return SelfsupError(f"{where}: truncated at document {index}; run selfsup prepare again")

    def pieces(self) -> Iterator[Any]:
        """Every document in order as :class:`selfsup.data.text.Piece` s, cut as the text
        readers cut them; each shard is read front to back through one buffered file."""
        for shard, name in enumerate(self.names):
            first = int(self.starts[shard])
            last = int(self.starts[shard + 1]) if shard + 1 < len(self.names) else len(self)
            try:
                handle = open(self.folder / name, "rb", buffering=1 << 20)  # noqa: SIM115
            except OSError as e:
                raise SelfsupError(f"{self.folder / name}: cannot open ({e})") from None
            with handle:
                for index in range(first, last):
                    handle.seek(int(self.offsets[index]))
                    yield from pieces_of(self._parts(handle, int(self.lengths[index]), index,
                                                     _READ_BYTES))

    def _parts(self, handle: Any, size: int, index: int, chunk: int) -> Iterator[str]:
        """One document's text, decoded ``chunk`` bytes at a time."""
        if size <= chunk:  # nearly every document: one read, one decode
            data = handle.read(size)
            if len(data) != size:
                raise self._truncated(handle.name, index)
            yield self._decode(data, index)
            return
        decoder = codecs.getincrementaldecoder("utf-8")()
        left = size
        while left:
            data = handle.read(min(chunk, left))
            if not data:
                raise self._truncated(handle.name, index)
            left -= len(data)
            yield self._decode(data, index, decoder, final=not left)



#: A document larger than this goes through an unnamed scratch file, not memory, while written.
_SPILL_BYTES = 64 * 2**20


def prepare_source(path: str, options: dict[str, Any]) -> shards.Source:
    """What `selfsup prepare` writes for a text corpus: each document, read as
    :func:`iter_documents` reads it with ``options`` (the reading options), one sample."""
    unknown = sorted(set(options) - set(READING_OPTIONS))
    if unknown:
        raise SelfsupError(
            f"unknown --data-option {', '.join(unknown)} for a text corpus; it takes "
            f"{', '.join(READING_OPTIONS)}"
        )
    text = TextSource(str(path), **{key: str(value) for key, value in options.items()})
    extra: dict[str, Any] = {
        "text_options": {key: getattr(text, key) for key in READING_OPTIONS},
        "characters": 0,  # totals over every sample (repeats included), counted while written
        "bytes": 0,
    }
    # "shape" [] and "dtype": a document is one variable-length string, stored as UTF-8
    return shards.Source("text", lambda scratch: _text_samples(text, extra, scratch),
                         {"key": "txt", "shape": [], "dtype": "utf-8"}, None, None, extra,
                         byte_lengths=True)


def _text_samples(text: Any, totals: dict[str, Any], scratch: Path) -> Iterator[shards.Sample]:
    """Each document of the corpus, as data/text.py reads it, as one UTF-8 ``.txt`` sample.

    A document arrives in pieces (a large file streams); they are joined in memory up to
    ``_SPILL_BYTES`` and beyond that in an unnamed file in ``scratch``, since a tar member's
    size is written before its data.
    """
    parts: list[bytes] = []
    size = characters = documents = 0
    spill: BinaryIO | None = None
    try:
        for piece in iter_documents(text):
            data = _utf8(piece.text, text, documents)
            characters += len(piece.text)
            if spill is None and size + len(data) > _SPILL_BYTES:
                spill = tempfile.TemporaryFile(dir=scratch)  # noqa: SIM115  (closed below)
                spill.writelines(parts)
                parts = []
            if spill is None:
                parts.append(data)
            else:
                spill.write(data)
            size += len(data)
            if not piece.last:
                continue
            if spill is None:
                yield shards.Sample("txt", b"".join(parts), size)
            else:
                spill.seek(0)
                yield shards.Sample("txt", spill, size)
                spill.close()
                spill = None
            totals["bytes"] += size
            parts, size, documents = [], 0, documents + 1
    finally:
        if spill is not None:
            spill.close()
    if not characters:
        raise SelfsupError(f"{text.path}: the corpus is empty (no text); nothing to prepare")
    totals["characters"] += characters


def _utf8(value: str, text: Any, document: int) -> bytes:
    """``value`` as UTF-8; a lone surrogate (from a JSON ``\\ud800`` escape) cannot be stored."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as error:
        if text.encoding_errors == "replace":
            return value.encode("utf-8", errors="replace")
        raise SelfsupError(
            f"{text.path}: document {document} holds {value[error.start]!r}, a lone surrogate "
            "that UTF-8 cannot store; fix the corpus or pass --data-option "
            "encoding_errors=replace"
        ) from None
