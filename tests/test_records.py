"""Run records: round trip, determinism, atomic writes and clear errors on bad files."""

from __future__ import annotations

import json

import pytest
from reference_models import make_batches, make_net, mse
from typer.testing import CliRunner

import gradflow as gf
from gradflow.cli.app import app

TOY = "tests.toy_subject:make_subject"


def run(seed=0):
    return gf.compare(make_net(), mse, make_batches(3), branches={"cross": "blocks.*.cross.inner"},
                      targets={"adapter": "blocks.*.adapter", "tied": ["head", "tail"]}, seed=seed)


def strip_time(text):
    data = json.loads(text)
    data.pop("run")
    return json.dumps(data)


def test_same_seed_twice_is_byte_identical_except_timestamps(tmp_path):
    first, second = run(), run()
    assert strip_time(first.to_json()) == strip_time(second.to_json())
    assert strip_time(run(seed=1).to_json()) != strip_time(first.to_json())


def test_cli_same_seed_twice_identical_files(tmp_path):
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        result = CliRunner().invoke(app, ["compare", "-s", TOY, "--seed", "4", "--out", str(path), "--quiet"])
        assert result.exit_code == 0, result.output
    assert strip_time(paths[0].read_text()) == strip_time(paths[1].read_text())


def test_round_trip_and_table_columns(tmp_path):
    record = run()
    path = record.save(tmp_path / "run.json")
    loaded = gf.load_run(path)
    assert loaded.data == record.data
    table = loaded.table()
    assert list(table.columns[:9]) == ["branch", "target", "module", "norm_with", "norm_without", "retention",
                                       "ci_low", "ci_high", "n_batches"]
    assert loaded.retention("cross", "adapter") == record.retention("cross", "adapter")
    assert set(loaded.norms("adapter")) == {"with", "without"}


def test_non_finite_values_survive_as_strict_json(tmp_path):
    record = run()
    record.data["retention"][0]["ci_high"] = float("inf")  # e.g. a batch whose "without" norm is zero
    text = record.to_json()
    assert "Infinity" in text and json.loads(text)  # strict JSON parses it
    path = record.save(tmp_path / "r.json")
    assert gf.load_run(path).data["retention"][0]["ci_high"] == float("inf")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_measured_row_without_a_finite_retention_is_refused(tmp_path, value):
    # a NaN retention with status "ok" rendered as "—" and passed the gate
    record = run()
    record.data["retention"][0]["retention"] = value
    path = record.save(tmp_path / "r.json")
    with pytest.raises(gf.RecordError, match="finite retention"):
        gf.load_run(path)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        ('{"hello": 1}', "not a gradflow run record"),
        ('{"schema": "gradflow/run-record", "schema_version": 99}', "schema_version 99"),
        ('{"schema": "gradflow/run-record", "schema_version": 1}', r"is invalid at \$\.kind: Field required"),
    ],
)
def test_load_run_rejects_bad_files(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(gf.RecordError, match=fragment):
        gf.load_run(path)


def test_load_run_missing_file(tmp_path):
    with pytest.raises(gf.RecordError, match="does not exist"):
        gf.load_run(tmp_path / "missing.json")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    path.write_text("old")
    record = run()

    def broken_replace(*_):
        raise OSError("disk full")

    monkeypatch.setattr("gradflow.files.os.replace", broken_replace)
    with pytest.raises(gf.GradflowError, match="disk full; nothing was written"):
        record.save(path)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
