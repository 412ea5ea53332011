"""What the command modules share: consoles, errors to exit codes, option types, output paths, subjects."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_OK, GradflowError
from ..files import FileError, check_writable, same_file
from ..report.format import text

__all__ = ["EXIT_BAD_INPUT", "EXIT_GATE_FAILED", "EXIT_OK"]


def _console(stderr: bool = False) -> Console:
    """A console that keeps tables readable in CI logs: 160 columns when not a terminal (unless COLUMNS).

    ``markup=False``: nothing printed through it is parsed as rich markup (module names are untrusted).
    """
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty())
    return Console(stderr=stderr, width=160 if piped and not os.environ.get("COLUMNS") else None, markup=False,
                   highlight=False)


out_console = _console()
err_console = _console(stderr=True)

SubjectOpt = Annotated[str, typer.Option("--subject", "-s", help="Built-in subject name or module.path:factory.")]
PresetOpt = Annotated[str | None, typer.Option(help="Subject preset (aaclip: full, native, small, tiny).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Subject config override key=value (repeatable).")]
WeightsOpt = Annotated[Path | None, typer.Option(help="Local weights file for the subject's backbone.")]
AdaptersOpt = Annotated[Path | None, typer.Option(help="Folder of trained adapter checkpoints to load (aaclip).")]
DataOpt = Annotated[Path | None, typer.Option(help="Folder of real images to take batches from (aaclip: an "
                                              "MVTec-style folder); default: synthetic batches.")]
BatchesOpt = Annotated[str | None, typer.Option(help="Number of batches, or 'auto': add batches until every "
                                               "verdict is decided (default: the subject's default).")]
PrecisionOpt = Annotated[float | None, typer.Option(help="With --batches auto: also stop once every interval is "
                                                    "narrower than this.")]
MaxBatchesOpt = Annotated[int | None, typer.Option("--max-batches", help="With --batches auto: the most batches "
                                                   "to run (default 24).")]
SeedOpt = Annotated[int, typer.Option(help="Seed for the passes' RNG and the interval.")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Write the run record (JSON) here.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the run record as JSON on stdout.")]
MinOpt = Annotated[float, typer.Option(help="Lower bound of the retention band for the verdict column.")]
MaxOpt = Annotated[float | None, typer.Option(help="Upper bound of the retention band (none by default).")]


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print ``message`` as an error on stderr and return the Exit to raise."""
    err_console.print(text("error: ", style="bold red") + text(message), soft_wrap=True)
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


def parse_scales(value: str) -> list[float]:
    """``--scales``: comma-separated finite numbers, none of them empty (``1,,2`` is a typo, not ``1,2``)."""
    parts = [part.strip() for part in value.split(",")]
    try:
        scales = [float(part) for part in parts]
    except ValueError:
        raise fail(f"--scales must be comma-separated numbers, got {value!r}.") from None
    if not all(map(math.isfinite, scales)):
        raise fail(f"--scales must be finite numbers, got {value!r}.")
    return scales


def parse_batches(value: str | None) -> int | str | None:
    """``--batches``: a positive whole number or ``auto``; anything else is bad input."""
    if value is None:
        return None
    text = value.strip().lower()
    if text == "auto":
        return "auto"
    try:
        count = int(text)
    except ValueError:
        raise fail(f"--batches must be a positive whole number or 'auto', got {value!r}.") from None
    if count < 1:
        raise fail(f"--batches must be at least 1, got {count}.")
    return count


def check_output_path(path: Path | None, option: str = "--out", example: str = "run.json",
                      inputs: Iterable[Path | None] = ()) -> None:
    """Fail before any work when ``path`` cannot be written, or would overwrite one of the ``inputs``.

    Writability is proven by creating (and removing) a file next to it: a long run must not end in a
    traceback because the folder is read-only or ``/proc``.
    """
    if path is None:
        return
    if path.is_dir():
        raise fail(f"{option} {path} is a directory; give a file name such as {path / example}.")
    for source in inputs:
        if source is not None and same_file(path, source):
            raise fail(f"{option} {path} is also an input of this command ({source}); writing it would destroy the "
                       "input. Choose another path; nothing was written.")
    try:
        check_writable(path, option)
    except FileError as exc:
        raise fail(str(exc)) from None


def check_distinct_outputs(outputs: dict[str, Path | None]) -> None:
    """Fail when two outputs of one command are the same file (one would overwrite the other)."""
    given = [(option, path) for option, path in outputs.items() if path is not None]
    for i, (first, a) in enumerate(given):
        for second, b in given[i + 1:]:
            if same_file(a, b):
                raise fail(f"{first} and {second} are the same file ({a}); give them different paths.")


def subject_inputs(subject: str, weights: Path | None = None, roots: Iterable[Path] = ()) -> list[Path]:
    """Files a compare/sweep reads that an output must never replace: the subject's source, the weights."""
    from ..subjects.registry import subject_source

    return [p for p in (subject_source(subject, [Path.cwd(), *roots]), weights) if p is not None]


@contextmanager
def progress_reporter(quiet: bool, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr, yielding the ``progress(done, total)`` callback."""
    if quiet:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err_console, transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def load(subject: str, preset: str | None, overrides: dict[str, str], weights: Path | None,
         adapters: Path | None = None, data: Path | None = None) -> Any:
    """Build the named subject with the command's options (only those that were given are passed)."""
    from ..subjects.registry import load_subject

    # A user's module:factory is looked up in the current folder after the installed packages (never before).
    return load_subject(subject, roots=[Path.cwd()], preset=preset, overrides=overrides,
                        weights=str(weights) if weights is not None else None,
                        adapters=str(adapters) if adapters is not None else None,
                        data=str(data) if data is not None else None)


def emit(record: Any, out: Path | None, quiet: bool, as_json: bool, band: Any) -> None:
    """Write the record (``--out``), print it as JSON (``--json``) or as the retention table with its notes."""
    from ..report.terminal import notes_text, retention_table

    if out is not None:
        record.save(out)
    if as_json:
        sys.stdout.write(record.to_json())
    elif not quiet:
        out_console.print(retention_table(record, band))
        for line in notes_text(record):
            out_console.print(line, soft_wrap=True)
        if out is not None:
            out_console.print(text(f"run record written to {out}", style="dim"))
