"""Embeddings out: `selfsup embed` throughput and memory, FAISS index build and search, recall.

1. Embedding. CIFAR-10 test (10,000 JPEGs) and train (50,000) through an image run's encoder,
   each in a fresh subprocess (`selfsup.embed.embed`, batch 256, precision auto), after the
   folders are
   decoded into the reader's cache (decoding is timed separately). Recorded: images/s and peak
   RSS (VmHWM); then the train files linked 5 times (250,000 rows). Streaming holds if
   the 5x larger input does not raise the peak.
2. CIFAR-10 search. An index over the train embeddings (auto: exact, 50k < 100k); 1,000 test
   images as queries: latency p50/p99 of the index search alone (one query at a time), and of
   the whole query (JPEG file -> encoder -> search); the share of same-class images among the
   top 10 and the kNN accuracy from those hits, beside the kNN probe on the same vectors.
3. 1 million synthetic vectors (128-d, a mixture of 1,000 Gaussian clusters of random widths,
   a stand-in for embeddings with class structure): IVF build time (k-means on a sample + add),
   the nprobe chosen for recall >= 0.95 on tuning queries, recall@10 against exact brute force on
   1,000 fresh queries from the same distribution, and latency p50/p99 of IVF vs exact search.

Writes benchmarks/results/embed_search.{json,md}.

    .venv/bin/python benchmarks/embed_search.py                 # pre-trains 5 min; ~20 min
    .venv/bin/python benchmarks/embed_search.py --run runs/X    # an existing image run
    .venv/bin/python benchmarks/embed_search.py --quick         # ~3 min smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CIFAR = REPO.parent / "shared" / "data" / "cifar10"
RESULTS = REPO / "benchmarks" / "results"
#: Peak-RSS differences below this are allocator noise (repeated runs of one input vary so).
STREAMING_NOISE_BYTES = 32 * 2**20


# ------------------------------------------------------------------------ child process ----


def child_embed(run: str, data: str, out: str, batch_size: int) -> None:
    """Run in a fresh process: embed, then report the figures and the peak RSS as JSON."""
    import psutil

    import selfsup
    from selfsup.embed import embed

    selfsup.load(run)  # imports and the model, so 'ready' is the floor the data adds to
    ready = psutil.Process().memory_info().rss
    started = time.perf_counter()
    result = embed(run, data, out, batch_size=batch_size, progress=False)
    wall = time.perf_counter() - started
    peak = peak_rss_bytes()
    print(json.dumps({**result, "wall_seconds": wall, "rss_ready_bytes": ready,
                      "peak_rss_bytes": peak}))


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM, which belongs to the process image since
    exec. (ru_maxrss can carry over the parent's peak through fork/vfork + exec, so a parent
    that decoded a large folder would inflate every child's figure.)"""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def embed_in_subprocess(run: str, data: str, out: Path, batch_size: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child-embed", run, data, str(out), str(batch_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"embedding {data} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ helpers ----


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "queries": len(ms)}


def subset_folder(src: Path, dst: Path, per_class: int) -> Path:
    """A class-per-folder tree of symlinks to the first `per_class` files of each class."""
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir())[:per_class]:
            link = dst / cls.name / f.name
            if not link.exists():
                link.symlink_to(f)
    return dst


def repeat_folder(src: Path, dst: Path, times: int) -> Path:
    """`src`'s class folders with every file linked `times` times (r0_NAME, r1_NAME, ...).

    File links, not folder links: the reader reads a folder linked twice only once.
    """
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir()):
            for r in range(times):
                link = dst / cls.name / f"r{r}_{f.name}"
                if not link.exists():
                    link.symlink_to(f.resolve())
    return dst


def get_run(args: argparse.Namespace, train: Path) -> str:
    import selfsup
    from selfsup.run import RunDir

    if args.run:
        return args.run
    out = Path(args.out)
    if RunDir(out).encoder_weights.is_file():
        print(f"reusing the run in {out}", flush=True)
        return str(out)
    budget = ({"steps": 10, "batch_size": 64} if args.quick
              else {"minutes": args.pretrain_minutes})
    print(f"pre-training simclr on {train} ({budget}) into {out}", flush=True)
    selfsup.pretrain("simclr", str(train), out=str(out), progress=False, **budget)
    return str(out)


# ------------------------------------------------------------------------------ stages ----


