"""Sweep records: suggest_scale and its display."""

from __future__ import annotations

import pytest
from golden.records import compare_record, copy_record, set_row, sweep_record

import gradflow as gf
from gradflow.report.html import render_html
from gradflow.report.markdown import record_markdown
from gradflow.report.sweep import suggest_scale, sweep_curves
from gradflow.verdicts import Band


@pytest.fixture(scope="module")
def sweep():
    return sweep_record()


def edited(sweep, values, target="adapter"):
    record = copy_record(sweep)
    for scale, value in values.items():
        set_row(record, "*", value, 0.01, target=target, scale=scale)
    return record


def test_curves_sorted_by_scale(sweep):
    curves = sweep_curves(sweep)
    assert set(curves) == {("cross", "adapter"), ("cross", "tied")}
    assert [r["scale"] for r in curves[("cross", "adapter")]] == [0.0, 0.1, 0.5, 1.0]


def test_largest_scale_inside_band(sweep):
    record = edited(sweep, {0.1: 0.97, 0.5: 0.85, 1.0: 0.37})
    result = suggest_scale(record, Band(0.8), target="adapter")
    assert result["scale"] == 0.5 and result["retention"]["adapter"] == pytest.approx(0.85)
    assert "0.5" in result["message"] and "starved" in result["message"]


def test_curve_that_leaves_and_returns_is_not_trusted(sweep):
    record = edited(sweep, {0.1: 0.5, 0.5: 0.9, 1.0: 0.9})
    assert suggest_scale(record, Band(0.8), target="adapter")["scale"] == 0.0


def test_all_targets_must_pass_when_target_is_none(sweep):
    record = edited(edited(sweep, {0.1: 0.9, 0.5: 0.9, 1.0: 0.9}), {0.1: 0.9, 0.5: 0.5, 1.0: 0.5}, target="tied")
    assert suggest_scale(record, Band(0.8), target="adapter")["scale"] == 1.0
    assert suggest_scale(record, Band(0.8))["scale"] == 0.1


def test_no_scale_fits(sweep):
    record = edited(sweep, {0.0: 0.5})
    record.rows[0]["status"] = "ok"
    result = suggest_scale(record, Band(0.8), target="adapter")
    assert result["scale"] is None and "no scale" in result["message"]


def test_errors():
    with pytest.raises(gf.GradflowError, match="sweep record"):
        suggest_scale(compare_record())
    with pytest.raises(gf.GradflowError, match="no target 'nope'"):
        suggest_scale(sweep_record(), target="nope")


def test_shown_in_markdown_and_html(sweep):
    record = edited(edited(sweep, {0.1: 0.97, 0.5: 0.85, 1.0: 0.37}), {0.1: 1.0, 0.5: 1.0, 1.0: 1.0}, target="tied")
    assert "**Suggestion:** suggested scale for cross: 0.5" in record_markdown(record, Band(0.8))
    html = render_html(record, Band(0.8))
    assert "Sweep: retention vs scale" in html and "suggested scale for cross" in html
