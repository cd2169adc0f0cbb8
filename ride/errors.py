"""The errors ``ride`` reports as one line (``ride.cli`` prints them and exits with status 2).

Each names the file or option at fault and the fix. They also derive from the built-in type a
caller would expect (``ValueError`` for bad input, ``RuntimeError`` for a failed run), so code
that caught those before still does.
"""
from __future__ import annotations


class RideError(Exception):
    """Bad input or a failed run, explained in one line."""


class DataError(RideError, ValueError):
    """A dataset file is missing, corrupt or of the wrong form."""


class ConfigError(RideError, ValueError):
    """A ``ride train`` config or a command-line option is invalid."""


class CorruptFileError(RideError, ValueError):
    """A ``model.pt`` or ``checkpoint.pt`` is truncated, altered or not such a file."""


class TrainingError(RideError, RuntimeError):
    """Training cannot continue (diverged or non-finite loss, degenerate data)."""


class EvaluationError(RideError, FloatingPointError):
    """A model gives a non-finite log-likelihood on the evaluated data."""
