"""`selfsup index` and `selfsup search`: a FAISS index over an embeddings file, and queries to it.

The index kind follows the size (Johnson, Douze & Jégou 2019, "Billion-scale similarity search
with GPUs", the FAISS paper): up to `FLAT_MAX` vectors an exact flat index (a brute-force scan
is already fast there, and exact is never wrong); above it an inverted file (IVF-Flat: k-means
cells, search the `nprobe` nearest cells) or HNSW (Malkov & Yashunin 2018, a layered proximity
graph). An approximate index is only as good as its recall, so building one measures it: the
search parameter (IVF's nprobe, HNSW's efSearch) is tuned to reach `TARGET_RECALL` on one set
of sample queries, and recall@10 against exact search is then reported on a second, disjoint
set. The queries are rows of the data, searched with their own row excluded from both lists.

Cosine similarity is inner product on L2-normalised vectors; L2 results are reported as
Euclidean distances (FAISS computes squared ones). The index folder holds ``index.faiss``,
``rows.parquet`` (row -> id, label, label_name) and ``index.json`` (kind, parameters, recall,
build time, and the encoder the embeddings came from); ``index.json`` is written last and marks
it complete.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc  # not loaded by ``import pyarrow``: pa.compute alone may not exist
import pyarrow.parquet as pq

from selfsup import atomic
from selfsup.embed import EMBEDDING, LABEL_NAME, file_meta
from selfsup.errors import SelfsupError
from selfsup.loading import load

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise
import faiss  # noqa: E402 - after quieting its loader

FORMAT_VERSION = 1
#: `kind="auto"` builds an exact index up to this many vectors, an approximate one above.
FLAT_MAX = 100_000
#: Recall@k that the approximate index's search parameter is tuned to reach.
TARGET_RECALL = 0.95
METRICS = ("cosine", "l2")
KINDS = ("auto", "flat", "ivf", "hnsw")
HNSW_M = 32  # graph degree: the FAISS wiki's usual 16-64
HNSW_EF_CONSTRUCTION = 64


# -------------------------------------------------------------------------- embeddings ----


@dataclass
class Embeddings:
    """An embeddings file read into memory: vectors (N, D) float32 and what names each row."""

    vectors: np.ndarray
    ids: list[str]
    labels: np.ndarray | None
    meta: dict[str, Any]
    label_names: list[str | None] | None = None  # the file's label_name column, if it has one


def read_embeddings(path: str | Path, *, batch_rows: int = 65536) -> Embeddings:
    """Read a Parquet file's `embedding` column (fixed-size or equal-length float lists)."""
    path = Path(path)
    if not path.is_file():
        raise SelfsupError(f"{path}: no such file")
    try:
        handle = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as error:
        raise SelfsupError(f"{path}: not a readable Parquet file ({error})") from None
    names = handle.schema_arrow.names
    if EMBEDDING not in names:
        raise SelfsupError(
            f"{path}: no '{EMBEDDING}' column (columns: {', '.join(names) or 'none'}); write one"
            f" with `selfsup embed` or name the vector column '{EMBEDDING}'"
        )
    kind = handle.schema_arrow.field(EMBEDDING).type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind)
            or pa.types.is_large_list(kind)) or not pa.types.is_floating(kind.value_type):
        raise SelfsupError(f"{path}: column '{EMBEDDING}' must hold lists of floats, not {kind}")
    n = handle.metadata.num_rows
    if n == 0:
        raise SelfsupError(f"{path}: holds no rows")
    dim = kind.list_size if pa.types.is_fixed_size_list(kind) else None
    vectors: np.ndarray | None = None if dim is None else np.empty((n, dim), np.float32)
    row = 0
    for batch in handle.iter_batches(batch_size=batch_rows, columns=[EMBEDDING]):
        column = batch.column(0)
        if column.null_count:
            bad = row + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise SelfsupError(f"{path}: row {bad} has no embedding (null)")
        if dim is None:  # variable-length lists: every one must have the first one's length
            lengths = pc.list_value_length(column).to_numpy()
            dim = int(lengths[0])
            vectors = np.empty((n, dim), np.float32)
        if dim < 1:
            raise SelfsupError(f"{path}: row 0 has an empty embedding (0 values)")
        if not pa.types.is_fixed_size_list(kind):
            lengths = pc.list_value_length(column).to_numpy()
            if (lengths != dim).any():
                bad = int(np.flatnonzero(lengths != dim)[0])
                raise SelfsupError(
                    f"{path}: row {row + bad} has a {lengths[bad]}-dim embedding, row 0 has {dim}"
                )
        values = column.flatten().to_numpy(zero_copy_only=False)
        assert vectors is not None
        vectors[row : row + len(batch)] = values.reshape(len(batch), dim)
        row += len(batch)
    assert vectors is not None
    if not np.isfinite(vectors).all():
        bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise SelfsupError(f"{path}: row {bad} has a null, NaN or infinite embedding value")

    columns = [c for c in ("index", "id", "label", LABEL_NAME) if c in names]
    table = pq.read_table(path, columns=columns) if columns else None
    if table is not None and "id" in columns:
        ids = [str(x) for x in table.column("id").to_pylist()]
    elif table is not None and "index" in columns:
        ids = [str(x) for x in table.column("index").to_pylist()]
    else:
        ids = [str(i) for i in range(n)]
    labels = None
    if table is not None and "label" in columns:
        labels = table.column("label").to_numpy(zero_copy_only=False)
        labels = None if labels.dtype.kind not in "iu" else labels.astype(np.int64)
    label_names = None
    if table is not None and LABEL_NAME in columns:
        values = table.column(LABEL_NAME).to_pylist()
        label_names = [None if v is None else str(v) for v in values]
    meta = file_meta(path)
    if "class_names" not in meta:  # a file written elsewhere: the flat key, if it has one
        meta = {**meta, **_flat_class_names(handle)}
    meta = {**meta, "dim": dim, "rows": n}
    return Embeddings(vectors, ids, labels, meta, label_names)


