"""`gradflow learn`: train with and without a branch from the same state; compare how much the loss falls."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import (
    AdaptersOpt,
    DataOpt,
    JsonOpt,
    OutOpt,
    PresetOpt,
    QuietOpt,
    SeedOpt,
    SetOpt,
    SubjectOpt,
    WeightsOpt,
    bad_input_exits,
    check_output_path,
    load,
    out_console,
    parse_overrides,
    parse_scales,
    progress_reporter,
    subject_inputs,
)


def command(
    ablate: Annotated[str | None, typer.Option(help="Branch to ablate (default: the subject's).")] = None,
    steps: Annotated[int, typer.Option(help="Training steps per setting.")] = 20,
    lr: Annotated[float, typer.Option(help="Learning rate of gradflow's own optimizer.")] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="adam or sgd.")] = "adam",
    scales: Annotated[str | None, typer.Option(help="Also train with the branch output scaled by each of these "
                                               "(comma-separated).")] = None,
    eval_batches: Annotated[int, typer.Option(help="Held-out batches for the loss (at least 2).")] = 4,
    train: Annotated[str, typer.Option(help="all: train what the subject trains; targets: only the targets' "
                                       "parameters (isolates their own learning).")] = "all",
    subject: SubjectOpt = "aaclip",
    preset: PresetOpt = None,
    target: Annotated[list[str] | None, typer.Option(help="Target whose gradient norm is recorded per step.")] = None,
    seed: SeedOpt = 0,
    set_: SetOpt = None,
    weights: WeightsOpt = None,
    adapters: AdaptersOpt = None,
    data: DataOpt = None,
    out: OutOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Learning ratio: held-out loss decrease with the branch / without it, after the same training steps."""
    import sys

    from ..learning import learn
    from ..report.terminal import render_record

    scale_values = None
    if scales is not None:
        scale_values = parse_scales(scales)
    overrides = parse_overrides(set_)
    check_output_path(out, inputs=subject_inputs(subject, weights))
    with bad_input_exits():
        sub = load(subject, preset, overrides, weights, adapters, data)
        with progress_reporter(quiet or as_json, "training steps") as progress:
            record = learn(sub, ablate, steps=steps, optimizer=optimizer, lr=lr, scales=scale_values,
                           eval_batches=eval_batches, targets=target, train=train, seed=seed,
                           progress=progress)
        if out is not None:
            record.save(out)
        if as_json:
            sys.stdout.write(record.to_json())
        elif not quiet:
            out_console.print(render_record(record))
