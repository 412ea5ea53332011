"""--batches auto end to end: a clear case stops at the first look, an ambiguous one runs on; the record
keeps the rule; specs and the CLI take "auto"; an unbounded request is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_interval_coverage import Exact
from typer.testing import CliRunner

import gradflow as gf
from gradflow.cli.app import app
from gradflow.gate import gate_row
from gradflow.stats import ratio_interval

TOY = "tests.toy_subject:make_subject"


def exact_subject(ratios: list[float], spread: float = 0.05) -> gf.Subject:
    rng = np.random.default_rng(0)
    batches = []
    for ratio in ratios:
        y = 1.0 + spread * rng.standard_normal()
        batches.append((torch.tensor([ratio * y], dtype=torch.float64), torch.tensor([y], dtype=torch.float64)))
    return gf.Subject(Exact(1).double(), lambda m, b: m(b), batches, branches={"b": "branch"},
                      targets={"w": "weights.*"})


def test_clear_case_stops_at_the_first_look():
    record = gf.compare(exact_subject([0.37 * (1 + 0.02 * i) for i in range(24)]), batches="auto")
    rule = record.data["batches"]["rule"]
    assert record.data["batches"]["count"] == 3 and rule["reason"] == "decided" and rule["looks"] == [3, 6, 12, 24]
    row = record.row("b", "w")
    assert row["ci_high"] < 0.8
    x = [p["norms"]["w"]["*"] for p in record.data["passes"] if p["setting"] == "with"]
    y = [p["norms"]["w"]["*"] for p in record.data["passes"] if p["setting"] != "with"]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(ratio_interval(np.array(x), np.array(y), 1 - 0.05 / 4))
    assert record.data["interval"]["confidence"] == pytest.approx(0.9875)


def test_ambiguous_case_runs_to_the_last_look_and_stays_uncertain():
    rng = np.random.default_rng(1)
    ratios = list(0.8 + 0.3 * rng.standard_normal(24))
    record = gf.compare(exact_subject([abs(r) for r in ratios], spread=0.3), batches="auto", max_batches=12)
    rule = record.data["batches"]["rule"]
    assert rule["looks"] == [3, 6, 12] and record.data["batches"]["count"] == 12
    assert rule["reason"] in ("max_batches", "decided")
    if rule["reason"] == "max_batches":
        assert gate_row(record.row("b", "w"), gf.Band(0.8)).verdict == "uncertain"


def test_precision_stops_a_run_whose_interval_is_narrow_enough():
    record = gf.compare(exact_subject([0.8] * 24, spread=0.01), batches="auto", precision=0.5)
    assert record.data["batches"]["rule"]["reason"] == "precise" and record.data["batches"]["count"] == 3


def test_cli_and_spec_take_auto(tmp_path):
    out = tmp_path / "run.json"
    result = CliRunner().invoke(app, ["compare", "--subject", TOY, "--batches", "auto", "--max-batches", "6",
                                      "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert gf.load_run(out).data["batches"]["rule"]["looks"] == [3, 6]
    spec = tmp_path / "s.toml"
    spec.write_text(f'branches = ["cross"]\ntargets = ["adapter"]\nmax_batches = 6\n[subject]\nname = "{TOY}"\n')
    result = CliRunner().invoke(app, ["check", str(spec), "--out", str(tmp_path / "c.json")])
    assert result.exit_code in (0, 1), result.output
    assert gf.load_run(tmp_path / "c.json").data["batches"]["rule"]["rule"].startswith("group-sequential")
    bad = CliRunner().invoke(app, ["compare", "--subject", TOY, "--batches", "many"])
    assert bad.exit_code == 2 and "'auto'" in bad.output


def test_unbounded_batch_requests_are_refused():
    sub = exact_subject([0.5] * 3)
    sub.batches = lambda i: sub.batch(i % 3)
    with pytest.raises(gf.SubjectError, match="more than gradflow runs"):
        gf.compare(gf.Subject(sub.model, sub.loss_fn, lambda i: (torch.ones(1), torch.ones(1)),
                              branches={"b": "branch"}, targets={"w": "weights.*"}), batches=100_000_000_000)


def test_the_readme_main_job_runs_auto_by_default(tmp_path):
    # `gradflow compare --ablate cross_attn` without --batches: the AA-CLIP subject defaults to "auto".
    out = tmp_path / "run.json"
    result = CliRunner().invoke(app, ["compare", "--ablate", "cross_attn", "--preset", "tiny", "--max-batches", "3",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    rule = gf.load_run(out).data["batches"]["rule"]
    assert rule["rule"].startswith("group-sequential") and rule["looks"] == [3]


@pytest.mark.parametrize(("rule", "fragment"), [
    ({"rule": "fixed"}, "run with --batches auto"),
    ({"rule": "group-sequential", "reason": "decided"}, "per-module row can stay uncertain"),
    ({"rule": "group-sequential", "reason": "max_batches"}, "Raise --max-batches"),
    ({"rule": "group-sequential", "reason": "precise"}, "as narrow as the --precision"),
])
def test_uncertain_hint_follows_how_the_batch_count_was_chosen(rule, fragment):
    from types import SimpleNamespace

    from gradflow.report.format import uncertain_hint

    assert fragment in uncertain_hint(SimpleNamespace(data={"batches": {"count": 3, "rule": rule}}))
