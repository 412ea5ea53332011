"""`gradflow check` end to end: exit codes, tables, run records, JUnit XML, baselines, a real subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

from typer.testing import CliRunner

from gradflow import load_run
from gradflow.cli.app import app

ROOT = Path(__file__).resolve().parent.parent

# Toy retention cross -> adapter with 4 batches, seed 0: 2.02, 95% CI about [1.12, 3.67] (wide: four batches
# whose ratios run from 1.56 to 3.07). A band from 5 is clearly violated, one from 2.5 cannot be decided.
SPEC = """
description = "toy {name}"
branches = ["cross"]
targets = ["adapter"]
batches = 4
seed = 0

[subject]
name = "tests.toy_subject:make_subject"

[thresholds]
min_retention = {min}
{extra}
"""


def spec(tmp_path: Path, name: str, min_retention: float = 0.8, extra: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(SPEC.format(name=name, min=min_retention, extra=extra)))
    return path


def check(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["check", *map(str, args)])
    return result.exit_code, result.output


def test_pass_fail_and_junit(tmp_path):
    ok, low = spec(tmp_path, "ok", 0.8), spec(tmp_path, "low", 5.0)
    code, out = check(ok, "--quiet")
    assert code == 0 and "PASS" in out
    junit = tmp_path / "check.xml"
    code, out = check(ok, low, "--junit", junit, "--out", tmp_path)
    assert code == 1
    assert "starved" in out and "FAIL" in out and "gate: ci" in out
    root = ET.parse(junit).getroot()
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [str(ok), str(low)]
    for suite in suites:
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures")) == sum(1 for c in cases if c.find("failure") is not None)
    assert [int(s.get("failures")) for s in suites] == [0, 1]
    assert root.get("tests") == str(sum(int(s.get("tests")) for s in suites)) and root.get("failures") == "1"
    failure = suites[1].find("testcase/failure")
    assert failure.get("type") == "starved" and "below the band [5, ∞)" in failure.get("message")
    assert "retention" in failure.text and "\x1b[" not in failure.text
    # one record per spec in the --out folder
    assert load_run(tmp_path / "ok.json").retention("cross", "adapter") > 1.5
    assert (tmp_path / "low.json").is_file()


def test_gate_modes_on_an_uncertain_row(tmp_path):
    path = spec(tmp_path, "edge", 2.5)  # point 2.02 < 2.5 but the CI reaches above it
    assert check(path, "--quiet")[0] == 0
    assert check(path, "--quiet", "--gate", "point")[0] == 1
    assert check(path, "--quiet", "--gate", "strict")[0] == 1
    code, out = check(path)
    assert code == 0 and "uncertain" in out and "passes in ci mode" in out.replace("\n", " ")


def test_no_effect_branch_fails(tmp_path):
    path = tmp_path / "noeffect.toml"
    path.write_text(SPEC.format(name="n", min=0.5, extra="").replace(
        'branches = ["cross"]\n', "").replace(
        "[subject]", '[branches]\nidle = { selector = "blocks.0.body", mode = "scale", scale = 1.0 }\n\n[subject]'))
    code, out = check(path)
    assert code == 1
    flat = " ".join(out.split())
    assert "no effect" in flat and "cannot affect" in flat


def test_per_module_thresholds(tmp_path):
    extra = '[[thresholds.modules]]\nmodule = "blocks.0.adapter"\nmin_retention = 6.0\n'
    code, out = check(spec(tmp_path, "mod", 0.8, extra))
    assert code == 1 and "blocks.0.adapter" in out


def test_out_file_and_out_errors(tmp_path):
    ok = spec(tmp_path, "ok")
    code, _ = check(ok, "--quiet", "--out", tmp_path / "run.json")
    assert code == 0 and load_run(tmp_path / "run.json").data["subject"]["name"] == "toy"
    assert check(ok, spec(tmp_path, "two"), "--out", tmp_path / "x.json")[0] == 2
    assert check(ok, "--out", tmp_path / "missing" / "x.json")[0] == 2


def test_baseline_regression(tmp_path):
    ok = spec(tmp_path, "ok")
    assert check(ok, "--quiet", "--out", tmp_path / "base.json")[0] == 0
    same = spec(tmp_path, "same", 0.8, '[baseline]\nrecord = "base.json"\ntolerance = 0.05\n')
    assert check(same, "--quiet")[0] == 0
    data = json.loads((tmp_path / "base.json").read_text())
    for row in data["retention"]:
        if row["module"] == "*":
            row["retention"], row["ci_low"], row["ci_high"] = 5.0, 4.9, 5.1
    (tmp_path / "high.json").write_text(json.dumps(data))
    worse = spec(tmp_path, "worse", 0.8, '[baseline]\nrecord = "high.json"\ntolerance = 0.05\n')
    code, out = check(worse)
    flat = " ".join(out.split())
    assert code == 1 and "regressed: retention 5.000" in flat and "-2.976" in flat, flat
    preset = spec(tmp_path, "preset", 0.8, '[baseline]\nrecord = "base-{preset}.json"\n')
    code, out = check(preset, "--preset", "big")
    assert code == 2 and "base-big.json does not exist" in out.replace("\n", "")


def test_subprocess_exit_code_and_junit(tmp_path):
    """The installed console script, as CI calls it (one interpreter start: exit codes 0 and 2 are covered
    through CliRunner above)."""
    ok, low = spec(tmp_path, "ok"), spec(tmp_path, "low", 5.0)
    junit = tmp_path / "j.xml"
    script = shutil.which("gradflow")
    command = [script] if script else [sys.executable, "-m", "gradflow"]
    proc = subprocess.run([*command, "check", str(ok), str(low), "--quiet", "--junit", str(junit)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout and "FAIL" in proc.stdout
    root = ET.parse(junit).getroot()
    assert (root.get("failures"), root.get("errors")) == ("1", "0")
