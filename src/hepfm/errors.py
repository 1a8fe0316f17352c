"""User-facing errors.

Anything a user can cause (a bad file, a wrong option) raises :class:`HepfmInputError`; the CLI
prints its one-line message and exits with status 2, without a traceback. Bugs stay tracebacks.
"""

from __future__ import annotations

from pathlib import Path


class HepfmInputError(Exception):
    """Bad user input: the message names the file (if any) and the problem in one line."""

    exit_code = 2

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
