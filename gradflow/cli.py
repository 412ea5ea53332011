"""The ``gradflow`` command line: a thin shell over the library.

Exit codes: 0 success, 1 a gate failed (``check``), 2 bad input (nothing is written then).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .errors import GradflowError

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="gradflow: does a new branch starve another module of gradient? Measure retention = "
    "‖∇target‖ with the branch / without it.",
)
def _console(stderr: bool = False) -> Console:
    """A console that keeps tables readable in CI logs: 160 columns when not a terminal (unless COLUMNS)."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty())
    return Console(stderr=stderr, width=160 if piped and not os.environ.get("COLUMNS") else None)


out_console = _console()
err_console = _console(stderr=True)

SubjectOpt = Annotated[str, typer.Option("--subject", "-s", help="Built-in subject name or module.path:factory.")]
PresetOpt = Annotated[str | None, typer.Option(help="Subject preset (aaclip: full, native, small, tiny).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Subject config override key=value (repeatable).")]
WeightsOpt = Annotated[Path | None, typer.Option(help="Local weights file for the subject's backbone.")]
AdaptersOpt = Annotated[Path | None, typer.Option(help="Folder of trained adapter checkpoints to load (aaclip).")]
BatchesOpt = Annotated[int | None, typer.Option(help="Number of batches (default: the subject's default).")]
SeedOpt = Annotated[int, typer.Option(help="Seed for the passes' RNG and the bootstrap.")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Write the run record (JSON) here.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the run record as JSON on stdout.")]
MinOpt = Annotated[float, typer.Option(help="Lower bound of the retention band for the verdict column.")]
MaxOpt = Annotated[float | None, typer.Option(help="Upper bound of the retention band (none by default).")]


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print ``message`` as an error on stderr and return the Exit to raise."""
    err_console.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def bad_input_exits() -> Iterator[None]:
    """Turn gradflow input errors into a clear message and exit code 2."""
    try:
        yield
    except GradflowError as exc:
        raise fail(str(exc)) from None


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": "1", "c": "x"}``; a malformed item is bad input."""
    overrides: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"--set expects key=value, got {item!r} (e.g. --set stage2.image_cross_attn_weight=0.1).")
        overrides[key.strip()] = value.strip()
    return overrides


def check_output_path(path: Path | None, option: str = "--out", example: str = "run.json") -> None:
    """Fail before any work when ``path`` cannot be written (missing folder, a directory)."""
    if path is None:
        return
    if path.is_dir():
        raise fail(f"{option} {path} is a directory; give a file name such as {path / example}.")
    if not path.parent.exists():
        raise fail(f"{option} {path}: the folder {path.parent} does not exist. Create it first.")


@contextmanager
def progress_reporter(quiet: bool, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr, yielding the ``progress(done, total)`` callback."""
    if quiet:
        yield None
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err_console, transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _load(subject: str, preset: str | None, overrides: dict[str, str], weights: Path | None,
          adapters: Path | None = None) -> Any:
    from .subjects.registry import load_subject

    # Like other tools that import user code by path (uvicorn, celery), resolve it from the current folder.
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    return load_subject(subject, preset=preset, overrides=overrides,
                        weights=str(weights) if weights is not None else None,
                        adapters=str(adapters) if adapters is not None else None)


def _emit(record: Any, out: Path | None, quiet: bool, as_json: bool, band: Any) -> None:
    from .report.terminal import retention_table

    if out is not None:
        record.save(out)
    if as_json:
        sys.stdout.write(record.to_json())
    elif not quiet:
        from .report.terminal import notes_text

        out_console.print(retention_table(record, band))
        for line in notes_text(record):
            out_console.print(line, soft_wrap=True)
        if out is not None:
            out_console.print(Text(f"run record written to {out}", style="dim"))


@app.command()
def compare(
    subject: SubjectOpt = "aaclip",
    preset: PresetOpt = None,
    ablate: Annotated[list[str] | None, typer.Option(help="Branch to ablate (repeatable; 'all').")] = None,
    target: Annotated[list[str] | None, typer.Option(help="Target to measure (repeatable; 'all').")] = None,
    batches: BatchesOpt = None,
    seed: SeedOpt = 0,
    set_: SetOpt = None,
    weights: WeightsOpt = None,
    adapters: AdaptersOpt = None,
    out: OutOpt = None,
    min_retention: MinOpt = 0.8,
    max_retention: MaxOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Retention of each target with vs without each branch, over several batches, with CIs."""
    from .gate import Band
    from .measure import compare as run_compare

    overrides = parse_overrides(set_)
    check_output_path(out)
    with bad_input_exits():
        band = Band(min_retention, max_retention)
        sub = _load(subject, preset, overrides, weights, adapters)
        with progress_reporter(quiet or as_json, "passes") as progress:
            record = run_compare(sub, batches=batches, branches=ablate, targets=target, seed=seed,
                                 progress=progress)
        _emit(record, out, quiet, as_json, band)


@app.command()
def sweep(
    branch: Annotated[str, typer.Option(help="Branch whose output is scaled.")],
    scales: Annotated[str, typer.Option(help="Comma-separated scales.")] = "0,0.05,0.1,0.2,0.5,1",
    subject: SubjectOpt = "aaclip",
    preset: PresetOpt = None,
    target: Annotated[list[str] | None, typer.Option(help="Target to measure (repeatable).")] = None,
    batches: BatchesOpt = None,
    seed: SeedOpt = 0,
    set_: SetOpt = None,
    weights: WeightsOpt = None,
    adapters: AdaptersOpt = None,
    out: OutOpt = None,
    min_retention: MinOpt = 0.8,
    max_retention: MaxOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Retention as a function of the branch's output scale (norm at scale s / norm with it zeroed)."""
    from .gate import Band
    from .measure import sweep as run_sweep

    try:
        scale_values = [float(s) for s in scales.split(",") if s.strip()]
    except ValueError:
        raise fail(f"--scales must be comma-separated numbers, got {scales!r}.") from None
    overrides = parse_overrides(set_)
    check_output_path(out)
    with bad_input_exits():
        band = Band(min_retention, max_retention)
        sub = _load(subject, preset, overrides, weights, adapters)
        with progress_reporter(quiet or as_json, "passes") as progress:
            record = run_sweep(sub, branch, scale_values, batches=batches, targets=target, seed=seed,
                               progress=progress)
        _emit(record, out, quiet, as_json, band)


@app.command("list")
def list_(
    subject: SubjectOpt = "aaclip",
    preset: PresetOpt = None,
    set_: SetOpt = None,
    modules: Annotated[bool, typer.Option("--modules", help="Also list every matched module.")] = False,
) -> None:
    """Branches and targets of a subject: selectors, matched modules and parameter counts."""
    from .select import describe_selector, parameters_of

    overrides = parse_overrides(set_)
    with bad_input_exits():
        sub = _load(subject, preset, overrides, None)
        table = Table(title=f"subject {sub.name}" + (f" ({sub.preset})" if sub.preset else ""))
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
            table.add_row(kind, Text(name), Text(describe_selector(spec.selector)), mode, str(len(matched)),
                          f"{sum(p.numel() for _, p in all_params):,}", f"{trainable:,}")
            if modules:
                for module_name, _ in matched:
                    table.add_row("", "", Text("  " + module_name), "", "", "", "")
        out_console.print(table)


def _register_commands() -> None:
    from .commands import check, report

    app.command("report")(report.command)
    app.command("check")(check.command)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
