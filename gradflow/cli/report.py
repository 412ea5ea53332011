"""`gradflow report RUN.json [--baseline OLD.json] [--html out.html] [--markdown] [--json]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ._common import bad_input_exits, check_output_path, err_console, fail, out_console

BaselineOpt = Annotated[Path | None, typer.Option(help="Baseline run record: report improvements and regressions.")]
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report here.")]
MarkdownOpt = Annotated[bool, typer.Option("--markdown", help="Print markdown tables (for PR comments).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary.")]
MinOpt = Annotated[float, typer.Option(help="Lower bound of the retention band for the verdicts.")]
MaxOpt = Annotated[float | None, typer.Option(help="Upper bound of the retention band (none by default).")]
ModulesOpt = Annotated[bool, typer.Option("--modules/--no-modules", help="Show per-module rows.")]


def command(
    run: Annotated[Path, typer.Argument(help="Run record (JSON) to render.")],
    baseline: BaselineOpt = None,
    html: HtmlOpt = None,
    markdown: MarkdownOpt = False,
    as_json: JsonOpt = False,
    min_retention: MinOpt = 0.8,
    max_retention: MaxOpt = None,
    modules: ModulesOpt = True,
) -> None:
    """Render a run record (terminal table, markdown, HTML) or a regression report against a baseline."""
    from ..files import write_atomic
    from ..record import load_run
    from ..verdicts import Band

    if markdown and as_json:
        raise fail("--markdown and --json both print to stdout; choose one.")
    if html is not None:
        check_output_path(html, "--html", "report.html", inputs=[run, baseline])
    with bad_input_exits():
        band = Band(min_retention, max_retention)
        record = load_run(run)
        old = load_run(baseline) if baseline is not None else None
        if html is not None:
            from ..report.html import render_html

            page = render_html(record, band, baseline=old, modules=modules)
            write_atomic(html, page)  # a failure is a FileError: exit 2 with the cause, nothing left behind
        if as_json:
            from ..record import json_safe
            from ..report.summary import report_data

            data = report_data(record, band, modules=modules, baseline=old)
            sys.stdout.write(json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n")
        elif markdown:
            from ..report.markdown import record_markdown, regression_markdown

            page_text = (regression_markdown(old, record, band, modules=modules) if old is not None
                    else record_markdown(record, band, modules=modules))
            sys.stdout.write(page_text)
        else:
            from ..report.terminal import render_record, render_regression

            out_console.print(render_regression(old, record, band, modules=modules) if old is not None
                              else render_record(record, band, modules=modules))
        if html is not None:
            from ..report.format import text

            err_console.print(text(f"HTML report written to {html}", style="dim"))
