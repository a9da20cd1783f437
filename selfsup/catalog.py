"""What ``selfsup pretrain --help`` shows of the methods and encoders, declared without torch.

``--help`` lists each method by modality, the config defaults each method changes (and those
a ``--init`` start changes), and the registered encoder names. The method and encoder modules
import torch (and some Lightning or transformers), so ``--help`` cannot import them to ask.

**The choice: this module is the one place that metadata is declared, and the registries read
it.** ``METHODS`` (selfsup/methods/registry.py) is built with :data:`METHOD_CARDS`: when a
method class registers under a name declared here, the registry sets its ``modality``,
``config_defaults`` and ``init_config_defaults`` from the card, and refuses a class that sets
any of them itself, so there is no second copy to drift (selfsup/registry.py). A generated
manifest checked by a test was the alternative; it keeps two copies, one of them written by a
tool, where this keeps one. What else a method declares (its options, encoder, hooks) stays in
its module: only what ``--help`` needs is here.

Encoder names are the registration names themselves (``@ENCODERS.register("resnet18")`` in
each encoder module): :data:`ENCODER_NAMES` repeats them for ``--help``, and
``tests/test_startup.py`` fails when the two lists differ, as it does when a method registers
without a card here or a card has no method. Adding a method is therefore its file, its import
line in selfsup/methods/__init__.py and its card below.

Nothing here imports more than the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MethodCard:
    """A method's metadata the command line shows: the registry sets it on the method's class."""

    #: The data the method trains on; it picks the reader (selfsup/data/base.py).
    modality: str = "image"
    #: PretrainConfig defaults that suit this method better (batch size, lr); the user's recipe
    #: and options win over them.
    config_defaults: dict[str, Any] = field(default_factory=dict)
    #: What a ``--init`` start (a pretrained Hugging Face folder) wants over ``config_defaults``.
    init_config_defaults: dict[str, Any] = field(default_factory=dict)

    def class_attributes(self) -> dict[str, Any]:
        """The class attributes the registry sets (fresh dicts: a class may not share them)."""
        return {"modality": self.modality, "config_defaults": dict(self.config_defaults),
                "init_config_defaults": dict(self.init_config_defaults)}


#: Every built-in method by its registered name (defaults and their sources: each module).
METHOD_CARDS: dict[str, MethodCard] = {
    # Images (selfsup/methods/<name>.py).
    "barlowtwins": MethodCard(),
    "byol": MethodCard(),
    "dino": MethodCard(),
    "mae": MethodCard(),
    "mocov2": MethodCard(),
    "mocov3": MethodCard(),
    "simclr": MethodCard(),
    "simsiam": MethodCard(),
    "supervised": MethodCard(),
    "vicreg": MethodCard(),
    # Image-caption pairs.
    "clip": MethodCard("image_text", {"batch_size": 256, "lr": 1e-3}),
    # Text. gpt: in minutes on a CPU the number of steps is what counts: a small model only
    # leaves the loss plateau where it predicts from the last character or two after a few
    # hundred updates, so small batches (8 windows, 1k tokens) beat large ones at equal tokens
    # per second. Muon on the linear layers' weights (selfsup/optim.py): on the tuning split
    # it reached in 135 s 1.47 where AdamW reached 1.52, and in 30 s 1.70 against 1.72.
    # AdamW's beta2, the clipping and the weight decay are nanoGPT's for Shakespeare. Chosen
    # on the tuning split of Tiny Shakespeare (benchmarks/shakespeare_char.py --tuning).
    "gpt": MethodCard("text", {"batch_size": 8, "lr": 6e-3, "optimizer": "muon",
                               "adam_beta2": 0.99, "grad_clip": 1.0, "weight_decay": 0.1}),
    # mlm: BERT-style schedule: AdamW, weight decay 0.01, warm-up (Devlin et al. 2019, appendix
    # A.2; RoBERTa 6%). lr 5e-4 suits a small model from scratch; a pretrained one (--init)
    # takes a smaller lr, as in continued pre-training (Gururangan et al.).
    "mlm": MethodCard("text", {"batch_size": 32, "lr": 5e-4, "weight_decay": 0.01,
                               "warmup_fraction": 0.06, "grad_clip": 1.0}, {"lr": 1e-4}),
    # simcse, tsdae: sentence encoders (a sentence-transformers folder such as MiniLM, or a
    # model without a masked-LM head) are adapted with these; mlm is for models trained with
    # it. A pretrained start takes the papers' lr (3e-5) and batch (SimCSE 64, appendix A;
    # TSDAE 8); from scratch a small BERT, mlm's schedule. TSDAE's batch is small because its
    # decoder scores every token against the whole vocabulary.
    "simcse": MethodCard("text", {"batch_size": 64, "lr": 5e-4, "weight_decay": 0.01,
                                  "warmup_fraction": 0.06, "grad_clip": 1.0}, {"lr": 3e-5}),
    "tsdae": MethodCard("text", {"batch_size": 8, "lr": 5e-4, "weight_decay": 0.01,
                                 "warmup_fraction": 0.06, "grad_clip": 1.0}, {"lr": 3e-5}),
    # span: T5 pre-trained with Adafactor at 1e-2; AdamW at 1e-3 suits a small model here.
    "span": MethodCard("text", {"batch_size": 32, "lr": 1e-3, "weight_decay": 0.01,
                                "warmup_fraction": 0.06, "grad_clip": 1.0}),
    # Series (selfsup/methods/series_base.py and its subclasses).
    "supervised-series": MethodCard("series"),
    "ts-contrast": MethodCard("series"),
    "ts-mask": MethodCard("series"),
}

#: Every built-in encoder's registered name (selfsup/models/).
ENCODER_NAMES: tuple[str, ...] = (
    "dilated_cnn", "gpt_small", "gpt_tiny", "hf_text", "patch_transformer", "resnet18",
    "resnet_small", "vit", "vit_small", "vit_tiny",
)


def methods_by_modality() -> dict[str, list[str]]:
    """Method names grouped by modality, both sorted."""
    grouped: dict[str, list[str]] = {}
    for name in sorted(METHOD_CARDS):
        grouped.setdefault(METHOD_CARDS[name].modality, []).append(name)
    return dict(sorted(grouped.items()))


def method_defaults() -> dict[str, dict[str, Any]]:
    """What each method changes of the config's defaults (``--help`` shows it per option)."""
    changed: dict[str, dict[str, Any]] = {}
    for name, card in sorted(METHOD_CARDS.items()):
        if card.config_defaults:
            changed[name] = dict(card.config_defaults)
        if card.init_config_defaults:
            changed[f"{name} --init"] = dict(card.init_config_defaults)
    return changed


__all__ = ["ENCODER_NAMES", "METHOD_CARDS", "MethodCard", "method_defaults",
           "methods_by_modality"]
