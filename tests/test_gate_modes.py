"""Gate modes and baseline comparison on hand-made rows (no measuring)."""

from __future__ import annotations

import copy

import pytest

from gradflow.errors import GradflowError
from gradflow.gate import baseline_checks, gate_row
from gradflow.verdicts import Band, Change, Transition, Verdict, gate_mode, judge_change, passes, verdict


def row(retention, low=None, high=None, status="ok", module="*", branch="b", target="t"):
    return {"branch": branch, "target": target, "module": module, "scale": None, "retention": retention,
            "ci_low": low, "ci_high": high, "status": status, "note": f"{status} note",
            "norm_with": 1.0, "norm_without": 1.0, "n_batches": 4, "per_batch": []}


BAND = Band(0.8)


@pytest.mark.parametrize(
    ("r", "mode", "label", "ok"),
    [
        (row(0.96, 0.94, 0.98), "ci", "ok", True),
        (row(0.37, 0.33, 0.41), "ci", "starved", False),
        (row(0.75, 0.70, 0.85), "ci", "uncertain", True),      # CI straddles: passes in ci mode
        (row(0.75, 0.70, 0.85), "strict", "uncertain", False),  # ... fails in strict mode
        (row(0.75, 0.70, 0.85), "point", "starved", False),    # point below the band
        (row(0.85, 0.70, 0.90), "point", "ok", True),
        (row(0.75), "ci", "uncertain", True),                  # one batch: no interval, cannot decide
        (row(0.75), "strict", "uncertain", False),
        (row(0.75), "point", "starved", False),                # ... the point estimate decides in point mode
        (row(1.0, 1.0, 1.0, status="no_effect"), "ci", "no effect", False),
        (row(None, status="no_grad"), "ci", "no grad", False),
        (row(None, status="undefined"), "point", "undefined", False),
        (row(None, status="non_finite"), "ci", "non-finite", False),
    ],
)
def test_gate_row_modes(r, mode, label, ok):
    check = gate_row(r, BAND, mode)
    assert (check.verdict, check.passed) == (label, ok)
    assert check.detail


def test_no_effect_is_reported_not_passed():
    check = gate_row(row(1.0, 1.0, 1.0, status="no_effect"), BAND, "ci")
    assert not check.passed and "not counted as a pass" in check.detail
    assert not passes(Verdict.NO_EFFECT, "ci")  # one notion of passing, the same for gates and reports


def test_band_and_verdict_api_kept():
    assert Band(0.8, 1.2).describe() == "[0.8, 1.2]"
    assert verdict(row(1.5, 1.3, 1.7), Band(0.8, 1.2), "ci") == "flooded"
    with pytest.raises(GradflowError):
        Band(1.0, 0.5)
    assert passes("uncertain", "ci") and not passes("uncertain", "point")
    with pytest.raises(GradflowError, match="gate mode 'median'"):
        gate_mode("median")
    with pytest.raises(GradflowError, match="finite"):
        Band(float("nan"))


class _Rec:
    def __init__(self, rows):
        self.rows = rows


def test_baseline_drop_beyond_tolerance_fails():
    old = _Rec([row(0.96, 0.94, 0.98)])
    same = baseline_checks(old, _Rec([row(0.95, 0.93, 0.97)]), [("b", "t", "*")], BAND, "ci", 0.05)
    assert [c.passed for c in same] == [True]
    dropped = baseline_checks(old, _Rec([row(0.85, 0.83, 0.88)]), [("b", "t", "*")], BAND, "ci", 0.05)
    assert [c.passed for c in dropped] == [False] and dropped[0].verdict == "regressed"
    # ci mode: a CI that reaches back above old - tolerance is not a proven drop; point mode fails it
    wide = _Rec([row(0.85, 0.80, 0.93)])
    assert baseline_checks(old, wide, [("b", "t", "*")], BAND, "ci", 0.05)[0].passed
    assert not baseline_checks(old, wide, [("b", "t", "*")], BAND, "point", 0.05)[0].passed
    # direction "both": a rise beyond the tolerance fails too
    rose = _Rec([row(1.3, 1.25, 1.35)])
    assert baseline_checks(old, rose, [("b", "t", "*")], BAND, "ci", 0.05)[0].passed
    assert not baseline_checks(old, rose, [("b", "t", "*")], BAND, "ci", 0.05, "both")[0].passed


def test_baseline_broken_row_and_new_row():
    old = _Rec([row(0.96, 0.94, 0.98)])
    broken = baseline_checks(old, _Rec([row(None, status="no_grad")]), [("b", "t", "*")], BAND)
    assert not broken[0].passed and "no_grad" in broken[0].detail
    added = baseline_checks(_Rec([]), _Rec([copy.deepcopy(row(0.9, 0.8, 1.0))]), [("b", "t", "*")], BAND)
    assert added[0].passed and added[0].verdict == "added"


def test_one_change_rule_for_report_and_gate():
    old = row(0.40, 0.35, 0.45)
    fixed = judge_change(old, row(0.95, 0.93, 0.97), BAND, "ci", 0.05, interval=(0.50, 0.60))
    assert (fixed.change, fixed.transition) == (Change.IMPROVED, Transition.FIXED)
    within = judge_change(old, row(0.42, 0.37, 0.47), BAND, "ci", 0.05, interval=(-0.03, 0.04))
    assert within.change is Change.UNCHANGED and within.transition is Transition.NONE
    unclear = judge_change(old, row(0.42, 0.37, 0.47), BAND, "ci", 0.05, interval=(-0.05, 0.09))
    assert unclear.change is Change.UNCERTAIN and "cannot tell" in unclear.note
    assert judge_change(old, row(0.42), BAND, "ci", 0.05).change is Change.UNCERTAIN  # no interval at all
    broken = judge_change(row(0.95, 0.93, 0.97), old, BAND, "ci", 0.05, interval=(-0.60, -0.50))
    assert (broken.change, broken.transition) == (Change.REGRESSED, Transition.BROKEN)
    drift = judge_change(row(0.95), row(1.30), BAND, "point", 0.05)
    assert drift.change is Change.DRIFTED
    # the baseline gate judges with the same rule: a drop inside the tolerance passes, beyond it fails
    class Rec:
        def __init__(self, rows):
            self.rows = rows
    assert baseline_checks(Rec([row(0.95)]), Rec([row(0.92)]), [("b", "t", "*")], BAND, "point", 0.05)[0].passed
    assert not baseline_checks(Rec([row(0.95)]), Rec([row(0.85)]), [("b", "t", "*")], BAND, "point", 0.05)[0].passed
