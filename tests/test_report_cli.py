"""`gradflow report`: outputs, exit codes on bad input, and no half-written HTML."""

from __future__ import annotations

import json
import os

import pytest
from golden.records import compare_record, regression_pair, sweep_record
from typer.testing import CliRunner

from gradflow.cli.app import app


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("records")
    old, new = regression_pair()
    paths = {"run": folder / "run.json", "old": folder / "old.json", "new": folder / "new.json",
             "sweep": folder / "sweep.json"}
    compare_record().save(paths["run"])
    old.save(paths["old"])
    new.save(paths["new"])
    sweep_record().save(paths["sweep"])
    return paths


def invoke(*args):
    return CliRunner().invoke(app, ["report", *map(str, args)])


def test_terminal_default(files):
    result = invoke(files["run"])
    assert result.exit_code == 0, result.output
    assert "gradflow compare" in result.output and "per-module breakdown" in result.output
    assert "blocks.1.adapter|[red]x_y*`z`" in result.output


def test_no_modules_and_band_options(files):
    result = invoke(files["run"], "--no-modules", "--min-retention", "0.1", "--max-retention", "0.5")
    assert result.exit_code == 0, result.output
    assert "blocks.0.adapter" not in result.output and "flooded" in result.output


def test_markdown_and_json(files):
    result = invoke(files["run"], "--markdown")
    assert result.exit_code == 0 and result.output.startswith("### gradflow compare")
    result = invoke(files["sweep"], "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["schema"] == "gradflow/report" and data["kind"] == "sweep"
    assert data["suggestion"]["scale"] is not None and {r["verdict"] for r in data["rows"]}


def test_baseline_outputs(files, tmp_path):
    result = invoke(files["new"], "--baseline", files["old"])
    assert result.exit_code == 0, result.output
    assert "regression report" in result.output and "2 improved, 1 regressed" in result.output
    result = invoke(files["new"], "--baseline", files["old"], "--markdown")
    assert "retention 0.375 -&gt; 0.961 (fixed)" in result.output
    result = invoke(files["new"], "--baseline", files["old"], "--json")
    data = json.loads(result.output)
    assert data["regression"]["counts"]["improved"] == 2 and data["regression"]["warnings"] == []
    out = tmp_path / "reg.html"
    result = invoke(files["new"], "--baseline", files["old"], "--html", out)
    assert result.exit_code == 0 and "Regression against the baseline" in out.read_text()


def test_html_written_readable(files, tmp_path):
    out = tmp_path / "report.html"
    result = invoke(files["sweep"], "--html", out)
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("<!DOCTYPE html>") and "suggestion" in result.output
    assert oct(out.stat().st_mode & 0o044) != "0o0"  # group/other readable per umask, not 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


@pytest.mark.parametrize("content, fragment", [
    (None, "does not exist"), ("{oops", "not valid JSON"), ('{"a": 1}', "not a gradflow run record"),
])
def test_bad_record_exits_2(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    result = invoke(path, "--html", tmp_path / "out.html")
    assert result.exit_code == 2 and fragment in result.output
    assert not (tmp_path / "out.html").exists()


def test_bad_baseline_exits_2(files, tmp_path):
    result = invoke(files["run"], "--baseline", tmp_path / "missing.json")
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.parametrize("args, fragment", [
    (["--markdown", "--json"], "choose one"),
    (["--min-retention", "2", "--max-retention", "1"], "band is empty"),
])
def test_bad_options_exit_2(files, args, fragment):
    result = invoke(files["run"], *args)
    assert result.exit_code == 2 and fragment in result.output


def test_unwritable_html_exits_2_and_writes_nothing(files, tmp_path, monkeypatch):
    result = invoke(files["run"], "--html", tmp_path / "missing" / "r.html")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = invoke(files["run"], "--html", tmp_path)
    assert result.exit_code == 2 and "is a directory" in result.output
    out = tmp_path / "r.html"
    out.write_text("old report")

    def disk_full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("gradflow.record.os.replace", disk_full)
    result = invoke(files["run"], "--html", out)
    assert result.exit_code == 2 and "No space left on device" in result.output
    assert out.read_text() == "old report" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_folder_exits_2(files, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        result = invoke(files["run"], "--html", folder / "r.html")
        assert result.exit_code == 2 and "cannot write" in result.output
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)
