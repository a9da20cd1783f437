"""Span corruption: T5's pretext task, a small encoder-decoder trained from scratch.

Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", sec. 3.1.4 and 3.3.4: drop 15% of the tokens in spans of mean length 3; in the
input each dropped span becomes one sentinel token (``<extra_id_0>``, ``<extra_id_1>`` ...),
and the target lists each sentinel followed by the tokens it hides, then ``</s>``. Targets are
short (about a quarter of the input), so the decoder costs little, and predicting whole spans
asks for more than single-token fill-in.

The noise mask follows T5's ``random_spans_noise_mask``: the number of noise tokens is
``round(length * noise_density)`` and the number of spans ``round(noise / mean_span_length)``;
noise and non-noise lengths are random partitions of those counts, interleaved starting with
non-noise. The model is a ``transformers`` T5 (encoder-decoder) built from a T5Config; the part
a user keeps is its encoder stack (selfsup's ``hf_text`` encoder, mean-pooled). The run also
holds ``tokenizer.json`` (WordPiece plus the sentinels) and ``hf/``: the whole T5 as
``transformers.T5ForConditionalGeneration.from_pretrained`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from selfsup.config import options_dataclass
from selfsup.errors import SelfsupError
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.mlm import IGNORE, write_hf_export
from selfsup.methods.registry import METHODS
from selfsup.models.hf_text import load_hf_tokenizer, mean_pool, quiet_transformers

if TYPE_CHECKING:
    from selfsup.run import RunDir

#: Sentinels added to the tokenizer (T5 has 100); a sequence has at most this many spans.
SENTINELS = 100
SENTINEL_TOKENS = tuple(f"<extra_id_{i}>" for i in range(SENTINELS))


@dataclass
class SpanOptions:
    noise_density: float = 0.15  # share of tokens dropped
    mean_span_length: float = 3.0  # mean tokens per dropped span
    # The T5 trained from scratch: encoder and decoder of layers x dim each.
    dim: int = 256
    layers: int = 4
    heads: int = 4
    dropout: float = 0.1

    def validate(self) -> None:
        if not 0 < self.noise_density < 1:
            raise SelfsupError(f"noise_density must be in (0, 1), not {self.noise_density}")
        if self.mean_span_length < 1:
            raise SelfsupError(f"mean_span_length must be at least 1, not {self.mean_span_length}")
        for name in ("dim", "layers", "heads"):
            if getattr(self, name) < 1:
                raise SelfsupError(f"{name} must be positive, not {getattr(self, name)}")
        if self.dim % self.heads:
            raise SelfsupError(f"dim {self.dim} must split into {self.heads} heads")
        if not 0 <= self.dropout <= 1:
            raise SelfsupError(f"dropout must be in [0, 1], not {self.dropout}")


def _segments(total: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random split of ``total`` into ``count`` positive parts."""
    cuts = np.sort(rng.choice(np.arange(1, total), count - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))


def random_spans_noise_mask(
    length: int,
    noise_density: float,
    mean_span_length: float,
    rng: np.random.Generator,
    max_spans: int = SENTINELS,
) -> np.ndarray:
    """Bool (length,): True where a token is dropped (T5's ``random_spans_noise_mask``)."""
    if length < 2:  # nothing to keep beside a dropped token: drop the one there is
        return np.ones(length, dtype=bool)
    noise = min(max(int(round(length * noise_density)), 1), length - 1)
    spans = max(int(round(noise / mean_span_length)), 1)
    spans = min(spans, max_spans, noise, length - noise)
    noise_lengths = _segments(noise, spans, rng)
    keep_lengths = _segments(length - noise, spans, rng)
    mask = np.zeros(length, dtype=bool)
    position = 0
    for keep, drop in zip(keep_lengths, noise_lengths, strict=True):
        position += keep
        mask[position : position + drop] = True
        position += drop
    return mask


def corrupt(
    tokens: np.ndarray, noise: np.ndarray, sentinels: list[int], eos: int
) -> tuple[list[int], list[int]]:
    """(inputs, targets): each noise span replaced by the next sentinel in the inputs; the
    targets are each sentinel followed by the span it hides; both end with ``eos``."""
    inputs: list[int] = []
    targets: list[int] = []
    span, previous = -1, False
    for token, dropped in zip(tokens.tolist(), noise.tolist(), strict=True):
        if dropped:
            if not previous:
                span += 1
                inputs.append(sentinels[span])
                targets.append(sentinels[span])
            targets.append(token)
        else:
            inputs.append(token)
        previous = dropped
    return inputs + [eos], targets + [eos]


