"""Retention assertions for test suites (used by the gradflow pytest plugin; plain functions otherwise).

    from gradflow.testing import assert_retention

    def test_cross_attention_keeps_the_adapter_learning(gradflow_subject):
        sub = gradflow_subject("aaclip", preset="tiny")
        assert_retention(sub, "image_cross_attn", "image_adapter", min=0.8)

A failing assertion raises :class:`AssertionError` whose message holds the verdict and the rendered
retention table as plain text (no ANSI codes), so it reads the same in a terminal, a CI log or JUnit XML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["assert_retention", "check_spec", "retention_text"]


def retention_text(record: Any, band: Any = None, mode: str = "ci", branch: str | None = None,
                   target: str | None = None, width: int = 140) -> str:
    """The retention table of ``record`` (optionally only ``branch``/``target`` rows) as plain text."""
    from .record import RunRecord
    from .report.plain import render_plain
    from .report.terminal import retention_table

    if branch is not None or target is not None:
        data = dict(record.data)
        data["retention"] = [r for r in record.rows if (branch is None or r["branch"] == branch)
                             and (target is None or r["target"] == target)]
        record = RunRecord(data, source=record.source)
    return render_plain([retention_table(record, band, mode)], width)


def assert_retention(
    record_or_subject: Any,
    branch: str,
    target: str,
    min: float | None = 0.8,  # noqa: A002 - reads like the band it is
    max: float | None = None,  # noqa: A002
    gate: str = "ci",
    *,
    module: str = "*",
    batches: int | None = None,
    seed: int = 0,
) -> Any:
    """Assert that ``retention(branch, target)`` lies in ``[min, max]`` under gate mode ``gate``.

    ``record_or_subject``: a :class:`gradflow.RunRecord` (nothing is recomputed) or a
    :class:`gradflow.Subject` (measured here with ``batches`` and ``seed``; only ``branch`` and
    ``target``). ``gate``: ``ci`` (fail only when the whole CI is outside the band), ``point`` or
    ``strict`` (see :mod:`gradflow.gate`). ``module``: ``"*"`` for the whole target, or one module's row.
    Rows that are ``no effect``, ``no grad``, ``undefined`` or ``non-finite`` fail. Returns the record.
    """
    __tracebackhide__ = True  # pytest shows the assertion message, not this function's frames
    from .gate import gate_row
    from .record import RunRecord
    from .verdicts import Band, gate_mode

    mode = gate_mode(gate)
    band = Band(min, max)
    if isinstance(record_or_subject, RunRecord):
        record = record_or_subject
    else:
        from .measure import compare

        record = compare(record_or_subject, batches=batches, branches=[branch], targets=[target], seed=seed)
    row = record.row(branch, target, module)
    check = gate_row(row, band, mode)
    if not check.passed:
        where = "the whole target" if module == "*" else f"module {module}"
        message = (f"gradflow: retention of {target!r} ({where}) under branch {branch!r} is {check.verdict}, "
                   f"band {band.describe()}, gate {mode}: {check.detail}\n\n"
                   + retention_text(record, band, mode, branch, target))
        raise AssertionError(message)
    return record


def check_spec(path: str | Path, *, preset: str | None = None, batches: int | None = None,
               gate: str | None = None) -> Any:
    """Evaluate a probe spec and raise :class:`AssertionError` (with the tables) unless every check passes.

    Bad input (a spec that cannot be read or evaluated) raises :class:`gradflow.GradflowError`.
    Returns the :class:`gradflow.evaluation.SpecResult`.
    """
    __tracebackhide__ = True
    from .errors import GradflowError
    from .evaluation import evaluate
    from .report.check import spec_text

    result = evaluate(Path(path), preset=preset, batches=batches, gate=gate)
    if result.error is not None:
        raise GradflowError(f"{result.path}: {result.error}")
    if not result.passed:
        failed = "\n".join(f"  - {c.kind}: {c.name}: {c.verdict + ': ' if c.verdict else ''}{c.detail}"
                           for c in result.failures)
        raise AssertionError(f"gradflow spec {result.path} failed:\n{failed}\n\n{spec_text(result)}")
    return result
