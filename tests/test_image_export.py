"""Image encoders in and out: `selfsup export` for image runs, `--init` for image methods."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from safetensors.torch import load_file

from selfsup.errors import SelfsupError
from selfsup.export import export_run
from selfsup.models import build_encoder
from selfsup.models.vit_hf import read_hf_vit
from selfsup.run import RunDir, save_encoder

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
TINY_VIT = {"width": 32, "depth": 2, "heads": 2}
README = Path(__file__).resolve().parents[1] / "README.md"


def image_run(folder: Path, name: str, options: dict, size: int = 32) -> tuple[RunDir, object]:
    """A run folder holding a freshly built image encoder, as pre-training leaves it."""
    torch.manual_seed(0)
    encoder = build_encoder(name, in_channels=3, mean=MEAN, std=STD, **options).eval()
    run = RunDir(folder)
    run.path.mkdir(parents=True)
    save_encoder(run, encoder, {"image_size": size, "channels": 3, "name": name,
                                "options": {"in_channels": 3, "mean": MEAN, "std": STD,
                                            **options},
                                "method": "simclr", "modality": "image"})
    return run, encoder


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_resnet_export_loads_with_pytorch_alone(tmp_path):
    run, encoder = image_run(tmp_path / "run", "resnet_small", {"width": 8})
    out, how = export_run(run.path, tmp_path / "out")
    assert "encoder.pt2" in how
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "encoder.json", "encoder.pt2", "encoder.safetensors"]
    images = torch.rand(5, 3, 32, 32)
    torch.save(images, tmp_path / "images.pt")
    with torch.no_grad():
        torch.save(encoder(images), tmp_path / "expected.pt")
    # In a fresh interpreter where importing selfsup fails: the program needs PyTorch only.
    # The folder README's own snippet runs first, as written, from inside the folder.
    snippet = python_blocks((out / "README.md").read_text())[0]
    check = (
        "import sys; sys.modules['selfsup'] = None\n" + snippet
        + "assert embeddings.shape == (8, 64)\n"
        + f"x = torch.load({str(tmp_path / 'images.pt')!r})\n"
        + f"expected = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        + "assert torch.allclose(encoder(x), expected, atol=1e-5), 'embeddings differ'\n"
        + "assert encoder(x[:1]).shape == (1, 64)\n"
    )
    done = subprocess.run([sys.executable, "-c", check], cwd=out, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("size", [32, 48])  # 48: not the ViT's reference size, 32
def test_vit_export_loads_in_transformers_with_the_same_embeddings(tmp_path, size):
    from transformers import AutoImageProcessor, AutoModel

    import selfsup

    run, encoder = image_run(tmp_path / "run", "vit_tiny", TINY_VIT, size)
    out, _ = export_run(run.path, tmp_path / "out")
    processor = AutoImageProcessor.from_pretrained(out)
    model = AutoModel.from_pretrained(out, add_pooling_layer=False).eval()
    images = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    with torch.no_grad():
        theirs = model(**processor(images=list(images), return_tensors="pt"))
        ours = encoder(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert torch.allclose(theirs.last_hidden_state[:, 0], ours, atol=1e-5)
    embedded = selfsup.load(out, precision="32").embed(list(images))
    assert np.allclose(embedded, ours.numpy(), atol=1e-5)
    # Exporting again replaces the earlier export whole.
    export_run(run.path, out)
    assert (out / "model.safetensors").is_file()


def test_readme_snippet_runs_on_an_export(tmp_path, monkeypatch):
    """The README's loading snippet is the one a user copies: it must run as written."""
    run, encoder = image_run(tmp_path / "run", "resnet_small", {"width": 8})
    export_run(run.path, tmp_path / "encoder")
    (snippet,) = [block for block in python_blocks(README.read_text())
                  if "torch.export.load" in block]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102  (the README's own code)
    assert scope["embeddings"].shape[-1] == encoder.embed_dim


def hf_vit_folder(folder: Path, classifier: bool = False):
    """A random transformers ViT (class-token position non-zero, LayerNorm eps 1e-12) and its
    image processor, saved as a user's pretrained model would be."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, ViTModel

    torch.manual_seed(1)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, image_size=16, patch_size=4, num_labels=3)
    model = (ViTForImageClassification(config) if classifier
             else ViTModel(config, add_pooling_layer=False))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "position_embeddings" in name or "cls_token" in name:
                parameter.normal_()  # transformers initialises some of these at zero
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=MEAN,
                      image_std=STD).save_pretrained(folder)
    return model.eval()


@pytest.mark.parametrize("classifier", [False, True])
def test_transformers_vit_reads_as_the_same_network(tmp_path, classifier):
    from transformers import AutoImageProcessor

    model = hf_vit_folder(tmp_path / "vit", classifier)
    encoder = read_hf_vit(tmp_path / "vit").eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    pixels = AutoImageProcessor.from_pretrained(tmp_path / "vit")(
        images=list(images), return_tensors="pt")["pixel_values"]
    base = model.vit if classifier else model
    with torch.no_grad():
        theirs = base(pixel_values=pixels).last_hidden_state[:, 0]
        ours = encoder(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert torch.allclose(theirs, ours, atol=1e-5)


def test_init_from_an_export_starts_from_its_weights(tmp_path):
    from selfsup.api import pretrain

    common = {"progress": False, "precision": "32", "batch_size": 16,
              "cache_dir": str(tmp_path / "cache")}
    first = pretrain("simclr", "digits", out=str(tmp_path / "first"), steps=2,
                     encoder_options={"width": 4}, **common)
    export_run(first.path, tmp_path / "export")
    # A step at a vanishing lr: the run's weights are the export's, not a fresh network's.
    second = pretrain("vicreg", "digits", out=str(tmp_path / "second"), steps=1, lr=1e-12,
                      init=str(tmp_path / "export"), **common)
    spec = json.loads((second.path / "encoder.json").read_text())
    exported = json.loads((tmp_path / "export" / "encoder.json").read_text())
    assert spec["name"] == exported["name"] == "resnet_small"
    assert spec["options"]["width"] == 4  # the architecture came from --init
    before = load_file(str(tmp_path / "export" / "encoder.safetensors"))
    after = load_file(str(second.path / "encoder.safetensors"))
    trained = [k for k in before if "running" not in k and "num_batches" not in k]
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in trained)
    assert spec["options"]["mean"] == pytest.approx(exported["options"]["mean"], abs=1e-6)


def test_init_from_a_transformers_vit(tmp_path):
    from selfsup.api import pretrain

    hf_vit_folder(tmp_path / "vit")
    images = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=images)
    run = pretrain("mae", str(tmp_path / "rgb.npz"), out=str(tmp_path / "mae"), steps=1,
                   batch_size=8, progress=False, precision="32", init=str(tmp_path / "vit"))
    spec = json.loads((run.path / "encoder.json").read_text())
    assert spec["name"] == "vit" and spec["options"]["width"] == 32


def test_bad_image_starts_and_exports_are_messages(tmp_path, monkeypatch, capsys):
    run, _ = image_run(tmp_path / "rgb", "resnet_small", {"width": 4})
    (tmp_path / "empty").mkdir()
    cases = [
        (["pretrain", "simclr", "--data", "digits", "--init", str(tmp_path / "empty")],
         "neither a selfsup image encoder"),
        (["pretrain", "simclr", "--data", "digits", "--init", str(tmp_path / "missing")],
         "not a folder"),
        (["pretrain", "simclr", "--data", "digits", "--init", str(run.path), "--steps", "1"],
         "reads 3-channel images; the data has 1 channel"),
        (["pretrain", "simclr", "--data", "digits", "--init", str(run.path),
          "--encoder", "resnet18"], "leave --encoder out"),
    ]
    for args, message in cases:
        code, out, err = run_cli(monkeypatch, capsys, *args,
                                 "--out", str(tmp_path / "never"), "--no-progress")
        assert code == 2 and message in out + err, (args, out + err)
        assert not (tmp_path / "never").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    code, out, err = run_cli(monkeypatch, capsys, "export", str(run.path), "--out",
                             str(tmp_path / "notes"))
    assert code == 2 and "not an exported model" in out + err
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(SelfsupError, match="'bert' model"):
        from selfsup.methods.image_start import read_image_start

        read_image_start(tmp_path)
