"""Evaluating a CLIP run: zero-shot classification and image-text retrieval.

Zero-shot classification (Radford et al. 2021, sec. 3.1.2): every class name is written into
prompt templates ("a photo of a {}."), the text tower embeds them, the normalised embeddings
are averaged over the templates into one classifier row per class (their "prompt ensembling"),
and an image takes the class whose row is most similar. No label trains anything; the labels
only score. Accuracy can be restricted to a subset of classes (e.g. classes whose names never
appeared in a training caption): images of those classes, choosing among those classes only.

Retrieval on held-out pairs, both directions, as Recall@K: the share of queries with at least
one right answer among the K most similar candidates. Images and captions are deduplicated
first, so an image with five captions (COCO) is one candidate that each of its captions may
find, and a caption repeated across images (captions built from labels) is one query whose
right answers are all of its images.

The run's image tower is also probed like any image encoder (linear and kNN on its frozen
features, selfsup/evaluate/probes.py), and the supervised baseline trained, when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfsup import atomic
from selfsup.captions import TEMPLATES, class_phrase
from selfsup.data.images import load_images
from selfsup.data.pairs import load_pairs
from selfsup.errors import SelfsupError
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.probes import knn_probe, linear_probe, stratified_split
from selfsup.evaluate.protocol import check_matches, subset, supervised_baseline
from selfsup.loading import load

KS = (1, 5, 10)


# ---------------------------------------------------------------------------- metrics


def recall_at_k(
    similarity: np.ndarray, relevant: Sequence[Sequence[int]], ks: Sequence[int] = KS
) -> dict[str, float]:
    """Recall@K of queries (rows of ``similarity``, Q x C) whose right candidates are
    ``relevant[q]``: a query counts when any of them ranks within the top K.

    A query's rank is the number of wrong candidates scored strictly above its best right one.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or len(relevant) != similarity.shape[0]:
        raise ValueError("similarity must be (queries, candidates) with one relevant set per row")
    ranks = np.empty(len(relevant), dtype=np.int64)
    for q, right in enumerate(relevant):
        right = np.asarray(list(right), dtype=np.int64)
        if len(right) == 0:
            raise ValueError(f"query {q} has no relevant candidate")
        scores = similarity[q]
        best = scores[right].max()
        wrong = np.ones(len(scores), dtype=bool)
        wrong[right] = False
        ranks[q] = int((scores[wrong] > best).sum())
    return {f"R@{k}": float((ranks < k).mean()) for k in ks}


def retrieval(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    image_rows: np.ndarray,
    caption_rows: np.ndarray,
    ks: Sequence[int] = KS,
    chunk: int = 1024,
) -> dict[str, Any]:
    """Recall@K both ways between distinct images (M x D) and distinct captions (U x D),
    paired by rows (``image_rows[i]`` goes with ``caption_rows[i]``); embeddings normalised."""
    images = np.unique(image_rows)
    captions = np.unique(caption_rows)
    image_at = {int(v): i for i, v in enumerate(images)}
    caption_at = {int(v): i for i, v in enumerate(captions)}
    of_image: list[set[int]] = [set() for _ in images]
    of_caption: list[set[int]] = [set() for _ in captions]
    for i, c in zip(image_rows.tolist(), caption_rows.tolist(), strict=True):
        of_image[image_at[i]].add(caption_at[c])
        of_caption[caption_at[c]].add(image_at[i])
    img = np.asarray(image_embeddings, dtype=np.float32)[images]
    txt = np.asarray(text_embeddings, dtype=np.float32)[captions]

    def directed(queries: np.ndarray, candidates: np.ndarray, right: list[set[int]]) -> dict:
        hits = {f"R@{k}": 0.0 for k in ks}
        for start in range(0, len(queries), chunk):
            block = queries[start : start + chunk] @ candidates.T
            part = recall_at_k(block, right[start : start + chunk], ks)
            for key, value in part.items():
                hits[key] += value * len(block)
        return {key: value / len(queries) for key, value in hits.items()}

    return {
        "image_to_text": directed(img, txt, of_image),
        "text_to_image": directed(txt, img, of_caption),
        "num_images": len(images),
        "num_captions": len(captions),
        "num_pairs": len(image_rows),
    }


def class_embeddings(
    embed_text: Callable[[list[str]], np.ndarray],
    class_names: Sequence[str],
    templates: Sequence[str],
) -> np.ndarray:
    """One normalised row per class: its prompts' normalised text embeddings, averaged."""
    if not templates:
        raise SelfsupError("zero-shot classification needs at least one prompt template")
    for template in templates:
        if template.count("{}") != 1:
            raise SelfsupError(f"prompt template {template!r} must hold exactly one {{}}")
    prompts = [t.format(name) for name in class_names for t in templates]
    vectors = np.asarray(embed_text(prompts), dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    rows = vectors.reshape(len(class_names), len(templates), -1).mean(axis=1)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True).clip(1e-12)
    return rows.astype(np.float32)


