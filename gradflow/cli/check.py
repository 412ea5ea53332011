"""`gradflow check [SPEC...] [--junit out.xml] [--out run.json] [--gate ci|point|strict]`: the CI gate.

Evaluates probe specs (default: every ``probes/*.toml``), prints each spec's retention table and its
checks (preflight, retention rows, baseline), writes the run records and JUnit XML, and exits
0 when every check passed, 1 when a threshold, preflight or baseline check failed, 2 on bad input (a
spec that cannot be read, validated or evaluated; then no record is written for it).

``--out``: with one spec, a file (``run.json``) or an existing folder (``<folder>/<spec stem>.json``);
with several specs, an existing folder (one ``<spec stem>.json`` each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..report.format import text
from ._common import (
    EXIT_BAD_INPUT,
    EXIT_GATE_FAILED,
    EXIT_OK,
    check_distinct_outputs,
    check_output_path,
    err_console,
    fail,
    out_console,
    parse_batches,
    progress_reporter,
    subject_inputs,
)

SpecsArg = Annotated[list[Path] | None, typer.Argument(help="Probe specs (default: probes/*.toml).",
                                                       show_default=False)]
JunitOpt = Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML here (one testcase per check).")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Run record file (one spec) or folder "
                                             "(<folder>/<spec>.json for each spec).")]
GateOpt = Annotated[str | None, typer.Option("--gate", help="ci (default: fail only when the whole CI is outside the "
                                             "band; uncertain passes), point, or strict (uncertain fails). "
                                             "Default: the spec's thresholds.gate, else ci.")]
PresetOpt = Annotated[str | None, typer.Option("--preset", help="Override every spec's subject preset (e.g. tiny).")]
BatchesOpt = Annotated[str | None, typer.Option("--batches", help="Override every spec's batches: a whole number "
                                                "or 'auto'.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only the one-line summary per spec.")]


def _spec_inputs(specs: list, preset: str | None) -> list[Path]:
    """Files the specs read: baseline records, subject sources and weights (outputs must not replace them)."""
    from ..evaluation import subject_roots

    files: list[Path] = []
    for spec in specs:
        baseline = spec.baseline_path(preset or spec.preset)
        files += [p for p in (baseline, spec.weights) if p is not None]
        files += subject_inputs(spec.subject, roots=subject_roots(spec))
    return files


def _record_paths(specs: list[Path], out: Path | None) -> dict[Path, Path]:
    if out is None:
        return {}
    if out.is_dir():
        stems = [s.stem for s in specs]
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:
            raise fail(f"--out {out}: several specs are called {', '.join(twice)}; their records would overwrite "
                       "each other. Run them separately.")
        return {spec: out / f"{spec.stem}.json" for spec in specs}
    if len(specs) > 1:
        raise fail(f"--out {out}: with {len(specs)} specs --out must be an existing folder (one <spec>.json each); "
                   f"create it (mkdir -p {out}) or check one spec at a time.")
    if not out.parent.exists():
        raise fail(f"--out {out}: the folder {out.parent} does not exist. Create it first.")
    return {specs[0]: out}


def command(
    specs: SpecsArg = None,
    junit: JunitOpt = None,
    out: OutOpt = None,
    gate: GateOpt = None,
    preset: PresetOpt = None,
    batches: BatchesOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate probe specs; exit 0 pass, 1 a threshold, preflight or regression check failed, 2 bad input."""
    from ..errors import GradflowError
    from ..evaluation import evaluate
    from ..report.check import spec_renderables
    from ..spec import discover_specs, load_spec
    from ..verdicts import gate_mode

    n_batches = parse_batches(batches)
    try:
        if gate is not None:
            gate_mode(gate)
        paths = list(specs) if specs else discover_specs()
        loaded = [load_spec(p) for p in paths]  # every spec is validated before anything is measured
    except GradflowError as exc:
        raise fail(str(exc)) from None
    record_paths = _record_paths(paths, out)
    inputs = [*paths, *_spec_inputs(loaded, preset)]
    check_output_path(junit, "--junit", "gradflow.xml", inputs=inputs)
    for record_path in record_paths.values():
        check_output_path(record_path, "--out", "run.json", inputs=inputs)
    check_distinct_outputs({"--junit": junit, **{f"--out ({p.name})": p for p in record_paths.values()}})

    results = []
    for spec in loaded:
        with progress_reporter(quiet, f"{spec.name}: passes") as progress:
            result = evaluate(spec, preset=preset, batches=n_batches, gate=gate, progress=progress)
        results.append(result)
        if result.record is not None and spec.path in record_paths:
            try:
                result.record.save(record_paths[spec.path])
            except GradflowError as exc:
                raise fail(str(exc)) from None
        if quiet:
            (out_console if result.error is None else err_console).print(text(result.summary()), soft_wrap=True)
        else:
            for item in spec_renderables(result):
                out_console.print(item)
            if spec.path in record_paths and result.record is not None:
                out_console.print(text(f"run record written to {record_paths[spec.path]}", style="dim"))
            out_console.print()
    if junit is not None:
        from ..junit import write_junit

        try:
            write_junit(results, junit)
        except GradflowError as exc:
            raise fail(str(exc)) from None
    if len(results) > 1 and not quiet:
        counts = {s: sum(1 for r in results if r.status() == s) for s in ("PASS", "FAIL", "ERROR")}
        out_console.print(text(f"{len(results)} specs: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()),
                               style="bold"))
    if any(r.error is not None for r in results):
        raise typer.Exit(EXIT_BAD_INPUT)
    raise typer.Exit(EXIT_GATE_FAILED if any(not r.passed for r in results) else EXIT_OK)