def _padded(rows: list[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return out, mask


@METHODS.register("span")
class SpanMethod(Method):
    """T5 span corruption: encoder reads the corrupted text, decoder writes the spans."""

    Options: ClassVar[type] = SpanOptions
    # modality and config defaults: selfsup/catalog.py (what --help shows without torch)
    default_encoder: ClassVar[str] = "hf_text"
    baseline_method: ClassVar[str | None] = None  # text evaluation trains from scratch
    # What the document reader (selfsup/data/documents.py) asks of this method.
    framing: ClassVar[str] = "eos"  # tokens ... </s> ([SEP] serves as </s>)
    extra_special_tokens: ClassVar[tuple[str, ...]] = SENTINEL_TOKENS
    required_roles: ClassVar[tuple[str, ...]] = ("pad",)

    @classmethod
    def scratch_config(
        cls, vocab_size: int, block_size: int, ids: dict[str, int], options: dict[str, Any]
    ) -> Any:
        from transformers import T5Config


        opts = options_dataclass(SpanOptions, options, "options of method SpanMethod")
        opts.validate()
        return T5Config(
            vocab_size=vocab_size, d_model=opts.dim, d_kv=opts.dim // opts.heads,
            d_ff=4 * opts.dim, num_layers=opts.layers, num_decoder_layers=opts.layers,
            num_heads=opts.heads, dropout_rate=opts.dropout, pad_token_id=ids["pad"],
            eos_token_id=ids["sep"], decoder_start_token_id=ids["pad"],
        )

    def __init__(self, encoder, info, options=None, augment_options=None, channels_last=False):
        super().__init__(encoder, info, options, augment_options, channels_last)
        self.options.validate()
        config = getattr(encoder, "config", None)
        if getattr(config, "model_type", None) != "t5":
            raise SelfsupError("method 'span' needs a T5 encoder (hf_text with a T5 config)")
        extra = info.extra
        if "special_ids" not in extra:
            raise SelfsupError("method 'span' trains on text read by its document reader")

        tokenizer = load_hf_tokenizer(extra["tokenizer_file"])
        self.sentinels = [tokenizer.token_to_id(token) for token in SENTINEL_TOKENS]
        if None in self.sentinels:
            raise SelfsupError("the tokenizer lacks T5's sentinel tokens (<extra_id_N>)")
        self.pad_id = int(extra["special_ids"]["pad"])
        self.eos_id = int(extra["special_ids"]["sep"])
        from transformers import T5ForConditionalGeneration

        quiet_transformers()
        t5 = T5ForConditionalGeneration(config)
        # One set of weights: the encoder stack and embedding are the selfsup encoder's.
        t5.shared = encoder.model.shared
        t5.encoder = encoder.model.encoder
        t5.decoder.embed_tokens = encoder.model.shared
        t5.tie_weights()
        self.t5 = t5  # tied tensors are copied on export (run.save_encoder)

    def corrupt_batch(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Corrupted inputs (and mask) and target labels (padding = IGNORE) of a batch."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        ids = input_ids.cpu().numpy()
        lengths = attention_mask.sum(1).cpu().numpy()
        inputs, targets = [], []
        o = self.options
        for row, length in zip(ids, lengths, strict=True):
            content = row[: int(length) - 1]  # without the closing </s>
            noise = random_spans_noise_mask(
                len(content), o.noise_density, o.mean_span_length, rng, len(self.sentinels)
            )
            source, target = corrupt(content, noise, self.sentinels, self.eos_id)
            inputs.append(source)
            targets.append(target)
        source_ids, source_mask = _padded(inputs, self.pad_id)
        labels, target_mask = _padded(targets, IGNORE)
        device = input_ids.device
        return {"input_ids": source_ids.to(device), "attention_mask": source_mask.to(device),
                "labels": labels.to(device)}

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:

        corrupted = self.corrupt_batch(batch["input_ids"], batch["attention_mask"], generator)
        out = self.t5(**corrupted)
        labels = corrupted["labels"]
        predicted = labels != IGNORE
        accuracy = (out.logits.argmax(-1)[predicted] == labels[predicted]).float().mean()
        return StepOutput(
            loss=out.loss,
            embeddings=mean_pool(out.encoder_last_hidden_state.detach(),
                                 corrupted["attention_mask"]),
            logs={"target_accuracy": accuracy.detach()},
        )

    def on_fit_end(self, run: RunDir) -> None:
        """``tokenizer.json`` and ``hf/`` (the whole T5 + tokenizer) in the run."""
        write_hf_export(run, self.info.extra["tokenizer_file"], self.t5)