def _flat_class_names(handle: pq.ParquetFile) -> dict[str, Any]:
    """``{"class_names": [...]}`` from the schema's flat ``class_names`` key, or nothing."""
    raw = (handle.schema_arrow.metadata or {}).get(b"class_names")
    try:
        names = json.loads(raw) if raw else None
    except ValueError:
        return {}
    return {"class_names": [str(x) for x in names]} if isinstance(names, list) else {}


# ------------------------------------------------------------------------------ faiss ----


def _faiss_metric(metric: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def exact_neighbours(
    vectors: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k (scores, rows) of prepared vectors (normalised already for cosine)."""
    return faiss.knn(queries, vectors, k, metric=_faiss_metric(metric))


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int, exclude: np.ndarray | None = None
                ) -> float:
    """Mean |found_k ∩ truth_k| / k, optionally dropping each query's own row from both lists."""
    hits = 0
    for i in range(len(found)):
        f, t = found[i], truth[i]
        if exclude is not None:
            f, t = f[f != exclude[i]], t[t != exclude[i]]
        f, t = f[f >= 0][:k], t[:k]
        hits += len(set(f.tolist()) & set(t.tolist()))
    return hits / (k * len(found)) if len(found) else float("nan")


def _set_search_param(index: faiss.Index, kind: str, value: int) -> None:
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(value)
    elif kind == "hnsw":
        index.hnsw.efSearch = int(value)


def build_faiss(
    vectors: np.ndarray,
    *,
    metric: str = "cosine",
    kind: str = "auto",
    k: int = 10,
    flat_max: int = FLAT_MAX,
    target_recall: float = TARGET_RECALL,
    recall_queries: int = 1000,
    seed: int = 0,
    copy: bool = True,
) -> tuple[faiss.Index, dict[str, Any]]:
    """A FAISS index over `vectors` (N, D) and a record of the choice, parameters and recall.

    With `copy=False` a cosine build normalises `vectors` in place (saves a copy of a big set).
    """
    if metric not in METRICS:
        raise SelfsupError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if kind not in KINDS:
        raise SelfsupError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
    x = np.array(vectors, dtype=np.float32, copy=copy, order="C")
    n, dim = x.shape
    if metric == "cosine":
        faiss.normalize_L2(x)
    chosen = kind if kind != "auto" else ("flat" if n <= flat_max else "ivf")
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    params: dict[str, Any] = {}
    fm = _faiss_metric(metric)
    if chosen == "flat":
        index = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
        index.add(x)
    elif chosen == "ivf":
        # About 4 sqrt(N) cells (the FAISS guidelines), with at least 39 training points each.
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, fm)
        train_rows = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
        index.train(x[train_rows])
        index.add(x)
        params = {"nlist": nlist, "train_rows": len(train_rows)}
    else:
        index = faiss.IndexHNSWFlat(dim, HNSW_M, fm)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(x)
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    build_seconds = time.perf_counter() - started

    # Two disjoint query sets from the data: tune the search parameter on one, report the other.
    m = max(1, min(recall_queries, n // 2))
    rows = rng.choice(n, size=min(n, 2 * m), replace=False)
    tune_rows, report_rows = rows[:m], rows[m:] if len(rows) > m else rows[:m]
    kk = min(k, n - 1) if n > 1 else 1
    truth_tune = exact_neighbours(x, x[tune_rows], kk + 1, metric)[1]
    truth_report = exact_neighbours(x, x[report_rows], kk + 1, metric)[1]
    tuning: list[dict[str, float]] = []
    if chosen in ("ivf", "hnsw"):
        name = "nprobe" if chosen == "ivf" else "efSearch"
        top = params["nlist"] if chosen == "ivf" else 4096
        candidates = [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
                      if v <= top and (chosen == "ivf" or v >= kk + 1)] or [top]
        value = candidates[-1]
        for v in candidates:
            _set_search_param(index, chosen, v)
            found = index.search(x[tune_rows], kk + 1)[1]
            r = recall_at_k(found, truth_tune, kk, tune_rows)
            tuning.append({name: v, "recall": r})
            if r >= target_recall:
                value = v
                break
        _set_search_param(index, chosen, value)
        params[name] = value
    found = index.search(x[report_rows], kk + 1)[1]
    recall = recall_at_k(found, truth_report, kk, report_rows)
    info = {
        "kind": chosen,
        "kind_requested": kind,
        "metric": metric,
        "count": int(n),
        "dim": int(dim),
        "params": params,
        "build_seconds": build_seconds,
        "flat_max": flat_max,
        f"recall_at_{k}": recall,
        "recall": {
            "k": kk,
            "value": recall,
            "queries": int(len(report_rows)),
            "reference": "exact brute-force search (faiss.knn) over the same vectors",
            "queries_from": "rows of the data, own row excluded; parameter tuned on a disjoint"
                            f" set of {len(tune_rows)} rows",
            "target": target_recall if chosen != "flat" else None,
            "tuning": tuning,
        },
    }
    return index, info


# ---------------------------------------------------------------------------- the verb ----


def build_index(
    parquet: str | Path,
    out_dir: str | Path,
    metric: str = "cosine",
    kind: str = "auto",
    *,
    flat_max: int = FLAT_MAX,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> dict[str, Any]:
    """Index an embeddings file into `out_dir`; returns (and writes) the index record."""
    if metric not in METRICS:
        raise SelfsupError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if kind not in KINDS:
        raise SelfsupError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SelfsupError(f"{out} is a file; --out must name a folder for the index")
    data = read_embeddings(parquet)
    index, info = build_faiss(data.vectors, metric=metric, kind=kind, flat_max=flat_max,
                              target_recall=target_recall, seed=seed, copy=False)
    source = {k: data.meta.get(k) for k in ("run", "encoder", "encoder_sha256", "modality",
                                           "data", "class_names")}
    record = {"format_version": FORMAT_VERSION, **info, "source": str(parquet), **source}

    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").unlink(missing_ok=True)  # incomplete until the record is back
    with atomic.atomic_path(out / "index.faiss") as tmp:
        faiss.write_index(index, str(tmp))
    rows = {"id": pa.array(data.ids, pa.string())}
    if data.labels is not None:
        rows["label"] = pa.array(data.labels)
    if data.label_names is not None:
        rows[LABEL_NAME] = pa.array(data.label_names, pa.string())
    with atomic.atomic_path(out / "rows.parquet") as tmp:
        pq.write_table(pa.table(rows), tmp)
    atomic.write_json(out / "index.json", record)
    return record


class SearchIndex:
    """An index folder opened for queries."""

    def __init__(self, path: Path, index: faiss.Index, info: dict[str, Any], ids: list[str],
                 labels: np.ndarray | None, label_names: list[str | None] | None = None) -> None:
        self.path, self.index, self.info, self.ids, self.labels = path, index, info, ids, labels
        self.label_names = label_names

    @classmethod
    def open(cls, path: str | Path) -> SearchIndex:
        folder = Path(path)
        record = folder / "index.json"
        if not record.is_file():
            raise SelfsupError(
                f"{folder}: not a selfsup index (no index.json); build one with"
                f" `selfsup index EMBEDDINGS.parquet --out {folder}`"
            )
        info = json.loads(record.read_text(encoding="utf-8"))
        try:
            index = faiss.read_index(str(folder / "index.faiss"))
            rows = pq.read_table(folder / "rows.parquet")
        except (RuntimeError, OSError, pa.ArrowException) as error:
            raise SelfsupError(f"{folder}: the index files cannot be read ({error})") from None
        if index.ntotal != info["count"] or rows.num_rows != info["count"]:
            raise SelfsupError(f"{folder}: index.faiss, rows.parquet and index.json disagree")
        name = {"ivf": "nprobe", "hnsw": "efSearch"}.get(info["kind"])
        if name:
            _set_search_param(index, info["kind"], info["params"][name])
        ids = [str(x) for x in rows.column("id").to_pylist()]
        labels = rows.column("label").to_numpy() if "label" in rows.column_names else None
        names = (rows.column(LABEL_NAME).to_pylist() if LABEL_NAME in rows.column_names
                 else None)
        return cls(folder, index, info, ids, labels, names)

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    @property
    def metric(self) -> str:
        return str(self.info["metric"])

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (M, k'): cosine similarity or L2 distance; rows -1 when missing."""
        q = np.array(queries, dtype=np.float32, ndmin=2, order="C")
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise SelfsupError(
                f"{self.path}: the index holds {self.dim}-dim embeddings but the query is"
                f" {q.shape[-1]}-dim; query with the encoder the index was built from"
                f" ({self.info.get('run')})"
            )
        if k < 1:
            raise SelfsupError(f"--k must be at least 1, got {k}")
        if self.metric == "cosine":
            faiss.normalize_L2(q)
        scores, rows = self.index.search(q, min(int(k), self.index.ntotal))
        if self.metric == "l2":
            scores = np.sqrt(np.maximum(scores, 0.0))
        return scores, rows

    def hits(self, queries: np.ndarray, k: int = 10) -> list[list[dict[str, Any]]]:
        """Per query, its top-k as {rank, row, id, score, label, label_name}."""
        scores, rows = self.search(queries, k)
        names = self.info.get("class_names")
        out = []
        for srow, rrow in zip(scores, rows, strict=True):
            found = []
            for rank, (score, row) in enumerate(zip(srow, rrow, strict=True), start=1):
                if row < 0:
                    continue
                hit: dict[str, Any] = {"rank": rank, "row": int(row), "id": self.ids[row],
                                       "score": float(score)}
                if self.labels is not None:
                    label = int(self.labels[row])
                    hit["label"] = label
                    if names and 0 <= label < len(names):
                        hit[LABEL_NAME] = names[label]
                if self.label_names is not None and self.label_names[row] is not None:
                    hit[LABEL_NAME] = self.label_names[row]  # the file's own name wins
                found.append(hit)
            out.append(found)
        return out


def search(
    run: str | Path,
    index_dir: str | Path,
    query: str | None = None,
    *,
    image: str | Path | Any = None,
    k: int = 10,
) -> dict[str, Any]:
    """Embed one query (text `query` or `image`) with the run's encoder and search the index."""

    if (query is None) == (image is None):
        raise SelfsupError("give exactly one query: a text QUERY or --image PATH")
    if query is not None and not query.strip():
        # An empty text still embeds (to the special tokens alone), and its neighbours mean
        # nothing; refuse it rather than return confident-looking hits.
        raise SelfsupError(f"the text query {query!r} is empty or blank; give some words")
    modality, value = ("text", query) if query is not None else ("image", image)
    embedder = load(run)
    if modality not in embedder.modalities:
        embedder.embed_query(value, modality)  # raises, naming the run's modality
    index = SearchIndex.open(index_dir)
    if embedder.dim != index.dim:
        raise SelfsupError(
            f"dimension mismatch: {index.path} holds {index.dim}-dim embeddings (from"
            f" {index.info.get('run')}, encoder {index.info.get('encoder')}) but {run}'s encoder"
            f" ({embedder.name}) gives {embedder.dim}-dim ones; search with the run the index was"
            f" built from"
        )
    built_with = index.info.get("encoder_sha256")
    if built_with and built_with != embedder.fingerprint:
        raise SelfsupError(
            f"{index.path} was built from embeddings of another encoder ({index.info.get('run')});"
            f" {run}'s weights differ, so its queries would not be comparable; re-run"
            f" `selfsup embed` and `selfsup index` with {run}"
        )
    vector = embedder.embed_query(value, modality)
    return {
        "query": str(value) if modality == "text" or isinstance(value, (str, Path)) else "<image>",
        "modality": modality,
        "run": str(run),
        "index": str(index.path),
        "metric": index.metric,
        "score": "cosine similarity" if index.metric == "cosine" else "L2 distance",
        "hits": index.hits(vector, k)[0],
    }


__all__ = ["FLAT_MAX", "Embeddings", "SearchIndex", "build_faiss", "build_index",
           "exact_neighbours", "read_embeddings", "recall_at_k", "search"]