def bench_cifar(args: argparse.Namespace, run: str, test: Path, train: Path,
                work: Path) -> dict[str, Any]:
    import selfsup
    from selfsup.data import load_images
    from selfsup.evaluate.probes import knn_classify
    from selfsup.index import SearchIndex, build_index, read_embeddings

    embedder = selfsup.load(run)
    train_x5 = repeat_folder(train, work / "train_x5", 5)
    tiers = (("test", test), ("train", train), ("train_x5", train_x5))
    decode = {}
    for name, folder in tiers:
        started = time.perf_counter()
        load_images(folder, image_size=embedder.image_size, progress=False)
        decode[name] = time.perf_counter() - started
    print(f"decode/cache seconds: {decode}", flush=True)

    embedded = {}
    for name, folder in tiers:
        # Repeated in fresh processes: the peak varies by some MiB from run to run (allocator
        # timing), so each tier keeps every peak and is judged by its lowest.
        runs = [embed_in_subprocess(run, str(folder), work / f"{name}.parquet", args.batch_size)
                for _ in range(args.repeats)]
        result = dict(runs[0])
        peaks = [r["peak_rss_bytes"] for r in runs]
        result.update(peak_rss_bytes=min(peaks), peak_rss_bytes_runs=peaks,
                      rows_per_s=max(r["rows_per_s"] for r in runs),
                      wall_seconds=min(r["wall_seconds"] for r in runs))
        embedded[name] = result
        print(f"embed {name}: {result['rows']} rows, {result['rows_per_s']:.0f} images/s,"
              f" peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
    # The verdict is the step from train to 5x train: both are past the allocator's warm-up
    # (the first parts of any run raise the peak by some tens of MiB whatever the data size),
    # so what is left is what the extra rows cost. test -> train is reported beside it.
    small, big = embedded["train"], embedded["train_x5"]
    growth = big["peak_rss_bytes"] - small["peak_rss_bytes"]
    growth_test_train = embedded["train"]["peak_rss_bytes"] - embedded["test"]["peak_rss_bytes"]
    # Holding the images would cost at least their decoded bytes; streaming costs per row only
    # the small metadata (id, label) and allocator noise.
    pixels = embedder.image_size**2 * embedder.channels
    extra_pixel_bytes = (big["rows"] - small["rows"]) * pixels

    index_info = build_index(work / "train.parquet", work / "index")
    index = SearchIndex.open(work / "index")
    queries = read_embeddings(work / "test.parquet")
    bank = read_embeddings(work / "train.parquet")
    m = min(args.queries, len(queries.ids))
    rows = np.random.default_rng(0).choice(len(queries.ids), size=m, replace=False)
    index.search(queries.vectors[:1], k=10)  # warm-up
    latency = []
    for r in rows:
        started = time.perf_counter()
        index.search(queries.vectors[r : r + 1], k=10)
        latency.append(time.perf_counter() - started)

    end_to_end = []
    paths = [test / i for i in np.asarray(queries.ids)[rows]]
    embedder.embed(str(paths[0]))  # warm-up
    for p in paths:
        started = time.perf_counter()
        index.search(embedder.embed(str(p)), k=10)
        end_to_end.append(time.perf_counter() - started)

    hits = index.hits(queries.vectors[rows], k=10)
    truth = queries.labels[rows]
    same = float(np.mean([[h["label"] == t for h in f] for f, t in zip(hits, truth,
                                                                        strict=True)]))
    top1 = float(np.mean([f[0]["label"] == t for f, t in zip(hits, truth, strict=True)]))
    voted = []
    for found in hits:
        votes = np.zeros(10)
        for h in found:
            votes[h["label"]] += np.exp((h["score"] - found[0]["score"]) / 0.07)
        voted.append(int(np.argmax(votes)))
    knn_search = float(np.mean(np.array(voted) == truth))
    knn_probe = float(np.mean(knn_classify(bank.vectors, bank.labels, queries.vectors[rows],
                                           k=10, temperature=0.07) == truth))
    return {
        "run": run,
        "encoder": embedder.name,
        "dim": embedder.dim,
        "decode_seconds": decode,
        "embed": embedded,
        "peak_rss_growth_5x_bytes": growth,
        "peak_rss_growth_test_to_train_bytes": growth_test_train,
        "extra_decoded_pixel_bytes": extra_pixel_bytes,
        "growth_per_extra_image_bytes": growth / max(1, big["rows"] - small["rows"]),
        # Holds when the peak moves by less than the allocator noise seen between repeated
        # runs of one input (about 30 MiB), i.e. < 5% of the extra pixels at full size. None:
        # too few extra bytes to tell from that noise (quick runs).
        "streaming_ok": growth < STREAMING_NOISE_BYTES
        if extra_pixel_bytes > 4 * STREAMING_NOISE_BYTES else None,
        "index": index_info,
        "search_latency": percentiles(latency),
        "query_latency_end_to_end": percentiles(end_to_end),
        "neighbours": {"queries": m, "same_class_at_10": same, "same_class_at_1": top1,
                       "knn_accuracy_from_search": knn_search,
                       "knn_accuracy_probe": knn_probe, "k": 10, "temperature": 0.07},
    }


def synthetic(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Clustered vectors: random centres, per-cluster widths 0.2-0.6 (generated in chunks)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    widths = rng.uniform(0.2, 0.6, clusters).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, 100_000):
        b = min(a + 100_000, n)
        which = rng.integers(0, clusters, b - a)
        noise = rng.standard_normal((b - a, dim), dtype=np.float32)
        out[a:b] = centres[which] + widths[which, None] * noise
    return out


def bench_synthetic(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from selfsup.index import build_faiss, exact_neighbours, recall_at_k

    n, dim, q = args.vectors, 128, args.queries
    started = time.perf_counter()
    points = synthetic(n + q, dim, 1000, seed=0)
    base, queries = points[:n], np.ascontiguousarray(points[n:])
    del points
    generate = time.perf_counter() - started
    faiss.normalize_L2(queries)
    out: dict[str, Any] = {"count": n, "dim": dim, "clusters": 1000, "metric": "cosine",
                           "generate_seconds": generate, "queries": q}
    kinds = ["ivf"] + (["hnsw"] if args.hnsw else [])
    normalised = False
    for kind in kinds:
        print(f"building {kind} over {n} x {dim} ...", flush=True)
        started = time.perf_counter()
        index, info = build_faiss(base, metric="cosine", kind=kind, copy=False)
        total = time.perf_counter() - started
        normalised = True  # build_faiss normalised `base` in place (copy=False)
        truth = exact_neighbours(base, queries, 10, "cosine")[1]
        found = index.search(queries, 10)[1]
        recall = recall_at_k(found, truth, 10)
        lat = []
        for i in range(q):
            t = time.perf_counter()
            index.search(queries[i : i + 1], 10)
            lat.append(time.perf_counter() - t)
        out[kind] = {**info, "build_and_tune_seconds": total,
                     "recall_at_10_fresh_queries": recall, "search_latency": percentiles(lat)}
        print(f"{kind}: build {info['build_seconds']:.1f} s, {info['params']},"
              f" recall@10 {recall:.3f}", flush=True)
        del index
    assert normalised
    exact = faiss.IndexFlatIP(dim)
    exact.add(base)
    lat = []
    for i in range(min(q, 200)):
        t = time.perf_counter()
        exact.search(queries[i : i + 1], 10)
        lat.append(time.perf_counter() - t)
    out["exact_search_latency"] = percentiles(lat)
    return out


# ------------------------------------------------------------------------------ report ----


def mib(b: float) -> str:
    return f"{b / 2**20:.0f} MiB"


def markdown(r: dict[str, Any]) -> str:
    c, s = r["cifar"], r["synthetic"]
    ix, nb = c["index"], c["neighbours"]
    verdict = {True: "streaming holds", False: "GROWS: not streaming",
               None: "too small a step to judge"}[c["streaming_ok"]]
    lines = [
        "# Embeddings out: embed, index, search",
        "",
        f"Machine: {r['machine']}. Run: `{c['run']}` ({c['encoder']}, {c['dim']}-d). Command:"
        f" `{r['command']}`. CIFAR-10 JPEGs are re-encoded at quality 75 (see"
        " ../shared/data/README.md).",
        "",
        "## Embedding (fresh subprocess each, batch 256, precision "
        f"{_precision()}, decode cache warm)",
        "",
        f"| data | images | images/s (best of {r.get('repeats', 1)}) | wall s | RSS after load"
        " | peak RSS (lowest) | peak RSS, each run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    names = {"test": "cifar10/test", "train": "cifar10/train", "train_x5": "cifar10/train x5"}
    for key, e in c["embed"].items():
        name = names.get(key, key)
        lines.append(f"| {name} | {e['rows']} | {e['rows_per_s']:.0f} | {e['wall_seconds']:.1f}"
                     f" | {mib(e['rss_ready_bytes'])} | {mib(e['peak_rss_bytes'])} | "
                     + ", ".join(mib(b) for b in e.get("peak_rss_bytes_runs", [])) + " |")
    lines += [
        "",
        "Peak RSS change for 5x the images (cifar10/train -> the same files linked 5 times):"
        f" {c['peak_rss_growth_5x_bytes'] / 2**20:+.1f} MiB"
        f" ({c['growth_per_extra_image_bytes']:.0f} bytes per extra image; the extra images'"
        f" decoded pixels alone are {mib(c['extra_decoded_pixel_bytes'])}: {verdict})."
        " From test to train (also 5x):"
        f" {c['peak_rss_growth_test_to_train_bytes'] / 2**20:+.1f} MiB; a run of 10,000 rows"
        " ends before the allocator's high-water mark settles (tens of MiB, the same at any"
        " size past the first parts), so the verdict uses the larger pair."
        " Decoding the JPEGs into the reader's cache (once per folder, not part of the above): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in c["decode_seconds"].items())
        + " (0 when already cached).",
        "",
        "## CIFAR-10 search (index over train embeddings, test images as queries)",
        "",
        f"Index: {ix['kind']} ({ix['metric']}), {ix['count']} vectors,"
        f" built in {ix['build_seconds']:.3f} s, recall@10 {ix['recall_at_10']:.3f}.",
        "",
        "| latency, 1 query at a time | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
        f"| index search (vector in) | {c['search_latency']['p50_ms']:.2f} |"
        f" {c['search_latency']['p99_ms']:.2f} |",
        f"| JPEG file -> encoder -> search | {c['query_latency_end_to_end']['p50_ms']:.2f} |"
        f" {c['query_latency_end_to_end']['p99_ms']:.2f} |",
        "",
        f"Neighbours ({nb['queries']} test queries): same class in top 10"
        f" {nb['same_class_at_10']:.3f}, top 1 {nb['same_class_at_1']:.3f};"
        f" kNN accuracy (k=10, T=0.07) from the search hits"
        f" {nb['knn_accuracy_from_search']:.4f} vs the kNN probe on the same vectors"
        f" {nb['knn_accuracy_probe']:.4f}.",
        "",
        f"## {s['count']:,} synthetic vectors ({s['dim']}-d, {s['clusters']} clusters, cosine)",
        "",
        "| index | params | build s | recall@10 (fresh queries) | p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for kind in ("ivf", "hnsw"):
        if kind in s:
            k = s[kind]
            params = ", ".join(f"{a}={b}" for a, b in k["params"].items())
            lat = k["search_latency"]
            lines.append(f"| {kind} | {params} | {k['build_seconds']:.1f} |"
                         f" {k['recall_at_10_fresh_queries']:.3f} |"
                         f" {lat['p50_ms']:.2f} | {lat['p99_ms']:.2f} |")
    ex = s["exact_search_latency"]
    lines += [
        f"| exact (flat) | | | 1.000 | {ex['p50_ms']:.2f} | {ex['p99_ms']:.2f} |",
        "",
        "nprobe / efSearch are tuned to recall >= 0.95 on rows of the data (own row excluded);"
        " the recall above is on separate fresh queries from the same distribution. Queries far"
        " from the data (another distribution) get lower recall from an approximate index.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="an image run to use (default: pre-train one)")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-embed-search"))
    parser.add_argument("--pretrain-minutes", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2,
                        help="fresh-process embeddings per tier (lowest peak, best rate kept)")
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--hnsw", action="store_true", help="also HNSW on the synthetic set")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--child-embed", nargs=4, metavar=("RUN", "DATA", "OUT", "BATCH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_embed:
        run, data, out, batch = args.child_embed
        child_embed(run, data, out, int(batch))
        return
    if not CIFAR.is_dir():
        raise SystemExit(f"{CIFAR} is missing; this benchmark needs CIFAR-10")

    with tempfile.TemporaryDirectory(prefix="embed-search-") as tmp:
        work = Path(tmp)
        test, train = CIFAR / "test", CIFAR / "train"
        if args.quick:  # 1,000 and 5,000 images: still a 5x step
            os.environ["SELFSUP_CACHE"] = str(work / "cache")  # children inherit; removed after
            test = subset_folder(test, work / "test", 100)
            train = subset_folder(train, work / "train", 500)
            args.vectors, args.queries = min(args.vectors, 100_000), min(args.queries, 200)
            args.out = str(Path(args.out).with_name(Path(args.out).name + "-quick"))
        run = get_run(args, CIFAR / "train" if not args.quick else train)
        cifar = bench_cifar(args, run, test, train, work)
    synth = bench_synthetic(args)
    import torch

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,"
                   f" torch {torch.__version__}, {torch.get_num_threads()} threads",
        "quick": args.quick,
        "repeats": args.repeats,
        "cifar": cifar,
        "synthetic": synth,
    }
    folder = RESULTS if not args.quick else Path(tempfile.gettempdir())  # smoke runs: not kept
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "embed_search.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "embed_search.md").write_text(markdown(result))
    print(markdown(result))
    print(f"written to {folder / 'embed_search.json'} and .md")




def _precision() -> str:
    from selfsup.config import inference_precision

    return inference_precision("auto")

if __name__ == "__main__":
    main()
