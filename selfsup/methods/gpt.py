"""GPT: generative pre-training by next-token prediction.

Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training", and 2019,
"Language Models are Unsupervised Multitask Learners": maximise the likelihood of every token
given the tokens before it. Every position of every window is a training example, so the
pretext task needs no augmentation; the causal mask of the encoder (selfsup/models/gpt.py) is
what keeps it from being trivial.

After training the method writes what generation and export need beside the encoder:
``tokenizer.json`` and ``language.json`` (validation loss over the validation split, every
token of it up to ``eval_token_limit``, bits per character or byte; selfsup/evaluate/language.py).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from selfsup import atomic
from selfsup.data.tokens import Shards, load_tokenizer, unit_lengths
from selfsup.errors import SelfsupError
from selfsup.evaluate.language import validation_loss
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.registry import METHODS

if TYPE_CHECKING:
    from selfsup.run import RunDir

log = logging.getLogger("selfsup")


@dataclass
class GPTOptions:
    evaluate: bool = True  # score the whole validation split after training
    # "auto": bf16 where the CPU has it natively (as training ran), else fp32; or "bf16", "32"
    eval_precision: str = "auto"
    eval_batch_size: int = 64
    # Validation targets scored at most (evenly spaced whole windows beyond it), so a huge
    # corpus's split cannot take longer than the training: None is language.MAX_EVAL_TOKENS,
    # 0 scores the whole split however long it is.
    eval_token_limit: int | None = None

    def validate(self) -> None:
        if self.eval_precision not in ("auto", "bf16", "32"):
            raise SelfsupError(
                f"eval_precision must be 'auto', 'bf16' or '32', not {self.eval_precision!r}"
            )
        if self.eval_batch_size < 1:
            raise SelfsupError(f"eval_batch_size must be positive, not {self.eval_batch_size}")
        if self.eval_token_limit is not None and self.eval_token_limit < 0:
            raise SelfsupError(
                f"eval_token_limit must be >= 0 (0: the whole split), not {self.eval_token_limit}"
            )


@METHODS.register("gpt")
class GPTMethod(Method):
    """Next-token cross-entropy on windows of ``block_size + 1`` tokens."""

    Options: ClassVar[type] = GPTOptions
    # modality and config defaults: selfsup/catalog.py (what --help shows without torch)
    default_encoder: ClassVar[str] = "gpt_small"
    baseline_method: ClassVar[str | None] = None  # a language model: no supervised baseline

    def __init__(self, encoder, info, options=None, augment_options=None, channels_last=False):
        super().__init__(encoder, info, options, augment_options, channels_last)
        self.options.validate()
        if not hasattr(encoder, "logits"):
            raise SelfsupError("method 'gpt' needs a language-model encoder such as gpt_small")
        config = encoder.config
        if info.length is not None and config.block_size < info.length:
            raise SelfsupError(
                f"the encoder's block_size {config.block_size} is shorter than the data's "
                f"context of {info.length} tokens; set --block-size, not an encoder option"
            )
        if info.vocab_size is not None and config.vocab_size < info.vocab_size:
            raise SelfsupError(
                f"the encoder's vocab_size {config.vocab_size} is below the tokenizer's "
                f"{info.vocab_size}; the data sets it, leave it out of the encoder options"
            )

    def training_step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> StepOutput:
        tokens = batch["tokens"]
        hidden = self.encoder.hidden(tokens[:, :-1])
        logits = self.encoder.head(hidden)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        return StepOutput(loss=loss, embeddings=hidden.detach().mean(dim=1))

    def on_fit_end(self, run: RunDir) -> None:
        extra = self.info.extra
        if "tokenizer_file" not in extra:  # trained on something other than the text reader
            return
        target = run.path / "tokenizer.json"
        with atomic.atomic_path(target) as tmp:
            shutil.copyfile(extra["tokenizer_file"], tmp)
        if not self.options.evaluate:
            return
        result = evaluate_run_data(self.encoder, extra, self.options)
        atomic.write_json(run.path / "language.json", result)
        unit = "character" if extra["tokenizer"] == "char" else "byte"
        if result["sampled"]:
            log.info(
                "validation loss %.4f over %d of the split's %d tokens (evenly spaced windows; "
                "--method-option eval_token_limit=0 scores all), %.3f bits per %s",
                result["loss"], result["tokens"], result["split_tokens"],
                result[f"bits_per_{unit}"], unit,
            )
        else:
            log.info(
                "validation loss %.4f over the whole split (%d tokens), %.3f bits per %s",
                result["loss"], result["tokens"], result[f"bits_per_{unit}"], unit,
            )


def evaluate_run_data(encoder, extra: dict, options: GPTOptions) -> dict:
    """Validation loss of ``encoder`` on the shards named in the data's ``extra`` (the whole
    split up to ``options.eval_token_limit`` targets)."""
    shards = Shards.open(extra["shards"])
    begin, end = extra["val_range"]
    tokenizer = load_tokenizer(extra["tokenizer_file"])
    unit = "character" if extra["tokenizer"] == "char" else "byte"
    result = validation_loss(
        encoder,
        shards.tokens()[begin:end],
        batch_size=options.eval_batch_size,
        precision=options.eval_precision,
        unit_lengths=unit_lengths(tokenizer),
        unit=unit,
        max_tokens=options.eval_token_limit,
    )
    result["split"] = "tuning" if extra["text_options"].get("tuning") else "validation"
    result["val_range"] = [begin, end]
    return result
