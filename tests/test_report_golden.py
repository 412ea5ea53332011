"""Golden tests: the terminal and markdown renderings of fixed records stay stable.

Regenerate after an intended change with ``GRADFLOW_UPDATE_GOLDEN=1 python -m pytest tests/test_report_golden.py``
and review the diff of ``tests/golden/`` before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from golden.records import compare_record, regression_pair, sweep_record
from rich.console import Console

from gradflow.report.markdown import record_markdown, regression_markdown
from gradflow.report.terminal import render_record, render_regression
from gradflow.verdicts import Band

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("GRADFLOW_UPDATE_GOLDEN") == "1"


def terminal(renderable) -> str:
    console = Console(width=140, record=True, color_system=None, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(renderable)
    text = console.export_text()
    console.file.close()
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"missing golden {path}; create it with GRADFLOW_UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{name} changed; if intended, regenerate with GRADFLOW_UPDATE_GOLDEN=1 and review"


@pytest.fixture(scope="module")
def records():
    old, new = regression_pair()
    return {"compare": compare_record(), "sweep": sweep_record(), "old": old, "new": new}


def test_compare_terminal(records):
    check("compare.txt", terminal(render_record(records["compare"], Band(0.8))))


def test_compare_terminal_no_modules_and_max_band(records):
    check("compare-totals.txt", terminal(render_record(records["compare"], Band(0.8, 1.2), modules=False)))


def test_compare_markdown(records):
    check("compare.md", record_markdown(records["compare"], Band(0.8)))


def test_sweep_terminal(records):
    check("sweep.txt", terminal(render_record(records["sweep"], Band(0.8, 1.3), modules=False)))


def test_sweep_markdown(records):
    check("sweep.md", record_markdown(records["sweep"], Band(0.8, 1.3)))


def test_regression_terminal(records):
    check("regression.txt", terminal(render_regression(records["old"], records["new"], Band(0.8))))


def test_regression_markdown(records):
    check("regression.md", regression_markdown(records["old"], records["new"], Band(0.8)))


def test_names_are_literal_in_terminal_and_escaped_in_markdown(records):
    text = terminal(render_record(records["compare"]))
    assert "blocks.1.adapter|[red]x_y*`z`" in text  # rich markup in a name is shown, not interpreted
    markdown = record_markdown(records["compare"])
    assert r"blocks.1.adapter\|\[red\]x\_y\*\`z\`" in markdown
    for line in markdown.splitlines():
        if line.startswith("|"):
            # every row has the header's number of cells: no unescaped pipe splits a cell
            assert len(line.replace("\\|", "").split("|")) == len(markdown.splitlines()[4].split("|"))
