"""Errors gradflow raises for bad input.

Every error here is the user's to fix: its message says what was wrong, what exists and what to do.
The CLI maps all of them to exit code 2 ("bad input").
"""

from __future__ import annotations


class GradflowError(ValueError):
    """Base class of all gradflow input errors (exit code 2 in the CLI)."""


class SelectorError(GradflowError):
    """A selector is malformed or matches nothing."""


class SubjectError(GradflowError):
    """A subject, branch, target or batch source is invalid."""


class AblationError(GradflowError):
    """A branch cannot be ablated in the requested mode."""


class LossError(GradflowError):
    """The loss function returned something that is not a differentiable scalar."""


class RecordError(GradflowError):
    """A run record file is missing, corrupt, foreign or of an unsupported schema version."""


class ProbeError(GradflowError):
    """A probe was asked for a number it did not observe (no backward, no forward inside it, local-only)."""


#: Exit codes of the ``gradflow`` command: success, a gate failed, bad input (nothing was written).
EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT = 0, 1, 2
