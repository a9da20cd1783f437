"""`selfsup.load(RUN)`: a run's exported encoder as an object that embeds raw inputs.

    enc = selfsup.load("runs/simclr-1")
    vectors = enc.embed(["cat.jpg", "dog.png"])      # float32 (2, enc.dim)

A loaded encoder (`Embedder`) owns the preprocessing that turns its modality's raw inputs
(images: paths, PIL images, uint8 arrays) into what the network consumes, so scripts never
re-implement it. One class per modality is registered in `EMBEDDERS`; the run's `encoder.json`
names the modality ("image" when absent, as in runs written before modalities existed). A text
or CLIP embedder registers itself the same way and lists the query modalities it accepts in
`modalities` (CLIP: both), which is what `selfsup search` checks a query against.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageOps

from selfsup.augment import to_float_images
from selfsup.config import inference_precision
from selfsup.data.images import resize_pil, to_rgb
from selfsup.errors import SelfsupError
from selfsup.models import build_encoder
from selfsup.models.hf_text import (
    load_hf_tokenizer,
    quiet_transformers,
    tokenize,
)
from selfsup.registry import Registry
from selfsup.run import (
    HEADS_SPEC,
    HEADS_WEIGHTS,
    TEXT_SPEC,
    TEXT_WEIGHTS,
    TOKENIZER,
    RunDir,
    as_run,
    load_encoder,
)
from selfsup.text_models import TextModel, run_tokenizer, text_features, tokenize_texts

EMBEDDERS: Registry = Registry("encoder modality")


class Embedder:
    """A frozen encoder plus the preprocessing of its modality; `embed` returns float32 numpy.

    Subclasses set `modality`, `modalities` (query kinds they can embed) and implement
    `prepare` (raw inputs -> one model-ready batch tensor).
    """

    modality: ClassVar[str] = "image"
    modalities: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(
        self,
        run: RunDir,
        encoder: torch.nn.Module,
        spec: dict[str, Any],
        *,
        precision: str = "auto",
        batch_size: int = 256,
    ) -> None:
        if precision not in ("auto", "bf16", "32"):
            raise SelfsupError(f"precision must be 'auto', 'bf16' or '32', got {precision!r}")
        precision = inference_precision(precision)  # bf16 only where it is native
        if batch_size < 1:
            raise SelfsupError(f"batch_size must be at least 1, got {batch_size}")
        self.run, self.encoder, self.spec = run, encoder.eval(), spec
        self.precision, self.batch_size = precision, batch_size
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        return int(self.encoder.embed_dim)

    @property
    def name(self) -> str:
        return str(self.spec.get("name", "?"))

    @property
    def fingerprint(self) -> str:
        """sha256 of the exported weights: identifies the encoder wherever the run folder moves."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            with open(self.run.encoder_weights, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """What an embeddings file or an index records about the encoder that made it."""
        return {
            "run": str(self.run.path),
            "encoder": self.name,
            "dim": self.dim,
            "modality": self.modality,
            "encoder_sha256": self.fingerprint,
        }

    # ------------------------------------------------------------------------- embedding ----

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> np.ndarray:
        """Embeddings (B, dim) float32 of one model-ready batch (what `prepare` returns)."""
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.encoder(batch)
        return out.float().numpy()

    def prepare(self, inputs: Sequence[Any]) -> torch.Tensor:
        raise NotImplementedError

    def as_list(self, inputs: Any) -> list[Any]:
        """A single raw input or a sequence of them, as a list."""
        return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]

    def embed(self, inputs: Any) -> np.ndarray:
        """Float32 embeddings (N, dim) of raw inputs, `batch_size` at a time (bounded memory)."""
        items = self.as_list(inputs)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            out[start : start + len(chunk)] = self.forward(self.prepare(chunk))
        return out

    def embed_query(self, query: Any, modality: str) -> np.ndarray:
        """One query's embedding (1, dim); a query of a modality the run cannot embed: error."""
        if modality not in self.modalities:
            kinds = " and ".join(_PLURAL.get(m, m) for m in self.modalities)
            raise SelfsupError(
                f"{self.run.path} is {_article(self.modality)} {self.modality} run (its encoder"
                f" embeds {kinds}), so it cannot embed a {modality} query; {self.query_hint()}"
            )
        return self.embed([query])

    def query_hint(self) -> str:
        return "search it with a query of its own modality"


