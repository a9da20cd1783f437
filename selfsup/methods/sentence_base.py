"""What the sentence-embedding methods (SimCSE, TSDAE) share: the data, the start, the export.

Both adapt a sentence encoder to the user's corpus without labels, so they read one document per
sequence (``packing=document``: a sentence or a review, never a window across two) framed
``[CLS] ... [SEP]``, start from ``--init PATH`` (a local Hugging Face / sentence-transformers
folder, its weights loaded into the encoder) or from a small BERT trained from scratch, and pool
as the starting model pools (the document reader reads its sentence-transformers config). After
training the run holds, beside the selfsup encoder, ``tokenizer.json`` and ``hf/``: the encoder
and its tokenizer as ``transformers.AutoModel`` reads them, which is also a sentence-transformers
folder (``modules.json``, ``1_Pooling``, ``2_Normalize`` where the start had it) that
``SentenceTransformer(path)`` loads and that encodes as ``selfsup.load(run).embed`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from selfsup.config import options_dataclass
from selfsup.errors import SelfsupError
from selfsup.methods.base import Method
from selfsup.methods.mlm import write_hf_export
from selfsup.models.hf_text import small_bert_config

if TYPE_CHECKING:
    from selfsup.run import RunDir


@dataclass
class SentenceOptions:
    # The model trained from scratch (ignored with --init): a BERT of layers x dim.
    dim: int = 256
    layers: int = 4
    heads: int = 4
    # Dropout of the encoder (None: the starting model's own; 0.1 from scratch).
    dropout: float | None = None

    def validate(self) -> None:
        if self.dim % self.heads:
            raise SelfsupError(f"dim {self.dim} must split into {self.heads} heads")


class SentenceMethod(Method):
    """Base of the sentence-embedding methods: subclasses set ``Options`` (a subclass of
    :class:`SentenceOptions`) and implement ``training_step``."""

    Options: ClassVar[type] = SentenceOptions
    # modality and config defaults: selfsup/catalog.py (what --help shows without torch)
    default_encoder: ClassVar[str] = "hf_text"
    baseline_method: ClassVar[str | None] = None  # text evaluation trains from scratch
    # What the document reader (selfsup/data/documents.py) asks of this method.
    framing: ClassVar[str] = "cls_sep"
    extra_special_tokens: ClassVar[tuple[str, ...]] = ()
    required_roles: ClassVar[tuple[str, ...]] = ()
    supports_init: ClassVar[bool] = True
    document_defaults: ClassVar[dict[str, Any]] = {"packing": "document"}
    needs_distinct_texts: ClassVar[bool] = False
    # Each batch is padded to its longest document (TSDAE's deletions change it again): a new
    # width nearly every step, so --compile on makes the width dynamic; and --compile auto stays
    # eager: compiling MiniLM's step bought 1-9% a step, less than the compiling cost within 3
    # minutes (benchmarks/text_compile.py).
    compile_dynamic: ClassVar[bool | None] = None
    compile_auto: ClassVar[bool] = False

    @classmethod
    def scratch_config(
        cls, vocab_size: int, block_size: int, ids: dict[str, int], options: dict[str, Any]
    ) -> Any:
        """The BERT trained when there is no --init: sized by the method options."""
        opts = options_dataclass(cls.Options, options, f"options of method {cls.__name__}")
        opts.validate()
        dropout = 0.1 if opts.dropout is None else opts.dropout
        return small_bert_config(vocab_size, dim=opts.dim, layers=opts.layers, heads=opts.heads,
                                 max_length=block_size, pad_token_id=ids.get("pad", 0),
                                 dropout=dropout)

    def __init__(self, encoder, info, options=None, augment_options=None, channels_last=False):
        super().__init__(encoder, info, options, augment_options, channels_last)
        self.options.validate()
        name = type(self).__name__
        if not hasattr(encoder, "tokens") or not hasattr(encoder, "model"):
            raise SelfsupError(f"method {name} needs a Hugging Face text encoder (hf_text)")
        if "special_ids" not in info.extra:
            raise SelfsupError(f"method {name} trains on text read by its document reader")
        self.init = info.extra.get("init")
        if self.init:
            encoder.load_weights(self.init)
            if self.options.dropout is not None:
                set_dropout(encoder.model, self.options.dropout)

    def on_fit_end(self, run: RunDir) -> None:
        """``tokenizer.json`` and ``hf/`` (transformers + sentence-transformers) in the run."""
        write_hf_export(run, self.info.extra["tokenizer_file"], self.encoder.model,
                        sentence=self.encoder.sentence_config())


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout of a ``transformers`` model at ``p``, recorded in its config (exported)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout_rate",
                 "dropout", "attention_dropout"):
        if isinstance(getattr(model.config, name, None), float):
            setattr(model.config, name, p)


__all__ = ["SentenceMethod", "SentenceOptions", "set_dropout"]
