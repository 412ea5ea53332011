"""Evaluating probe specs: build the subject, run the preflight checks, measure, gate, compare with a baseline.

Bad input never raises out of :func:`evaluate`: it is returned as ``result.error`` (the CLI's exit code 2).
Rendering of a :class:`SpecResult` is in :mod:`gradflow.report.check`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .comparison import change_intervals
from .errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_OK, GradflowError
from .gate import Check, baseline_checks, gate_row
from .spec import Spec, SpecError, load_spec
from .verdicts import Band, GateMode, gate_mode


@dataclass
class SpecResult:
    """What evaluating one spec produced: the run record (if measured) and every check."""

    spec: Spec | None
    path: Path
    mode: GateMode = GateMode.CI
    preset: str | None = None
    record: Any = None
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        """True when the spec was evaluated and every check passed."""
        return self.error is None and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.passed]

    @property
    def exit_code(self) -> int:
        """0 pass, 1 a check failed, 2 bad input."""
        if self.error is not None:
            return EXIT_BAD_INPUT
        return EXIT_OK if self.passed else EXIT_GATE_FAILED

    def status(self) -> str:
        """``PASS``, ``FAIL`` or ``ERROR``."""
        return "ERROR" if self.error is not None else ("PASS" if self.passed else "FAIL")

    def summary(self) -> str:
        """One line: ``FAIL probes/x.toml: 2 of 5 checks failed (gate: ci ...)``."""
        if self.error is not None:
            return f"ERROR {self.path}: {self.error}"
        failed = len(self.failures)
        head = f"{self.status()} {self.path}: "
        head += f"{failed} of {len(self.checks)} checks failed" if failed else f"all {len(self.checks)} checks passed"
        return head + f" (gate: {self.mode})"

def subject_roots(spec: Spec) -> list[Path]:
    """Where a spec's ``module:factory`` is looked for after the installed packages: its folder, the current one."""
    return [spec.path.parent.resolve(), Path.cwd()]


def build_subject(spec: Spec, preset: str | None = None, seed: int | None = None) -> Any:
    """Build the spec's subject (``preset``/``seed`` override the spec's); errors name the spec key."""
    from .errors import SubjectError
    from .subject import Branch
    from .subjects.registry import load_subject

    if spec.weights is not None and not spec.weights.exists():
        raise SpecError(f"{spec.path}: subject.weights: {spec.weights} does not exist (relative to the spec's "
                        "folder).")
    options = dict(spec.options)
    options.update(preset=preset or spec.preset, overrides=dict(spec.overrides),
                   weights=None if spec.weights is None else str(spec.weights),
                   seed=spec.subject_seed if seed is None else seed)
    try:
        subject = load_subject(spec.subject, roots=subject_roots(spec), **options)
    except SubjectError as exc:
        raise SpecError(f"{spec.path}: subject: {exc}") from None
    for name, branch in spec.extra_branches.items():
        subject.branches[name] = Branch(branch["selector"], branch.get("mode", "zero"), branch.get("scale"))
    from .subject import Target

    for name, selector in spec.extra_targets.items():
        subject.targets[name] = Target(selector)
    for key, names, lookup, modules in (("branches", spec.branches, subject.branch, subject.branch_modules),
                                        ("targets", spec.targets, subject.target, subject.target_modules)):
        for name in names:
            try:
                lookup(name)
                modules(name)
            except GradflowError as exc:
                raise SpecError(f"{spec.path}: {key}: {exc}") from None
    return subject


