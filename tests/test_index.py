"""`selfsup index` / `selfsup search`: exact search against brute force, recorded recall, errors."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import run_cli, run_in_fresh_interpreter

import selfsup
from selfsup.data import load_digits
from selfsup.embed import embed
from selfsup.errors import SelfsupError
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.probes import knn_classify, stratified_split
from selfsup.index import SearchIndex, build_index, read_embeddings, search
from selfsup.run import RunDir, load_encoder

TINY = {
    "batch_size": 64,
    "encoder": "resnet_small",
    "encoder_options": {"width": 8},
    "progress": False,
    "monitor_size": 300,
    "log_every_steps": 2,
    "augment_options": {"flip_p": 0.0, "crop_scale": [0.5, 1.0]},
}


def write_vectors(path, vectors, labels=None, fixed=True):
    vectors = np.asarray(vectors, np.float32)
    n, dim = vectors.shape
    flat = pa.array(vectors.reshape(-1))
    column = (pa.FixedSizeListArray.from_arrays(flat, dim) if fixed
              else pa.ListArray.from_arrays(pa.array(np.arange(0, n * dim + 1, dim, np.int32)),
                                            flat))
    columns = {"id": pa.array([f"v{i}" for i in range(n)]), "embedding": column}
    if labels is not None:
        columns["label"] = pa.array(np.asarray(labels, np.int64))
    pq.write_table(pa.table(columns), path)
    return path


def clustered(n, dim, clusters, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    which = rng.integers(0, clusters, n)
    return (centres[which] + spread * rng.normal(size=(n, dim))).astype(np.float32), which


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_search_equals_brute_force(tmp_path, metric):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(700, 24)).astype(np.float32)
    queries = rng.normal(size=(50, 24)).astype(np.float32)
    path = write_vectors(tmp_path / "v.parquet", base)
    info = build_index(path, tmp_path / "index", metric=metric)
    assert info["kind"] == "flat" and info["recall_at_10"] == pytest.approx(1.0)
    index = SearchIndex.open(tmp_path / "index")
    scores, rows = index.search(queries, k=10)

    b, q = base.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        reference = q @ b.T
        expected_rows = np.argsort(-reference, axis=1)[:, :10]
    else:
        reference = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))
        expected_rows = np.argsort(reference, axis=1)[:, :10]
    np.testing.assert_array_equal(rows, expected_rows)
    expected_scores = np.take_along_axis(reference, expected_rows, axis=1)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)
    hits = index.hits(queries[:1], k=3)[0]
    assert [h["id"] for h in hits] == [f"v{r}" for r in expected_rows[0, :3]]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_records_its_choice_and_measured_recall(tmp_path, kind):
    points, _ = clustered(12300, 32, 60)
    vectors, queries = points[:12000], points[12000:]  # fresh queries from the same clusters
    path = write_vectors(tmp_path / "v.parquet", vectors)
    info = build_index(path, tmp_path / "index", kind=kind)
    saved = json.loads((tmp_path / "index" / "index.json").read_text())
    assert saved == json.loads(json.dumps(info))
    assert saved["kind"] == kind and saved["count"] == 12000 and saved["dim"] == 32
    param = "nprobe" if kind == "ivf" else "efSearch"
    assert param in saved["params"] and saved["recall"]["tuning"]
    assert saved["recall"]["queries"] == 1000 and 0.9 <= saved["recall_at_10"] <= 1.0
    # The recorded recall is what the saved index actually achieves on fresh queries.
    index = SearchIndex.open(tmp_path / "index")
    found = index.search(queries, k=10)[1]
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argsort(-(qn @ normed.T), axis=1)[:, :10]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.85


def test_auto_picks_exact_below_the_threshold_and_ivf_above(tmp_path):
    vectors, _ = clustered(3000, 8, 20)
    path = write_vectors(tmp_path / "v.parquet", vectors)
    assert build_index(path, tmp_path / "a", flat_max=5000)["kind"] == "flat"
    info = build_index(path, tmp_path / "b", flat_max=1000)
    assert info["kind"] == "ivf" and info["kind_requested"] == "auto"


def test_bad_parquet_files_are_clear_errors(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "vector": [[1.0, 2.0]]}), tmp_path / "novec.parquet")
    with pytest.raises(SelfsupError, match="no 'embedding' column.*columns: id, vector"):
        build_index(tmp_path / "novec.parquet", tmp_path / "i")
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(SelfsupError, match="not a readable Parquet file"):
        read_embeddings(tmp_path / "text.parquet")
    ragged = pa.table({"embedding": pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]])})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    with pytest.raises(SelfsupError, match="row 1 has a 3-dim embedding, row 0 has 2"):
        read_embeddings(tmp_path / "ragged.parquet")
    pq.write_table(pa.table({"embedding": pa.array([[1.0], None])}), tmp_path / "null.parquet")
    with pytest.raises(SelfsupError, match="row 1 has no embedding"):
        read_embeddings(tmp_path / "null.parquet")
    pq.write_table(pa.table({"embedding": pa.array([["a"]])}), tmp_path / "str.parquet")
    with pytest.raises(SelfsupError, match="lists of floats"):
        read_embeddings(tmp_path / "str.parquet")
    # Plain (variable-size) lists of equal length are accepted.
    write_vectors(tmp_path / "list.parquet", np.eye(4), fixed=False)
    assert read_embeddings(tmp_path / "list.parquet").vectors.shape == (4, 4)


# ------------------------------------------------------------ with a pre-trained run ----


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    """A tiny SimCLR run on 80% of digits, that part embedded and indexed; 20% held out."""
    root = tmp_path_factory.mktemp("search")
    run = selfsup.pretrain("simclr", "digits", out=str(root / "run"), steps=4, **TINY)
    data = load_digits()
    bank_rows, query_rows = stratified_split(data.labels, 0.2, 0)
    bank_rows, query_rows = np.sort(bank_rows), np.sort(query_rows)
    np.savez(root / "bank.npz", images=data.images[bank_rows], labels=data.labels[bank_rows])
    embed(run.path, str(root / "bank.npz"), root / "bank.parquet", progress=False)
    build_index(root / "bank.parquet", root / "index")
    return root, run.path, data, bank_rows, query_rows


def test_image_search_finds_same_class_neighbours_at_the_knn_rate(digits_setup):
    root, run, data, bank_rows, query_rows = digits_setup
    index = SearchIndex.open(root / "index")
    queries = data.images[query_rows]
    hits = index.hits(selfsup.load(run).embed(queries), k=10)
    truth = data.labels[query_rows]
    # kNN vote over the search results (InstDisc weighting, as the kNN probe) ...
    voted = []
    for found in hits:
        votes = np.zeros(10)
        top = found[0]["score"]
        for h in found:
            votes[h["label"]] += np.exp((h["score"] - top) / 0.07)
        voted.append(int(np.argmax(votes)))
    search_accuracy = float(np.mean(np.array(voted) == truth))
    same_class = float(np.mean([[h["label"] == t for h in f] for f, t in zip(hits, truth,
                                                                              strict=True)]))
    # ... matches the kNN probe on features extracted the evaluate way.
    encoder, _ = load_encoder(RunDir(run))
    bank_x = extract_features(encoder, data.images[bank_rows])
    query_x = extract_features(encoder, queries)
    pred = knn_classify(bank_x, data.labels[bank_rows], query_x, k=10, temperature=0.07)
    knn_accuracy = float(np.mean(pred == truth))
    assert knn_accuracy > 0.5  # far above chance (0.1) even after four steps
    assert abs(search_accuracy - knn_accuracy) <= 0.02, (search_accuracy, knn_accuracy)
    assert same_class > 0.4 and same_class <= search_accuracy + 0.1

    result = search(run, root / "index", image=queries[0], k=5)
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3, 4, 5]
    assert result["hits"][0]["id"] == hits[0][0]["id"]


def test_wrong_modality_and_mismatched_indexes_are_clear_errors(digits_setup, tmp_path):
    root, run, *_ = digits_setup
    with pytest.raises(SelfsupError, match="image run .*cannot embed a text query"):
        search(run, root / "index", "a red car")
    with pytest.raises(SelfsupError, match="exactly one query"):
        search(run, root / "index")
    write_vectors(tmp_path / "v16.parquet", np.random.default_rng(0).normal(size=(50, 16)))
    build_index(tmp_path / "v16.parquet", tmp_path / "i16")
    with pytest.raises(SelfsupError, match="dimension mismatch.*16-dim.*64-dim"):
        search(run, tmp_path / "i16", image=np.zeros((8, 8), np.uint8))
    write_vectors(tmp_path / "v64.parquet", np.random.default_rng(0).normal(size=(50, 64)))
    build_index(tmp_path / "v64.parquet", tmp_path / "i64")
    index = SearchIndex.open(tmp_path / "i64")
    with pytest.raises(SelfsupError, match="holds 64-dim embeddings but the query is 16-dim"):
        index.search(np.zeros((1, 16), np.float32))
    # An index built from another encoder's embeddings (same width) is refused.
    info = json.loads((root / "index" / "index.json").read_text())
    info["encoder_sha256"] = "0" * 64
    (tmp_path / "other").mkdir()
    for name in ("index.faiss", "rows.parquet"):
        (tmp_path / "other" / name).write_bytes((root / "index" / name).read_bytes())
    (tmp_path / "other" / "index.json").write_text(json.dumps(info))
    with pytest.raises(SelfsupError, match="another encoder"):
        search(run, tmp_path / "other", image=np.zeros((8, 8), np.uint8))
    with pytest.raises(SelfsupError, match="not a selfsup index"):
        search(run, tmp_path, image=np.zeros((8, 8), np.uint8))



def test_search_loads_no_training_machinery(digits_setup, tmp_path):
    """`selfsup search` on an existing index loads the encoder (torch), not Lightning (issue
    25): its body, selfsup/commands/search.py, reaches neither the engine nor the methods."""
    root, run, data, *_ = digits_setup
    from PIL import Image

    Image.fromarray(data.images[3, :, :, 0]).save(tmp_path / "q.png")
    [report] = run_in_fresh_interpreter(["search", str(run), "--index", str(root / "index"),
                                         "--image", str(tmp_path / "q.png"), "--json"])
    assert report["code"] == 0
    assert "torch" in report["loaded"] and "lightning" not in report["loaded"]
    assert "pytorch_lightning" not in report["loaded"]


def test_cli_index_and_search(digits_setup, monkeypatch, capsys, tmp_path):
    root, run, data, *_ = digits_setup
    from PIL import Image

    Image.fromarray(data.images[3, :, :, 0]).save(tmp_path / "q.png")
    code, out, err = run_cli(monkeypatch, capsys, "index", str(root / "bank.parquet"), "--out",
                             str(tmp_path / "idx"), "--metric", "l2")
    assert code == 0, err
    assert "flat index (l2)" in out and "recall@10 1.000" in out
    code, out, err = run_cli(monkeypatch, capsys, "search", str(run), "--index",
                             str(tmp_path / "idx"), "--image", str(tmp_path / "q.png"),
                             "--k", "3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["metric"] == "l2" and len(result["hits"]) == 3
    assert result["hits"][0]["score"] <= result["hits"][2]["score"]  # distances grow
    code, _, err = run_cli(monkeypatch, capsys, "search", str(run), "a red car", "--index",
                           str(tmp_path / "idx"))
    assert code == 2 and "image run" in err and "Traceback" not in err
    code, _, err = run_cli(monkeypatch, capsys, "index", str(tmp_path / "q.png"))
    assert code == 2 and "not a readable Parquet file" in err
