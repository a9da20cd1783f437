"""The one error type a user should ever see: a problem with their input or set-up.

The CLI prints its message on one line and exits with code 2; no traceback. Raise it with a
message that names the file (and line, row or index) and what was wrong.
"""

from __future__ import annotations


class SelfsupError(Exception):
    """Bad input or an impossible request, explained in words for the user (exit code 2)."""

    exit_code = 2
