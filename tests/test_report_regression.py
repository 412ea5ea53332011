"""Regression report: verdicts on records built to improve, regress and stay level; mismatches reported."""

from __future__ import annotations

import io

import pytest
from golden.records import HOSTILE, compare_record, copy_record, regression_pair, set_row
from rich.console import Console

from gradflow.report.html import render_html
from gradflow.report.markdown import regression_markdown
from gradflow.report.regression import compatibility_warnings, regression_rows
from gradflow.report.terminal import render_regression
from gradflow.verdicts import DEFAULT_TOLERANCE, Band

KEYS = {"branch", "target", "module", "scale", "old", "new", "delta", "old_ci", "new_ci", "verdict"}


def by_module(rows, target="adapter"):
    return {r["module"]: r for r in rows if r["target"] == target}


@pytest.fixture(scope="module")
def pair():
    return regression_pair()


def test_row_keys_and_verdicts(pair):
    rows = regression_rows(*pair, Band(0.8))
    assert all(set(r) >= KEYS for r in rows)
    adapter = by_module(rows)
    assert adapter["*"]["verdict"] == "improved"
    assert adapter["*"]["summary"] == "retention 0.375 -> 0.961 (fixed)"
    assert adapter["*"]["delta"] == pytest.approx(0.9609 - 0.3748)
    assert adapter["*"]["old_ci"] == pytest.approx((0.3448, 0.4048))
    assert adapter["blocks.0.adapter"]["verdict"] == "regressed"
    assert adapter["blocks.0.adapter"]["summary"].endswith("(broken)")
    assert adapter[HOSTILE]["verdict"] == "uncertain"  # change -0.01, interval ±0.07: reaches beyond ±0.05
    assert adapter["blocks.2.adapter"]["verdict"] == "improved"  # 0.30 -> 0.55: toward the band, still starved
    assert "(fixed)" not in adapter["blocks.2.adapter"]["summary"]
    tied = by_module(rows, "tied")
    assert tied["tail"]["verdict"] == "removed" and tied["tail"]["new"] is None
    assert tied["extra.adapter"]["verdict"] == "added" and tied["extra.adapter"]["old"] is None
    assert tied["head"]["verdict"] == "unchanged"


def test_level_records_are_unchanged():
    old = compare_record()
    rows = regression_rows(old, copy_record(old))
    assert {r["verdict"] for r in rows} == {"unchanged"}


def test_without_ci_point_mode_uses_the_tolerance_ci_mode_cannot_tell():
    old, new = compare_record(), compare_record()
    set_row(old, "*", 0.50, None, target="adapter")
    set_row(new, "*", 0.51, None, target="adapter")
    set_row(old, "blocks.0.adapter", 0.50, None)
    set_row(new, "blocks.0.adapter", 0.90, None)
    set_row(old, "blocks.2.adapter", 0.90, None)
    set_row(new, "blocks.2.adapter", 1.20, None)
    undecided = by_module(regression_rows(old, new, Band(0.8)))
    assert {undecided[m]["verdict"] for m in ("*", "blocks.0.adapter", "blocks.2.adapter")} == {"uncertain"}
    rows = by_module(regression_rows(old, new, Band(0.8), mode="point"))
    assert rows["*"]["verdict"] == "unchanged" and f"±{DEFAULT_TOLERANCE:g}" in rows["*"]["note"]
    assert rows["blocks.0.adapter"]["verdict"] == "improved"
    assert rows["blocks.0.adapter"]["summary"] == "retention 0.500 -> 0.900 (fixed)"
    assert rows["blocks.2.adapter"]["verdict"] == "drifted"  # a real change, but inside the band either way
    assert "within the band" in rows["blocks.2.adapter"]["note"]


def test_upper_bound_counts_too():
    old, new = compare_record(), compare_record()
    set_row(old, "*", 1.0, 0.02, target="adapter")
    set_row(new, "*", 1.6, 0.02, target="adapter")
    rows = by_module(regression_rows(old, new, Band(0.8, 1.2)))
    assert rows["*"]["verdict"] == "regressed" and rows["*"]["new_verdict"] == "flooded"


def test_no_grad_rows_judged_by_band_verdict():
    old, new = compare_record(), compare_record()
    set_row(new, "blocks.0.adapter", None)
    rows = by_module(regression_rows(old, new))
    assert rows["blocks.0.adapter"]["verdict"] == "regressed" and rows["blocks.0.adapter"]["delta"] is None


def test_mismatched_subject_and_schema_are_reported_prominently(pair):
    old, new = copy_record(pair[0]), copy_record(pair[1])
    new.data["subject"]["name"] = "other"
    new.data["subject"]["preset"] = "full"
    new.data["schema_version"] = 3  # as a future reader that accepts several versions would load it
    warnings = compatibility_warnings(old, new)
    assert any("subject differs" in w for w in warnings)
    assert any("preset differs" in w for w in warnings)
    assert any("schema version differs" in w for w in warnings)
    markdown = regression_markdown(old, new)
    assert markdown.index("[!WARNING]") < markdown.index("| branch")
    assert "subject differs: baseline 'toy', new 'other'" in markdown
    console = Console(width=140, record=True, color_system=None, file=io.StringIO())
    console.print(render_regression(old, new))
    text = console.export_text()
    assert "WARNING: records may not be comparable" in text and "schema version differs" in text
    html = render_html(new, baseline=old)
    assert 'class="warning"' in html and "subject differs" in html


def test_same_subject_no_warnings(pair):
    assert compatibility_warnings(*pair) == []
    assert "[!WARNING]" not in regression_markdown(*pair)


def test_html_regression_section(pair):
    html = render_html(pair[1], Band(0.8), baseline=pair[0])
    assert "Regression against the baseline" in html
    assert "retention 0.375 -&gt; 0.961 (fixed)" in html
    assert "v-regressed" in html and "v-improved" in html
