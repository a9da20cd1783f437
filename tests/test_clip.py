"""CLIP: the loss, the clamped temperature, the pairs reader, retrieval and zero-shot metrics,
captions from labels, and a tiny pretrain -> evaluate -> search round trip."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.captions import captions_from_labels
from selfsup.data.pairs import load_pairs
from selfsup.errors import SelfsupError
from selfsup.evaluate.zero_shot import (
    class_embeddings,
    recall_at_k,
    retrieval,
    zero_shot_accuracy,
)
from selfsup.methods.losses import clip_loss

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220),
           "yellow": (230, 230, 20)}
TINY = {"text_dim": 16, "text_layers": 1, "text_heads": 2, "vocab_size": 48, "embed_dim": 8}


# ---------------------------------------------------------------------------- the loss


def clip_reference(image, text, scale, positives=None) -> float:
    """Symmetric InfoNCE written out term by term (soft targets over each row's positives)."""
    a = [F.normalize(v, dim=0) for v in image.double()]
    b = [F.normalize(v, dim=0) for v in text.double()]
    n = len(a)
    positives = positives if positives is not None else [[i] for i in range(n)]
    total = 0.0
    for i in range(n):
        for first, second in ((a, b), (b, a)):
            logits = [scale * float(first[i] @ second[j]) for j in range(n)]
            log_z = math.log(sum(math.exp(x) for x in logits))
            total -= sum(logits[j] - log_z for j in positives[i]) / len(positives[i])
    return total / (2 * n)


def test_clip_loss_matches_direct_computation():
    torch.manual_seed(0)
    image, text = torch.randn(6, 5), torch.randn(6, 5)
    for scale in (1.0, 14.3, 100.0):
        got = float(clip_loss(image, text, torch.tensor(scale)))
        assert math.isclose(got, clip_reference(image, text, scale), rel_tol=1e-5)
    # distinct ids are the plain loss; swapping the towers gives the same symmetric value
    ids = torch.arange(6)
    assert torch.allclose(clip_loss(image, text, 5.0, ids, ids), clip_loss(image, text, 5.0))
    assert torch.allclose(clip_loss(image, text, 5.0), clip_loss(text, image, 5.0))


def test_clip_loss_rows_sharing_a_caption_or_image_are_positives():
    torch.manual_seed(1)
    image, text = torch.randn(5, 4), torch.randn(5, 4)
    caption_ids = torch.tensor([0, 1, 0, 2, 3])  # rows 0 and 2 share a caption
    image_ids = torch.tensor([0, 1, 2, 3, 1])  # rows 1 and 4 share an image
    positives = [[0, 2], [1, 4], [0, 2], [3], [1, 4]]
    got = float(clip_loss(image, text, 7.0, image_ids, caption_ids))
    assert math.isclose(got, clip_reference(image, text, 7.0, positives), rel_tol=1e-5)


def test_clip_loss_is_low_for_aligned_pairs():
    torch.manual_seed(2)
    z = torch.randn(8, 16)
    aligned = clip_loss(z, z + 0.01 * torch.randn_like(z), 20.0)
    unrelated = clip_loss(z, torch.randn(8, 16), 20.0)
    assert aligned < 0.1 < unrelated


# ---------------------------------------------------------------------------- data


def write_toy(root: Path, per_colour: int = 6) -> Path:
    """Solid-colour 8x8 images (with noise) under root/img, and a labelled copy per colour."""
    rng = np.random.default_rng(0)
    rows = []
    for name, colour in COLOURS.items():
        (root / "labelled" / name).mkdir(parents=True, exist_ok=True)
        (root / "img").mkdir(parents=True, exist_ok=True)
        for i in range(per_colour):
            noise = rng.integers(-15, 15, (8, 8, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "img" / f"{name}{i}.png")
            Image.fromarray(pixels).save(root / "labelled" / name / f"{i}.png")
            rows.append((f"img/{name}{i}.png", f"a {name} square"))
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    return root / "pairs.csv"


def test_pairs_rows_go_to_their_images_relative_to_the_file(tmp_path):
    data_dir = tmp_path / "data" / "nested"
    data_dir.mkdir(parents=True)
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "data" / "r.png")
    Image.new("RGB", (4, 4), (0, 0, 255)).save(data_dir / "b.png")
    table = data_dir / "pairs.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in [
        {"img": "../r.png", "text": "red"},
        {"img": "b.png", "text": "blue"},
        {"img": "../r.png", "text": "a red one"},  # the same image again: stored once
        {"img": "b.png", "text": "blue"},  # the same caption again: encoded once
    ]) + "\n")
    data = load_pairs(table, {"image_column": "img", "caption_column": "text"},
                      cache_dir=tmp_path / "cache")
    assert len(data) == 4 and len(data.images) == 2 and len(data.captions) == 3
    assert data.row_captions() == ["red", "blue", "a red one", "blue"]
    colours = [tuple(data.images[i][0, 0]) for i in data.image_rows]
    assert colours == [(255, 0, 0), (0, 0, 255), (255, 0, 0), (0, 0, 255)]
    batch = data.batch_dataset(False).__getitems__([2, 1])
    assert batch["images"].shape == (2, 4, 4, 3)
    assert batch["images"][0, 0, 0].tolist() == [255, 0, 0]
    assert batch["captions"].tolist() == [2, 1]
    assert batch["image_ids"].tolist() == data.image_rows[[2, 1]].tolist()

    # a folder with a captions.csv: paths relative to the folder
    (tmp_path / "data" / "captions.csv").write_text("image,caption\nr.png,red\nnested/b.png,blue\n")
    folder = load_pairs(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert folder.row_captions() == ["red", "blue"]
    assert tuple(folder.images[folder.image_rows[1]][0, 0]) == (0, 0, 255)


def test_pairs_bad_rows_are_named_or_skipped_and_counted(tmp_path):
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    table = tmp_path / "pairs.csv"
    table.write_text("image,caption\nok.png,fine\nmissing.png,gone\nbroken.png,bad\nok.png,\n")
    with pytest.raises(SelfsupError, match=r"pairs.csv line 5: no caption"):
        load_pairs(table, cache_dir=tmp_path / "cache")
    table.write_text("image,caption\nok.png,fine\nmissing.png,gone\nbroken.png,bad\n")
    with pytest.raises(SelfsupError, match=r"line 3: image .*missing.png.*no such image file"):
        load_pairs(table, cache_dir=tmp_path / "cache")
    data = load_pairs(table, skip_bad=True, cache_dir=tmp_path / "cache")
    assert len(data) == 1 and data.row_captions() == ["fine"]
    assert len(data.skipped) == 2
    assert "line 4" in data.skipped[1][0] and "cannot read image" in data.skipped[1][1]
    with pytest.raises(SelfsupError, match="no column 'text'"):
        load_pairs(table, {"caption_column": "text"}, cache_dir=tmp_path / "cache")


def test_captions_from_labels_builds_pairs_the_reader_reads(tmp_path):
    write_toy(tmp_path, per_colour=3)
    out = tmp_path / "made" / "pairs.csv"
    result = captions_from_labels(tmp_path / "labelled", out, classes=["red", "blue"])
    assert result["rows"] == 6 and set(result["classes"]) == {"red", "blue"}
    data = load_pairs(out, cache_dir=tmp_path / "cache")
    assert len(data) == 6
    for caption, row in zip(data.row_captions(), data.image_rows, strict=True):
        name = "red" if caption.endswith("red.") else "blue"
        assert name in caption and "green" not in caption
        assert data.images[row][0, 0].tolist() == pytest.approx(COLOURS[name], abs=20)
    with pytest.raises(SelfsupError, match="not among the class folders"):
        captions_from_labels(tmp_path / "labelled", out, classes=["purple"])


# ---------------------------------------------------------------------------- metrics


def test_recall_at_k_on_a_hand_made_case():
    similarity = np.array([
        [0.9, 0.1, 0.2, 0.3],  # right answer 0 ranks first
        [0.8, 0.1, 0.7, 0.2],  # right answer 1 ranks last (3 wrong ones above it)
        [0.5, 0.6, 0.4, 0.1],  # right answers {2, 3}: the best, 2, has 2 above it
    ])
    got = recall_at_k(similarity, [[0], [1], [2, 3]], ks=(1, 2, 3, 4))
    assert got == {"R@1": 1 / 3, "R@2": 1 / 3, "R@3": 2 / 3, "R@4": 1.0}


def test_retrieval_both_directions_with_repeated_captions():
    # 3 images, 2 captions; images 0 and 1 share caption 0, image 2 has caption 1
    image_embeddings = np.array([[1, 0, 0], [1, 0, 0], [0.6, 0.8, 0]], dtype=np.float32)
    text_embeddings = np.array([[1, 0, 0], [0.6, 0, 0.8]], dtype=np.float32)
    result = retrieval(image_embeddings, text_embeddings, np.array([0, 1, 2]),
                       np.array([0, 0, 1]), ks=(1, 2))
    # image 2 prefers caption 0 (0.6 > 0.36): a miss at 1, a hit at 2
    assert result["image_to_text"] == {"R@1": pytest.approx(2 / 3), "R@2": 1.0}
    # caption 0 finds image 0 or 1 first; caption 1 prefers images 0 and 1 to image 2
    assert result["text_to_image"] == {"R@1": 0.5, "R@2": 0.5}
    assert (result["num_images"], result["num_captions"], result["num_pairs"]) == (3, 2, 3)


def test_zero_shot_on_a_toy_case():
    words = {"cat": [1.0, 0, 0], "dog": [0, 1.0, 0], "car": [0, 0, 1.0]}

    def embed_text(prompts: list[str]) -> np.ndarray:
        return np.array([words[p.split()[-1].rstrip(".")] for p in prompts])

    weights = class_embeddings(embed_text, ["cat", "dog", "car"], ["a {}.", "a photo of a {}."])
    assert np.allclose(weights, np.eye(3))
    images = np.array([[1, 0.2, 0], [0.9, 1.0, 0], [0, 0.1, 1], [0.3, 0.2, 0.1]])
    labels = np.array([0, 0, 2, 1])  # image 1 looks like a dog, image 3 like a cat
    assert zero_shot_accuracy(images, weights, labels)["accuracy"] == 0.5
    between = zero_shot_accuracy(images, weights, labels, classes=[0, 2])
    # among cat and car only, image 1 (cat, dog-like) is a cat again; image 3 (a dog) drops out
    assert between["accuracy"] == 1.0 and between["num_images"] == 3
    assert between["chance"] == 0.5
    with pytest.raises(SelfsupError, match="exactly one"):
        class_embeddings(embed_text, ["cat"], ["no slot"])


# ---------------------------------------------------------------------------- the method


def test_logit_scale_is_clamped_at_100():
    from selfsup.methods import METHODS, DataInfo
    from selfsup.models import build_encoder

    info = DataInfo(channels=3, image_size=8, extra={"captions": ["a red square", "a blue one"]})
    method = METHODS.get("clip")(build_encoder("resnet_small", width=4), info, TINY)
    assert math.isclose(float(method.scale().detach()), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        method.logit_scale.fill_(math.log(1000.0))
    assert math.isclose(float(method.scale().detach()), 100.0, rel_tol=1e-5)
    method.on_train_step_end(0.5)  # the parameter itself is clipped after a step
    assert math.isclose(float(method.logit_scale.detach()), math.log(100.0), rel_tol=1e-6)
    with pytest.raises(SelfsupError, match="below 1/max_logit_scale"):
        METHODS.get("clip")(build_encoder("resnet_small", width=4), info,
                            {**TINY, "init_temperature": 0.001})


def test_clip_pretrain_evaluate_and_search_end_to_end(tmp_path):
    from selfsup.api import pretrain
    from selfsup.evaluate import evaluate
    from selfsup.loading import load

    pairs = write_toy(tmp_path)
    common = {"precision": "32", "progress": False, "cache_dir": str(tmp_path / "cache"),
              "encoder_options": {"width": 4}}
    image_run = pretrain("simclr", str(tmp_path / "labelled"), out=str(tmp_path / "simclr"),
                         steps=2, batch_size=8, **common)
    run = pretrain("clip", str(pairs), out=str(tmp_path / "clip"), steps=25, batch_size=12,
                   lr=3e-3, method_options={**TINY, "image_init": str(image_run.path),
                                            "lock_image": True}, **common)
    # LiT: the locked image tower is exactly the image run's encoder
    from safetensors.torch import load_file

    before, after = (load_file(str(p / "encoder.safetensors")) for p in (image_run.path,
                                                                          run.path))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    summary = json.loads((run.path / "pretrain.json").read_text())
    assert summary["final_loss"] < math.log(12)  # below a constant model's

    result = evaluate(run.path, str(tmp_path / "labelled"), baseline=False, progress=False,
                      cache_dir=str(tmp_path / "cache"),
                      clip_options={"pairs": str(pairs), "templates": ["a {} square"],
                                    "subsets": {"warm": ["red", "yellow"]}})
    zero_shot = result["zero_shot"]
    assert zero_shot["all"]["num_classes"] == 4 and zero_shot["warm"]["num_classes"] == 2
    assert zero_shot["all"]["accuracy"] > 0.25  # above chance on solid colours
    assert set(result["retrieval"]["image_to_text"]) == {"R@1", "R@5", "R@10"}
    assert result["retrieval"]["num_captions"] == 4
    assert "linear" in result and (run.path / "eval.json").is_file()

    embedder = load(run.path)
    assert embedder.modalities == ("image", "text")
    text = embedder.embed_query("a red square", "text")
    image = embedder.embed([str(tmp_path / "img" / "red0.png")])
    assert text.shape == image.shape == (1, TINY["embed_dim"])
    assert np.isclose(np.linalg.norm(text), 1.0, atol=1e-5)
    with pytest.raises(SelfsupError, match="cannot embed a series query"):
        embedder.embed_query([1.0, 2.0], "series")
