"""The report's figures, drawn with matplotlib (Agg, no display) and returned as PNG bytes.

Each function takes plain data (rows of metrics.csv, the sweep's points, an embedding matrix)
and returns PNG bytes, or None when there is nothing to draw, so the HTML can skip a section.
"""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, and no GUI backend probing
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

# Colours: self-supervised read-outs in blues/greens, the supervised reference in orange.
COLOURS = {"linear": "#1f77b4", "knn": "#2ca02c", "finetune": "#9467bd",
           "finetune_scratch": "#d62728", "supervised": "#ff7f0e"}
LABELS = {"linear": "SSL + linear probe", "knn": "SSL + kNN", "finetune": "SSL + fine-tuning",
          "finetune_scratch": "fine-tuning from scratch", "supervised": "supervised baseline"}
#: The references (no pre-training), drawn dashed.
REFERENCES = ("finetune_scratch", "supervised")

# metrics.csv columns drawn as training curves, in this order, when present.
CURVE_GROUPS = [
    ("loss", ("train/loss",)),
    ("monitor", ("monitor/knn_acc", "probe_acc")),
    ("throughput (samples/s)", ("train/samples_per_s", "train/images_per_s", "throughput")),
    ("learning rate", ("train/lr",)),
    ("collapse: std ratio", ("collapse/std_ratio",)),
    ("collapse: effective rank", ("collapse/effective_rank",)),
    ("uniformity", ("collapse/uniformity",)),
]


def to_png(fig: plt.Figure) -> bytes:
    """Render and close the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _series(rows: list[dict[str, str]], column: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows where the column holds a finite number."""
    steps, values = [], []
    for row in rows:
        try:
            value, step = float(row.get(column) or "nan"), float(row.get("step") or "nan")
        except ValueError:
            continue
        if math.isfinite(value) and math.isfinite(step):
            steps.append(step)
            values.append(value)
    return np.asarray(steps), np.asarray(values)


def training_curves(rows: list[dict[str, str]]) -> bytes | None:
    """One small panel per known metric group found in metrics.csv, against the step."""
    panels = []
    for title, columns in CURVE_GROUPS:
        found = [(c, *_series(rows, c)) for c in columns]
        found = [f for f in found if len(f[1])]
        if found:
            panels.append((title, found))
    if not panels:
        return None
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.9 * nrows), squeeze=False)
    for ax, (title, found) in zip(axes.flat, panels, strict=False):
        for column, steps, values in found:
            marker = "o" if len(steps) < 20 else None
            ax.plot(steps, values, marker=marker, markersize=3, label=column)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(found) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return to_png(fig)


def label_efficiency(points: list[dict[str, Any]], metric: str = "accuracy") -> bytes | None:
    """Test score against the number of labels (log axis), mean with error bars (std over seeds)."""
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    x = np.asarray([p["num_labels"] for p in points], dtype=float)
    drawn = False
    for protocol in ("linear", "knn", "finetune", "finetune_scratch", "supervised"):
        stats = [p["summary"].get(protocol, {}).get(metric) for p in points]
        if any(s is None or s["mean"] is None for s in stats):
            continue
        mean = np.asarray([s["mean"] for s in stats]) * 100
        std = np.asarray([s["std"] for s in stats]) * 100
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=4, color=COLOURS[protocol],
                    label=LABELS[protocol], linestyle="--" if protocol in REFERENCES else "-")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if len(x) > 1 and x.max() / max(x.min(), 1) > 5:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(x)
    ax.set_xticklabels([f"{p['budget']}\n({p['num_labels']:.0f})" for p in points], fontsize=8)
    ax.set_xlabel("labels used (count)")
    ax.set_ylabel(f"test {metric.replace('_', '-')} (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Label efficiency: mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    return to_png(fig)


def probe_curve(records: list[dict[str, Any]], key: str = "probe_acc") -> bytes | None:
    """Linear-probe accuracy on the probe set against the pre-training step (the probe curve):
    where it flattens, more pre-training stops paying for this task."""
    points = sorted((r["step"], r[key]) for r in records if r.get(key) is not None)
    if not points:
        return None
    steps, values = zip(*points, strict=True)
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    ax.plot(steps, np.asarray(values) * 100, marker="o", markersize=4, color=COLOURS["linear"])
    ax.set_xlabel("pre-training step")
    ax.set_ylabel("probe accuracy (%)")
    ax.set_title("Probe curve: linear probe on frozen embeddings", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return to_png(fig)


def embedding_map(features: np.ndarray, labels: np.ndarray | None, seed: int = 0) -> bytes | None:
    """A 2-D t-SNE (van der Maaten & Hinton 2008) map of embeddings, coloured by label.

    UMAP is used instead when the umap-learn package is installed. Features are L2-normalised
    first, as the probes compare them by cosine similarity.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) < 5:
        return None
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    try:
        import umap  # type: ignore[import-not-found]

        xy = umap.UMAP(random_state=seed).fit_transform(features)
        name = "UMAP"
    except ImportError:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                  max_iter=500).fit_transform(features)
        name = "t-SNE"
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=5, alpha=0.7)
    else:
        labels = np.asarray(labels)
        cmap = plt.get_cmap("tab10" if len(np.unique(labels)) <= 10 else "tab20")
        for i, c in enumerate(np.unique(labels)):
            keep = labels == c
            ax.scatter(xy[keep, 0], xy[keep, 1], s=5, alpha=0.7, color=cmap(i % cmap.N),
                       label=str(c))
        if len(np.unique(labels)) <= 20:
            ax.legend(fontsize=7, markerscale=2, loc="best", title="label", title_fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{name} of {len(features)} test embeddings", fontsize=10)
    fig.tight_layout()
    return to_png(fig)


def compare_chart(rows: list[dict[str, Any]]) -> bytes | None:
    """Grouped bars: each run's headline scores (linear, kNN, supervised) side by side.

    A row holds "name" and any of "linear", "knn", "supervised" in [0, 1] (may be None).
    """
    protocols = [p for p in ("linear", "knn", "supervised")
                 if any(r.get(p) is not None for r in rows)]
    if not rows or not protocols:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(rows) + 2), 3.8))
    width = 0.8 / len(protocols)
    x = np.arange(len(rows))
    for i, protocol in enumerate(protocols):
        values = [(r.get(protocol) or 0.0) * 100 for r in rows]
        errors = [(r.get(f"{protocol}_std") or 0.0) * 100 for r in rows]
        ax.bar(x + (i - (len(protocols) - 1) / 2) * width, values, width, yerr=errors,
               capsize=3, color=COLOURS[protocol], label=LABELS[protocol])
    ax.set_xticks(x)
    ax.set_xticklabels([r["name"] for r in rows], fontsize=8, rotation=15)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return to_png(fig)