@EMBEDDERS.register("image")
class ImageEmbedder(Embedder):
    """Images in: file paths, PIL images, or uint8 arrays (H,W), (H,W,C) or a batch (N,H,W,C).

    Each image is brought to the encoder's input exactly as the folder reader would: EXIF
    rotation, RGB (alpha onto white) or greyscale to match the encoder's channels, shorter side
    resized to the run's image size and centre-cropped.
    """

    modality: ClassVar[str] = "image"
    modalities: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(self, run: RunDir, encoder: torch.nn.Module, spec: dict[str, Any],
                 **kwargs: Any) -> None:
        super().__init__(run, encoder, spec, **kwargs)
        try:
            self.image_size = int(spec["image_size"])
            self.channels = int(spec["channels"])
        except (KeyError, TypeError, ValueError):
            raise SelfsupError(
                f"{run.encoder_spec}: an image encoder needs 'image_size' and 'channels'"
            ) from None

    def as_list(self, inputs: Any) -> list[Any]:
        if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
            return list(inputs)  # a batch (N, H, W, C): one view per image, no copy
        if isinstance(inputs, (list, tuple)):
            return list(inputs)
        return [inputs]

    def prepare(self, inputs: Sequence[Any]) -> torch.Tensor:
        batch = np.stack([self.to_array(x) for x in inputs])
        return self.to_tensor(batch)

    def to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 (B, S, S, C) -> the float channels-last tensor the encoder takes."""
        tensor = to_float_images(torch.from_numpy(np.ascontiguousarray(batch)))
        return tensor.contiguous(memory_format=torch.channels_last)

    def to_array(self, item: Any) -> np.ndarray:
        """One raw image -> uint8 (S, S, C) for this encoder."""
        size, channels = self.image_size, self.channels
        if isinstance(item, (str, Path)):
            image = _open_image(Path(item))
        elif isinstance(item, Image.Image):
            image = to_rgb(item) if item.mode not in ("RGB", "L") else item
        elif isinstance(item, np.ndarray):
            if item.dtype != np.uint8:
                raise SelfsupError(
                    f"image arrays must be uint8 (0..255), got {item.dtype}; convert first,"
                    f" e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1]"
                )
            if item.ndim == 3 and item.shape[-1] == 1:
                item = item[..., 0]
            if item.ndim == 3 and item.shape[-1] == channels == 3 and item.shape[:2] == (size,) * 2:
                return item  # already model-sized
            if item.ndim == 2 and channels == 1 and item.shape == (size, size):
                return item[..., None]
            if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[-1] not in (3, 4)):
                raise SelfsupError(
                    f"an image array must have shape (H, W) or (H, W, C) with C in 1, 3, 4, got"
                    f" {item.shape}"
                )
            image = to_rgb(Image.fromarray(np.ascontiguousarray(item)))
        else:
            raise SelfsupError(
                f"cannot embed {type(item).__name__} with an image encoder; pass file paths, PIL"
                f" images or uint8 arrays"
            )
        image = image.convert("L") if channels == 1 else image.convert("RGB")
        image = resize_pil(image, size)
        return np.asarray(image, dtype=np.uint8).reshape(size, size, channels)

    def query_hint(self) -> str:
        return "pass --image PATH to search by image, or use a text or CLIP run for text queries"


@EMBEDDERS.register("image_text")
class CLIPEmbedder(ImageEmbedder):
    """A CLIP run (selfsup/methods/clip.py): images and text into one shared space.

    ``embed`` takes images as :class:`ImageEmbedder` does (so `selfsup embed` reads images);
    ``embed_text`` takes strings; both return L2-normalised projections, so a dot product is
    the cosine similarity the model was trained on. `selfsup search RUN "a red car"` embeds the
    text with the text tower and searches an index of image embeddings.
    """

    modality: ClassVar[str] = "image"  # what `selfsup embed` reads
    modalities: ClassVar[tuple[str, ...]] = ("image", "text")

    def __init__(self, run: RunDir, encoder: torch.nn.Module, spec: dict[str, Any],
                 **kwargs: Any) -> None:
        super().__init__(run, encoder, spec, **kwargs)
        import json

        from safetensors.torch import load_file


        needed = [TEXT_WEIGHTS, TEXT_SPEC, TOKENIZER, HEADS_WEIGHTS,
                  HEADS_SPEC]
        missing = [name for name in needed if not (run.path / name).is_file()]
        if missing:
            raise SelfsupError(
                f"{run.path} is a CLIP run without {', '.join(missing)}; did its pre-training "
                "finish?"
            )
        quiet_transformers()
        text_spec = json.loads((run.path / TEXT_SPEC).read_text(encoding="utf-8"))
        self.text_encoder = build_encoder(text_spec["name"], config=text_spec["config"])
        self.text_encoder.load_state_dict(load_file(str(run.path / TEXT_WEIGHTS)))
        self.text_encoder.eval()
        self.tokenizer = load_hf_tokenizer(run.path / TOKENIZER)
        self.clip_spec = json.loads((run.path / HEADS_SPEC).read_text(encoding="utf-8"))
        heads = load_file(str(run.path / HEADS_WEIGHTS))
        self.image_projection = heads["image_projection"]
        self.text_projection = heads["text_projection"]
        self.logit_scale = float(heads["logit_scale"][0])

    @property
    def dim(self) -> int:
        return int(self.image_projection.shape[0])

    @property
    def fingerprint(self) -> str:
        """sha256 of the image tower and the projections: what an image embedding depends on."""
        if self._fingerprint is None:

            digest = hashlib.sha256()
            for path in (self.run.encoder_weights, self.run.path / HEADS_WEIGHTS):
                with open(path, "rb") as handle:
                    for block in iter(lambda h=handle: h.read(1 << 20), b""):
                        digest.update(block)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _autocast(self) -> Any:
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> np.ndarray:
        """Normalised shared-space embeddings (B, dim) of one model-ready image batch."""
        with self._autocast():
            features = self.encoder(batch).float()
        projected = features @ self.image_projection.T
        return torch.nn.functional.normalize(projected, dim=1).numpy()

    @torch.inference_mode()
    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Normalised shared-space embeddings (N, dim) float32 of captions or queries."""

        items = [texts] if isinstance(texts, str) else list(texts)
        for item in items:
            if not isinstance(item, str):
                raise SelfsupError(f"text queries must be strings, not {type(item).__name__}")
        out = np.empty((len(items), self.dim), dtype=np.float32)
        length = int(self.clip_spec.get("max_caption_tokens", 32))
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            ids, mask, _ = tokenize(self.tokenizer, chunk, length)
            with self._autocast():
                features = self.text_encoder(ids, mask).float()
            projected = torch.nn.functional.normalize(features @ self.text_projection.T, dim=1)
            out[start : start + len(chunk)] = projected.numpy()
        return out

    def embed_query(self, query: Any, modality: str) -> np.ndarray:
        if modality == "text":
            return self.embed_text([query])
        return super().embed_query(query, modality)


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise SelfsupError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            im.load()
            if "exif" in im.info:
                im = ImageOps.exif_transpose(im) or im
            return to_rgb(im)
    except SelfsupError:
        raise
    except Exception as error:  # any decode failure is this file's problem
        raise SelfsupError(f"{path}: cannot read image ({type(error).__name__}: {error})") from None