def evaluate(
    spec: Spec | str | Path,
    *,
    preset: str | None = None,
    batches: int | str | None = None,
    gate: str | GateMode | None = None,
    progress: Callable[[int, int], None] | None = None,
    subject: Any = None,
) -> SpecResult:
    """Evaluate one spec: build the subject, run the static preflight checks, measure retention, gate the
    rows, compare with the baseline, check reachability. Bad input is returned as ``result.error`` (exit 2)
    rather than raised. ``subject`` skips building (the caller's subject must match the spec)."""
    import time

    started = time.perf_counter()
    path = Path(spec) if not isinstance(spec, Spec) else spec.path
    result = SpecResult(spec=None, path=path)
    try:
        loaded = spec if isinstance(spec, Spec) else load_spec(spec)
        result.spec = loaded
        result.mode = gate_mode(gate, loaded.gate)
        result.preset = preset or loaded.preset
        _run(loaded, result, subject, batches, progress)
    except GradflowError as exc:
        result.error = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
        result.error = result.error.removeprefix(f"{path}: ")
    result.elapsed_s = time.perf_counter() - started
    return result


def _run(spec: Spec, result: SpecResult, subject: Any, batches: int | str | None,
         progress: Callable[[int, int], None] | None) -> None:
    from . import preflight
    from .measure import compare
    from .record import load_run

    baseline_file = spec.baseline_path(result.preset)
    if baseline_file is not None and baseline_file.exists() and not baseline_file.is_file():
        raise SpecError(f"{spec.path}: baseline.record: {baseline_file} is not a regular file (a folder or a device); "
                        "name a JSON run record.")
    if baseline_file is not None and not baseline_file.is_file():
        raise SpecError(f"{spec.path}: baseline.record: baseline record {baseline_file} does not exist (for preset "
                        f"{result.preset!r}). Write one with `gradflow check {spec.path} --out {baseline_file}`.")
    old = None
    if baseline_file is not None:
        try:
            old = load_run(baseline_file)
        except GradflowError as exc:
            raise SpecError(f"{spec.path}: baseline.record: {exc}") from None
        if old.data["subject"].get("preset") != result.preset:
            raise SpecError(
                f"{spec.path}: baseline.record: {baseline_file} was measured on preset "
                f"{old.data['subject'].get('preset')!r}, this run is preset {result.preset!r}; put {{preset}} in "
                "the path to keep one baseline per preset.")
    if subject is None:
        subject = build_subject(spec, result.preset)
    if old is not None and old.data["subject"].get("name") != subject.name:
        raise SpecError(f"{spec.path}: baseline.record: {baseline_file} was measured on subject "
                        f"{old.data['subject'].get('name')!r}, this spec's subject is {subject.name!r}.")
    result.checks.extend(preflight.static_checks(spec, subject, rebuild=lambda s: build_subject(spec, result.preset,
                                                                                                s)))
    record = compare(subject, batches=batches or spec.batches, max_batches=spec.max_batches,
                     precision=spec.precision, band_for=lambda row: band_of(spec, row), branches=list(spec.branches),
                     targets=list(spec.targets), seed=spec.seed, confidence=spec.confidence, progress=progress)
    result.record = record
    if spec.reachable:
        result.checks.extend(preflight.reachability_checks(record))
    gated = gated_rows(spec, record.rows)
    result.checks.extend(gate_row(row, band, result.mode) for row, band in gated)
    if old is not None:
        keys = [(row["branch"], row["target"], row["module"]) for row, _ in gated]
        interval, _ = change_intervals(old, record)
        result.checks.extend(baseline_checks(old, record, keys, spec.band, result.mode, spec.tolerance,
                                             spec.direction, interval=interval))


def band_of(spec: Spec, row: dict[str, Any]) -> Band | None:
    """The band a spec gates ``row`` with (``None``: the row is not gated)."""
    if row["module"] == "*":
        return spec.band
    matching = [t for t in spec.module_thresholds if t.matches(row)]
    if matching:
        return matching[-1].band
    return spec.band if spec.per_module else None


def gated_rows(spec: Spec, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Band]]:
    """The rows the spec gates, each with its band: totals with the main band; per-module rows under a
    matching ``[[thresholds.modules]]`` entry (the last match wins) or, with ``per_module``, the main band."""
    return [(row, band) for row in rows if (band := band_of(spec, row)) is not None]
