"""User-facing errors: one line that names the fix."""

from __future__ import annotations


class BenchError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits 1."""