@EMBEDDERS.register("text")
class TextEmbedder(Embedder):
    """Texts in (str or a list of str): tokenised with the run's tokenizer, cut to the model's
    sentence length (``max_length``: its starting folder's ``max_seq_length``, else its
    positions up to 512; the number cut is logged), pooled as the encoder says (mean over
    the real tokens, or its starting model's sentence-transformers pooling + normalisation).

    Serves runs whose encoder is ``hf_text`` (masked-LM, span corruption, SimCSE, TSDAE,
    continued pre-training); the tokenizer is the run's ``hf/tokenizer.json`` (or its init
    folder's).
    """

    modality: ClassVar[str] = "text"
    modalities: ClassVar[tuple[str, ...]] = ("text",)

    def __init__(self, run: RunDir, encoder: torch.nn.Module, spec: dict[str, Any],
                 **kwargs: Any) -> None:
        super().__init__(run, encoder, spec, **kwargs)

        if spec.get("name") != "hf_text":
            raise SelfsupError(
                f"{run.path}: embedding text needs an hf_text encoder (mlm, span, simcse, "
                f"tsdae); this run's encoder is {spec.get('name')!r}"
            )
        self.model = TextModel(self.encoder, run_tokenizer(run.path, run.read_config()),
                               str(run.path))
        # The length its export's sentence-transformers folder declares: both encode alike.
        self.max_length = self.model.sentence_length

    def as_list(self, inputs: Any) -> list[Any]:
        items = [inputs] if isinstance(inputs, str) else list(inputs)
        bad = [type(x).__name__ for x in items if not isinstance(x, str)]
        if bad:
            raise SelfsupError(f"a text encoder embeds strings, not {bad[0]}")
        return items

    def embed(self, inputs: Any) -> np.ndarray:

        tokens = tokenize_texts(self.model, self.as_list(inputs), self.max_length)
        return text_features(self.encoder, tokens, self.model.pad_id,
                             batch_size=self.batch_size, precision=self.precision)

    def query_hint(self) -> str:
        return "search it with a text query"


_PLURAL = {"image": "images", "series": "series", "text": "text"}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def load(run: str | Path, *, precision: str = "auto", batch_size: int = 256) -> Embedder:
    """The run's exported encoder, ready to embed raw inputs of its modality."""
    run_dir = as_run(run)
    encoder, spec = load_encoder(run_dir)
    modality = str(spec.get("modality", "image"))
    if modality not in EMBEDDERS:
        raise SelfsupError(
            f"{run_dir.encoder_spec}: no embedder for modality {modality!r}; known:"
            f" {', '.join(EMBEDDERS.names())}"
        )
    cls = EMBEDDERS.get(modality)
    return cls(run_dir, encoder, spec, precision=precision, batch_size=batch_size)


def batched(n: int, size: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """[a, b) row ranges covering start..n in steps of `size`."""
    for a in range(start, n, size):
        yield a, min(a + size, n)


__all__ = ["EMBEDDERS", "CLIPEmbedder", "Embedder", "ImageEmbedder", "batched", "load"]
