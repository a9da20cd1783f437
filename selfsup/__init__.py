"""selfsup: self-supervised pre-training and an honest verdict on whether it helped.

    import selfsup
    run = selfsup.pretrain("simclr", "digits", minutes=1)
    selfsup.evaluate(run.path, "digits")
"""

# The evaluate package, callable as the API function: its subpackages stay reachable.
from selfsup import evaluate
from selfsup.api import PretrainConfig, pretrain
from selfsup.errors import SelfsupError
from selfsup.loading import load

__all__ = ["PretrainConfig", "SelfsupError", "evaluate", "load", "pretrain"]
__version__ = "0.1.0"