def zero_shot_accuracy(
    image_embeddings: np.ndarray,
    weights: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Accuracy of argmax similarity; with ``classes``, only images of those classes, choosing
    among those classes only (chance 1 / len(classes))."""
    labels = np.asarray(labels)
    chosen = np.arange(len(weights)) if classes is None else np.asarray(list(classes))
    keep = np.isin(labels, chosen)
    if not keep.any():
        raise SelfsupError("no test images of the chosen classes")
    scores = np.asarray(image_embeddings, dtype=np.float32)[keep] @ weights[chosen].T
    predicted = chosen[scores.argmax(axis=1)]
    return {
        "accuracy": float((predicted == labels[keep]).mean()),
        "num_images": int(keep.sum()),
        "num_classes": len(chosen),
        "chance": 1.0 / len(chosen),
    }


# ---------------------------------------------------------------------------- the protocol


def evaluate_clip(
    run_path: str | Path,
    data: str | None,
    test: str | None = None,
    *,
    pairs: str | None = None,
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    subsets: dict[str, Sequence[str]] | None = None,
    probes: bool = True,
    baseline: bool = False,
    baseline_minutes: float | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
    progress: bool = True,
    cache_dir: str | None = None,
    compile: str = "auto",
) -> dict[str, Any]:
    """Zero-shot accuracy on labelled images (``test``, else a stratified ``test_fraction``
    of ``data``; with ``test`` alone, all of it and no probes), per class subset too;
    retrieval on held-out ``pairs``; probes of the image tower (and the supervised baseline
    with ``baseline``; ``compile``: their feature extraction's). Written to ``eval.json``."""
    if data is None and test is None and pairs is None:
        raise SelfsupError("evaluating a CLIP run needs labelled images (--data, --test) or "
                           "pairs (--pairs)")
    embedder = load(run_path)
    run = embedder.run
    spec = embedder.spec
    summary = run.read_summary()
    pretrain_config = run.read_config()
    reader = {"skip_bad": skip_bad, "cache_dir": cache_dir}
    result: dict[str, Any] = {
        "run": str(run.path), "method": spec.get("method", "clip"), "encoder": spec["name"],
        "pretrain_seconds": summary["train_seconds"],
    }
    if data is None and test is not None:  # zero-shot needs no training images
        data, test, probes, baseline = test, None, False, False
        test_fraction = 1.0
    if data is not None:
        labelled = load_images(data, image_size=embedder.image_size, progress=progress, **reader)
        if labelled.labels is None:
            raise SelfsupError(f"{data} has no labels: zero-shot accuracy needs labelled images")
        check_matches(labelled, spec)
        if test_fraction == 1.0:
            train = test_data = labelled
            result["test_data"] = data
        elif test is None:
            train_idx, test_idx = stratified_split(labelled.labels, test_fraction, seed)
            train = subset(labelled, train_idx, f"{data} (train part)")
            test_data = subset(labelled, test_idx, f"{data} (held-out {test_fraction:.0%})")
            result["test_data"] = f"{test_fraction:.0%} of {data}, stratified, seed {seed}"
        else:
            train = labelled
            test_data = load_images(test, image_size=embedder.image_size, progress=progress,
                                    **reader)
            check_matches(test_data, spec)
            if test_data.class_names != train.class_names:
                raise SelfsupError(
                    f"{test} has classes {test_data.class_names}, {data} has {train.class_names}"
                )
            result["test_data"] = test
        folder_names = list(test_data.class_names or [])
        names = list(class_names) if class_names is not None else folder_names
        if len(names) != len(folder_names):
            raise SelfsupError(
                f"{len(names)} class names given but the data has {len(folder_names)} classes "
                f"({', '.join(folder_names)})"
            )
        prompts = list(templates) if templates else list(TEMPLATES)
        weights = class_embeddings(embedder.embed_text, [class_phrase(n) for n in names], prompts)
        test_embeddings = embedder.embed(test_data.images)
        zero_shot: dict[str, Any] = {
            "all": zero_shot_accuracy(test_embeddings, weights, test_data.labels),
            "class_names": names, "templates": prompts,
        }
        for name, members in (subsets or {}).items():
            unknown = [m for m in members if m not in folder_names and m not in names]
            if unknown:
                raise SelfsupError(f"class subset {name!r}: unknown classes {', '.join(unknown)}")
            index = [folder_names.index(m) if m in folder_names else names.index(m)
                     for m in members]
            zero_shot[name] = {**zero_shot_accuracy(test_embeddings, weights, test_data.labels,
                                                    index), "classes": list(members)}
        result["zero_shot"] = zero_shot
        result["num_test"] = len(test_data)
        if probes:
            precision = pretrain_config.get("precision", "32")
            train_x = extract_features(embedder.encoder, train, precision=precision,
                                       compile=compile)
            test_x = extract_features(embedder.encoder, test_data, precision=precision,
                                      compile=compile)
            fit_idx, val_idx = stratified_split(train.labels, val_fraction, seed)
            split = (train_x[fit_idx], train.labels[fit_idx], train_x[val_idx],
                     train.labels[val_idx], test_x, test_data.labels)
            result["linear"] = linear_probe(*split, seed=seed).as_dict()
            result["knn"] = knn_probe(*split).as_dict()
            result["num_train"] = len(train)
        if baseline:
            minutes = baseline_minutes or summary["train_seconds"] / 60
            result["supervised"] = supervised_baseline(
                run, pretrain_config, train, test_data, minutes, seed, progress
            )
    if pairs is not None:

        held_out = load_pairs(pairs, pretrain_config.get("data_options", {}),
                              image_size=embedder.image_size, **reader)
        image_embeddings = np.zeros((len(held_out.images), embedder.dim), dtype=np.float32)
        used = np.unique(held_out.image_rows)
        for start in range(0, len(used), embedder.batch_size):
            rows = used[start : start + embedder.batch_size]
            image_embeddings[rows] = embedder.forward(
                embedder.to_tensor(np.asarray(held_out.images[rows]))
            )
        text_embeddings = embedder.embed_text(held_out.captions)
        result["retrieval"] = {
            **retrieval(image_embeddings, text_embeddings, held_out.image_rows,
                        held_out.caption_rows),
            "pairs": str(pairs), "skipped_rows": len(held_out.skipped),
        }
    atomic.write_json(run.eval, result)
    return result
