"""`gradflow compare`: retention of each target with vs without each branch (the main job)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import (
    AdaptersOpt,
    BatchesOpt,
    DataOpt,
    JsonOpt,
    MaxBatchesOpt,
    MaxOpt,
    MinOpt,
    OutOpt,
    PrecisionOpt,
    PresetOpt,
    QuietOpt,
    SeedOpt,
    SetOpt,
    SubjectOpt,
    WeightsOpt,
    bad_input_exits,
    check_output_path,
    emit,
    load,
    parse_batches,
    parse_overrides,
    progress_reporter,
    subject_inputs,
)


def command(
    subject: SubjectOpt = "aaclip",
    preset: PresetOpt = None,
    ablate: Annotated[list[str] | None, typer.Option(help="Branch to ablate (repeatable; 'all').")] = None,
    target: Annotated[list[str] | None, typer.Option(help="Target to measure (repeatable; 'all').")] = None,
    batches: BatchesOpt = None,
    precision: PrecisionOpt = None,
    max_batches: MaxBatchesOpt = None,
    seed: SeedOpt = 0,
    set_: SetOpt = None,
    weights: WeightsOpt = None,
    adapters: AdaptersOpt = None,
    data: DataOpt = None,
    out: OutOpt = None,
    min_retention: MinOpt = 0.8,
    max_retention: MaxOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Retention of each target with vs without each branch, over several batches, with CIs."""
    from ..measure import compare
    from ..verdicts import Band

    overrides = parse_overrides(set_)
    n_batches = parse_batches(batches)
    check_output_path(out, inputs=subject_inputs(subject, weights))
    with bad_input_exits():
        band = Band(min_retention, max_retention)
        sub = load(subject, preset, overrides, weights, adapters, data)
        with progress_reporter(quiet or as_json, "passes") as progress:
            record = compare(sub, batches=n_batches, branches=ablate, targets=target, seed=seed, band=band,
                             precision=precision, max_batches=max_batches, progress=progress)
        emit(record, out, quiet, as_json, band)
