"""`selfsup captions --from-labels`: pairs for CLIP from a labelled image folder.

When images have class labels but no captions, a caption can be written from the class name
with a varied template ("a photo of a dog.", "a blurry photo of a dog." ...). Be clear about what
that teaches: only the label vocabulary. A model trained on such pairs aligns images with the
class names it saw; everything else it "knows" about words comes from the text tower's own
pre-training (e.g. MiniLM), which is what can carry it to class names it never saw.

The templates are a subset of the prompts Radford et al. (2021) used for zero-shot ImageNet;
the same list is the default prompt set of zero-shot classification (selfsup/evaluate/zero_shot.py).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from selfsup import atomic
from selfsup.data.images import list_image_files
from selfsup.errors import SelfsupError

TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a cropped photo of a {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a pixelated photo of a {}.",
    "a jpeg photo of a {}.",
    "an image of a {}.",
    "a picture of a {}.",
    "a snapshot of a {}.",
    "a photo of one {}.",
)


def class_phrase(name: str) -> str:
    """A folder name as words: "sports_car" -> "sports car"."""
    return " ".join(name.replace("_", " ").replace("-", " ").split())


def captions_from_labels(
    folder: str | Path,
    out: str | Path,
    *,
    classes: list[str] | None = None,
    templates: tuple[str, ...] | list[str] = TEMPLATES,
    seed: int = 0,
) -> dict[str, object]:
    """Write ``out`` (CSV: image, caption, label) for the images of ``folder``'s class
    sub-folders, one caption per image from a random template; ``classes`` keeps only those.

    Image paths are written relative to the CSV's folder, as the pairs reader reads them.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise SelfsupError(f"{folder}: not a folder of labelled images (class sub-folders)")
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise SelfsupError(f"{out}: --out must name a .csv file")
    for template in templates:
        if template.count("{}") != 1:
            raise SelfsupError(f"template {template!r} must hold exactly one {{}}")
    files = [rel for rel, _, _ in list_image_files(root)]
    if not files:
        raise SelfsupError(f"{folder}: no images found")
    loose = [f for f in files if "/" not in f]
    if loose:
        raise SelfsupError(
            f"{folder}: {loose[0]} lies directly in the folder; captions from labels need every "
            "image inside a class sub-folder (the sub-folder's name is the label)"
        )
    found = sorted({f.split("/", 1)[0] for f in files})
    if classes is not None:
        unknown = [c for c in classes if c not in found]
        if unknown:
            raise SelfsupError(
                f"--classes: {', '.join(unknown)} not among the class folders of {folder} "
                f"({', '.join(found)})"
            )
        keep = set(classes)
        files = [f for f in files if f.split("/", 1)[0] in keep]
    rng = np.random.default_rng(seed)
    choice = rng.integers(len(templates), size=len(files))
    base = out.resolve().parent
    base.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with atomic.atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "label"])
        for rel, t in zip(files, choice.tolist(), strict=True):
            label = rel.split("/", 1)[0]
            counts[label] = counts.get(label, 0) + 1
            path = os.path.relpath((root / rel).resolve(), base)
            writer.writerow([Path(path).as_posix(), templates[t].format(class_phrase(label)),
                             label])
    return {"out": str(out), "rows": len(files), "classes": counts,
            "templates": len(templates)}
