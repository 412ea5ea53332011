"""`gradflow list`: a subject's branches and targets, their selectors, matched modules and parameter counts."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..report.format import text
from ._common import PresetOpt, SetOpt, SubjectOpt, bad_input_exits, load, out_console, parse_overrides


def command(
    subject: SubjectOpt = "aaclip",
    preset: PresetOpt = None,
    set_: SetOpt = None,
    modules: Annotated[bool, typer.Option("--modules", help="Also list every matched module.")] = False,
) -> None:
    """Branches and targets of a subject: selectors, matched modules and parameter counts."""
    from ..select import describe_selector, parameters_of

    overrides = parse_overrides(set_)
    with bad_input_exits():
        sub = load(subject, preset, overrides, None)
        table = Table(title=text(f"subject {sub.name}" + (f" ({sub.preset})" if sub.preset else "")))
        for column in ("kind", "name", "selector", "mode", "modules", "params", "trainable"):
            table.add_column(column, justify="right" if column in ("modules", "params", "trainable") else "left")
        groups = [("branch", n, sub.branch(n), sub.branch_modules(n)) for n in sub.branches]
        groups += [("target", n, sub.target(n), sub.target_modules(n)) for n in sub.targets]
        for kind, name, spec, matched in groups:
            all_params = parameters_of(sub.model, matched, trainable_only=False)
            trainable = sum(p.numel() for _, p in all_params if p.requires_grad)
            mode = getattr(spec, "mode", "")
            if getattr(spec, "scale", None) is not None:
                mode += f"={spec.scale:g}"
            table.add_row(kind, text(name), text(describe_selector(spec.selector)), mode, str(len(matched)),
                          f"{sum(p.numel() for _, p in all_params):,}", f"{trainable:,}")
            if modules:
                for module_name, _ in matched:
                    table.add_row("", "", text("  " + module_name), "", "", "", "")
        out_console.print(table)
