"""The pytest plugin and gradflow.testing: assertion messages, fixture, marker, a user's suite."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gradflow.testing import assert_retention

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_USER = ROOT / "tests" / "plugin_user"


@pytest.fixture(scope="module")
def toy_record():
    import gradflow as gf
    from tests.toy_subject import make_subject

    return gf.compare(make_subject(), batches=4, seed=0)


def test_assert_retention_passes_and_returns_the_record(toy_record):
    assert assert_retention(toy_record, "cross", "adapter", min=0.8) is toy_record
    assert_retention(toy_record, "cross", "adapter", min=2.5, gate="ci")  # uncertain passes in ci mode


def test_assert_retention_message_has_the_plain_table(toy_record):
    with pytest.raises(AssertionError) as info:
        assert_retention(toy_record, "cross", "adapter", min=2.5, gate="point")
    message = str(info.value)
    assert "is starved, band [2.5, ∞), gate point" in message
    assert "| branch | target" in message and "| cross  | adapter | (all)" in message
    assert "\x1b[" not in message  # no ANSI codes
    with pytest.raises(AssertionError, match=r"blocks\.1\.adapter"):
        assert_retention(toy_record, "cross", "adapter", min=None, max=1.0, module="blocks.1.adapter")


def test_fixture_factory_builds_subjects(gradflow_subject):
    subject = gradflow_subject("tests.toy_subject:make_subject", overrides={"width": 4}, seed=1)
    assert subject.config["width"] == 4
    assert_retention(subject, "cross", "head", min=0.1, batches=2)


@pytest.mark.gradflow(spec="tests/plugin_user/healthy.toml")
def test_marker_runs_a_spec(request):
    from gradflow.pytest_plugin import SPEC_RESULT

    result = request.node.stash[SPEC_RESULT]  # the marker evaluated the spec before this body ran
    assert result.passed and result.record is not None
    assert [c.kind for c in result.checks].count("retention") >= 1


def test_plugin_module_is_import_light():
    """pytest_plugin.py imports nothing but pytest and the standard library at module level."""
    tree = ast.parse((ROOT / "gradflow" / "pytest_plugin.py").read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = {a.name for n in top for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert names <= {"__future__", "annotations", "pathlib", "Path", "typing", "Any", "pytest"}, names


def test_user_suite_shows_the_table_on_failure(tmp_path):
    """tests/plugin_user as a user's own folder (no conftest, no config): 2 pass, 2 fail with the table."""
    for item in PLUGIN_USER.iterdir():
        if item.is_file():
            shutil.copy(item, tmp_path / ("test_retention.py" if item.name == "retention_suite.py" else item.name))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "2 failed, 2 passed" in out
    assert "FAILED test_retention.py::test_side_branch_starves_adapter_expected_failure" in out
    assert "FAILED test_retention.py::test_starved_spec_expected_failure" in out
    assert "is starved, band [50, ∞), gate ci" in out
    assert "| branch | target  | module" in out and "| side   | adapter | (all)" in out
    assert "retention: side -> adapter (all)" in out and "| FAIL   |" in out
    assert "\x1b[" not in out and "During handling" not in out
