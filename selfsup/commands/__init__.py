"""The work of each `selfsup` verb, imported only when that verb runs.

selfsup/cli.py declares the verbs and their options (``--help`` and the argument errors need
nothing more); each verb's body is a function here, named there as ``"selfsup.commands.<module>:
<function>"`` and called with the parsed options by name. So ``selfsup --help`` loads none of
torch, Lightning or transformers, and a verb loads only what it uses: ``selfsup search`` the
index and the encoder, not the training engine.
"""

from __future__ import annotations

from rich.console import Console

#: Where every verb prints its results.
console = Console()
