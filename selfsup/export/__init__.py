"""Exports of trained models to folders other tools load: a GPT as a Hugging Face Llama
(hf.py); an image encoder as a ``torch.export`` program, a ViT as a transformers ViT too
(image.py); a text encoder as the Hugging Face (sentence-transformers) folder its run wrote."""

from __future__ import annotations

import shutil
from pathlib import Path

from selfsup import atomic
from selfsup.errors import SelfsupError
from selfsup.export.hf import check_out_folder, export_hf
from selfsup.export.image import export_image
from selfsup.run import as_run, read_encoder_spec


def export_run(run_path: str | Path, out: str | Path) -> tuple[Path, str]:
    """Export the run's model to ``out``; return the folder and how to load it."""
    run = as_run(run_path)
    modality = read_encoder_spec(run).get("modality")
    if modality == "image":
        path = export_image(run.path, out)
        return path, (f"torch.export.load({str(path / 'encoder.pt2')!r}).module(); "
                      f"its README.md says more")
    if modality == "text" and (run.path / "hf").is_dir():  # mlm, span, simcse, tsdae
        check_out_folder(out)
        with atomic.atomic_folder(out) as staging:
            shutil.copytree(run.path / "hf", staging, dirs_exist_ok=True)
        sentence = (Path(out) / "modules.json").is_file()
        return Path(out), (f"sentence_transformers.SentenceTransformer({str(out)!r})" if sentence
                           else f"transformers.AutoModel.from_pretrained({str(out)!r})")
    if modality not in (None, "text"):
        raise SelfsupError(f"{run.path} holds a {modality} encoder; export writes language "
                           "models (gpt), text encoders and image encoders")
    path = export_hf(run.path, out)
    return path, f"transformers.AutoModelForCausalLM.from_pretrained({str(path)!r})"


__all__ = ["export_hf", "export_image", "export_run"]
