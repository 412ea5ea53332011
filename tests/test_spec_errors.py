"""Spec validation: every kind of mistake names the file and the key; the CLI exits 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradflow.cli.app import app
from gradflow.evaluation import evaluate
from gradflow.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
description = "toy"
branches = ["cross"]
targets = ["adapter"]
batches = 2
seed = 0

[subject]
name = "tests.toy_subject:make_subject"
set = { width = 8 }

[thresholds]
min_retention = 0.5
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_spec_parses(tmp_path):
    spec = load_spec(write(tmp_path, GOOD + '\n[[thresholds.modules]]\nmodule = "blocks.*.adapter"\n'
                           "min_retention = 0.3\n"))
    assert (spec.subject, spec.branches, spec.targets, spec.batches) == (
        "tests.toy_subject:make_subject", ["cross"], ["adapter"], 2)
    assert spec.overrides == {"width": "8"} and spec.band.min_retention == 0.5 and spec.gate == "ci"
    threshold = spec.module_thresholds[0]
    assert threshold.matches({"module": "blocks.1.adapter", "target": "adapter", "branch": "cross"})
    assert not threshold.matches({"module": "blocks.1.sub.adapter", "target": "adapter", "branch": "cross"})


def test_shipped_specs_parse():
    for path in sorted((ROOT / "probes").glob("*.toml")):
        spec = load_spec(path)
        assert spec.subject == "aaclip" and spec.band.min_retention == 0.8 and spec.preflight_model


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (GOOD.replace("batches = 2", "batchez = 2"), "batchez", "Did you mean 'batches'"),
        (GOOD.replace("min_retention = 0.5", "min_retension = 0.5"), "thresholds.min_retension",
         "Did you mean 'min_retention'"),
        (GOOD.replace("batches = 2", 'batches = "four"'), "batches",
         "expected a whole number of at least 1 or \"auto\""),
        (GOOD.replace("batches = 2", "batches = 0"), "batches", "at least 1"),
        (GOOD.replace("min_retention = 0.5", 'min_retention = "high"'), "thresholds.min_retention",
         "expected a number"),
        (GOOD.replace("min_retention = 0.5", "min_retention = 0.9\nmax_retention = 0.5"),
         "thresholds.max_retention", "band is empty"),
        (GOOD.replace("min_retention = 0.5", 'gate = "median"'), "thresholds.gate", "ci, point, strict"),
        (GOOD.replace('branches = ["cross"]', 'branches = "cross"'), "branches", "expected a list"),
        (GOOD.replace('branches = ["cross"]', "branches = []"), "branches", "at least one"),
        (GOOD.replace('targets = ["adapter"]\n', ""), "targets", "is required"),
        (GOOD.replace('name = "tests.toy_subject:make_subject"', "name = 3"), "subject.name", "expected a string"),
        (GOOD.replace('branches = ["cross"]\n', "").replace("[subject]", '[branches]\nx = "re:("\n\n[subject]'),
         "branches.x", "not a valid regular expression"),
        (GOOD.replace('branches = ["cross"]\n', "").replace("[subject]", '[branches]\nx = "blocks..cross"\n\n'
                                                           "[subject]"), "branches.x", "empty name segment"),
        (GOOD + '[[thresholds.modules]]\nmodule = "re:[a"\nmin_retention = 0.1\n', "thresholds.modules[0].module",
         "regular expression"),
        (GOOD + '[baseline]\nrecord = "missing.json"\n', "baseline.record", "does not exist"),
        (GOOD + "[baseline]\ntolerance = 0.1\n", "baseline.record", "is required"),
        (GOOD + "[preflight]\ntrained = [1]\n", "preflight.trained[0]", "non-empty string"),
        (GOOD + "[preflight]\nconfig = { w = [1, 2] }\n", "preflight.config.w", "string, number or boolean"),
        (GOOD.replace("[subject]", "[subjekt]"), "subjekt", "Did you mean 'subject'"),
        (GOOD.replace("set = { width = 8 }", 'paths = { adapters = "ckpt/none" }'), "subject.paths.adapters",
         "does not exist"),
    ],
)
def test_spec_errors_name_file_and_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}:"), message
    assert words in message


def test_subject_paths_resolve_relative_to_the_spec(tmp_path):
    (tmp_path / "ckpt").mkdir()
    spec = load_spec(write(tmp_path, GOOD.replace("set = { width = 8 }", 'paths = { adapters = "ckpt" }')))
    assert spec.options == {"adapters": str(tmp_path / "ckpt")}


def test_not_toml_and_missing_file(tmp_path):
    bad = write(tmp_path, "branches = [\n")
    with pytest.raises(SpecError, match=rf"{bad}: not valid TOML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="spec file does not exist"):
        load_spec(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        (('branches = ["cross"]', 'branches = ["crosss"]'), "branches", "unknown branch 'crosss'"),
        (('targets = ["adapter"]', 'targets = ["adaptr"]'), "targets", "unknown target 'adaptr'"),
        (("set = { width = 8 }", "set = { colour = 8 }"), "subject", "unknown toy override"),
        (('name = "tests.toy_subject:make_subject"', 'name = "tests.toy_subject:nothing"'), "subject",
         "no top-level function 'nothing' decorated with @gradflow.subject_factory"),
    ],
)
def test_runtime_bad_input_names_the_key(tmp_path, change, key, words):
    path = write(tmp_path, GOOD.replace(*change))
    result = evaluate(path)
    assert result.exit_code == 2 and result.record is None
    assert result.error.startswith(f"{key}:") and words in result.error, result.error
    assert str(path) in result.summary()


def test_bad_selector_in_spec_branch_table(tmp_path):
    path = write(tmp_path, GOOD.replace('branches = ["cross"]\n', "").replace(
        "[subject]", '[branches]\nmine = "blocks.*.crosss"\n\n[subject]'))
    result = evaluate(path)
    assert result.exit_code == 2 and result.error.startswith("branches:") and "matched no module" in result.error


def test_cli_exits_2_with_file_and_key(tmp_path):
    path = write(tmp_path, GOOD.replace("batches = 2", "batchez = 2"))
    good = write(tmp_path, GOOD, "good.toml")
    result = CliRunner().invoke(app, ["check", str(good), str(path)])
    assert result.exit_code == 2
    assert f"{path}: batchez" in result.output.replace("\n", "")
    assert "gradflow compare" not in result.output  # nothing was measured: specs are validated first


def test_cli_no_specs_and_bad_gate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["check"])
    assert result.exit_code == 2 and "no probe specs" in result.output
    good = write(tmp_path, GOOD)
    assert CliRunner().invoke(app, ["check", str(good), "--gate", "median"]).exit_code == 2


@pytest.mark.parametrize(("content", "fragment"), [
    (b"\xff\xfe binary \x00", "not UTF-8"),
    (b"a = " + b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b"# " + b"x" * (2 * 1024 * 1024), "larger than 1 MiB"),
], ids=["binary", "deeply-nested", "too-large"])
def test_unreadable_specs_exit_2_without_a_traceback(tmp_path, content, fragment):
    spec = tmp_path / "bad.toml"
    spec.write_bytes(content)
    with pytest.raises(SpecError, match=fragment):
        load_spec(spec)
    result = CliRunner().invoke(app, ["check", str(spec), "--preset", "tiny"])
    assert result.exit_code == 2 and fragment.split()[0] in result.output


def test_record_fields_keep_their_bounds(tmp_path):
    import json

    import gradflow as gf

    record = json.loads((Path(__file__).parents[1] / "reports" / "aaclip-small" / "stage2-v1-w0.1.json").read_text())
    record["confidence"] = 1e308  # once accepted, then an OverflowError in the report
    path = tmp_path / "r.json"
    path.write_text(json.dumps(record))
    with pytest.raises(gf.RecordError, match=r"confidence.*\(0, 1\)"):
        gf.load_run(path)
