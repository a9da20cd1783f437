"""The one error type a user should ever see: a problem with their input or set-up.

The CLI prints its message on one line and exits with code 2; no traceback. Raise it with a
message that names the file (and line, row or index) and what was wrong.
"""

from __future__ import annotations


class SelfsupError(Exception):
    """Bad input or an impossible request, explained in words for the user (exit code 2)."""

    exit_code = 2
    label = "error"  # how the CLI opens the line


class Interrupted(SelfsupError):
    """The user stopped the run (Ctrl-C); the message says what was kept and how to go on."""

    exit_code = 130  # the shell's code for a process ended by SIGINT
    label = "interrupted"


class DiskFull(SelfsupError):
    """No space left while writing ``path``; a run adds what it kept and how to go on."""

    def __init__(self, path: str) -> None:
        super().__init__(f"no space left on the device while writing {path}")
        self.path = path
