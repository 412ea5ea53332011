"""Fuzzing run records: a mutated record either loads and renders in every format, or is a RecordError."""

from __future__ import annotations

import copy
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

import gradflow as gf
from gradflow.report.html import render_html
from gradflow.report.markdown import record_markdown, regression_markdown
from gradflow.report.summary import report_data
from gradflow.report.terminal import render_record, render_regression

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["NaN", "Infinity", "-Infinity", "ok", "no_grad", "*", "with"]),
    st.lists(st.integers(0, 5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@pytest.fixture(scope="module", params=["compare", "sweep"])
def valid(request) -> dict:
    from tests.toy_subject import make_subject

    if request.param == "sweep":
        record = gf.sweep(make_subject(), "cross", [0.0, 0.5, 1.0], batches=3, seed=1)
    else:
        record = gf.compare(make_subject(), batches=3, seed=1)
    return json.loads(record.to_json())


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _mutate(data: dict, path: tuple, action: str, value) -> dict:
    out = copy.deepcopy(data)
    if not path:
        return out
    parent = out
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    if action == "delete":
        del parent[key]
    elif action == "set":
        parent[key] = value
    elif action == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    return out


def _render_everything(record: gf.RunRecord) -> None:
    band = gf.Band(0.8)
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(render_record(record, band))
    console.print(render_regression(record, record, band))
    record_markdown(record, band)
    regression_markdown(record, record, band)
    render_html(record, band, baseline=record)
    json.dumps(report_data(record, band, baseline=record), default=str)
    record.to_json()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_records_load_and_render_or_are_record_errors(valid, data, tmp_path_factory):
    mutated = valid
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(mutated))
        path = paths[data.draw(st.integers(0, len(paths) - 1))]
        action = data.draw(st.sampled_from(["set", "set", "delete", "duplicate"]))
        mutated = _mutate(mutated, path, action, data.draw(VALUES))
    file = tmp_path_factory.mktemp("fuzz") / "r.json"
    file.write_text(json.dumps(mutated))
    try:
        record = gf.load_run(file)
    except gf.RecordError:
        return
    _render_everything(record)
