"""Errors that are the user's to fix. The ``paw`` command prints them as one line, ``paw: error: ...``,
without a traceback, and exits with the error's ``exit_code``; code that calls ``cli_main`` or the
classes directly sees the exception itself."""

from __future__ import annotations


class PawError(Exception):
    """Base of paw's own user-facing errors."""

    exit_code = 2


class NonFiniteTrainingError(PawError, RuntimeError):
    """Training kept producing a non-finite loss or gradient, or non-finite weights were about to be saved."""

    exit_code = 1


class GameGenerationError(PawError, RuntimeError):
    """A TextWorld game could not be generated (in time)."""


class RowTooLongError(PawError, MemoryError):
    """One training row does not fit in memory even alone in its micro-batch."""

    exit_code = 1
