"""`gradflow sweep`: retention as a function of a branch's output scale."""

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
    parse_scales,
    progress_reporter,
    subject_inputs,
)


def command(
    branch: Annotated[str, typer.Option(help="Branch whose output is scaled.")],
    scales: Annotated[str, typer.Option(help="Comma-separated scales.")] = "0,0.05,0.1,0.2,0.5,1",
    subject: SubjectOpt = "aaclip",
    preset: PresetOpt = None,
    target: Annotated[list[str] | None, typer.Option(help="Target to measure (repeatable).")] = None,
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
    """Retention as a function of the branch's output scale (norm at scale s / norm with it zeroed)."""
    from ..measure import sweep
    from ..verdicts import Band

    scale_values = parse_scales(scales)
    overrides = parse_overrides(set_)
    n_batches = parse_batches(batches)
    check_output_path(out, inputs=subject_inputs(subject, weights))
    with bad_input_exits():
        band = Band(min_retention, max_retention)
        sub = load(subject, preset, overrides, weights, adapters, data)
        with progress_reporter(quiet or as_json, "passes") as progress:
            record = sweep(sub, branch, scale_values, batches=n_batches, targets=target, seed=seed, band=band,
                           precision=precision, max_batches=max_batches, progress=progress)
        emit(record, out, quiet, as_json, band)
