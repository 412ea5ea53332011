"""gradflow's pytest plugin (registered through the ``pytest11`` entry point; no configuration needed).

* ``gradflow_subject`` fixture: a factory, ``gradflow_subject("aaclip", preset="tiny", overrides={...})``
  builds a subject (a built-in name or ``"module.path:factory"``); each call builds a fresh one.
* ``@pytest.mark.gradflow(spec="probes/aaclip-stage2.toml")``: the marked test runs the spec before its
  body and fails with the rendered tables when a check fails (``preset=``, ``batches=``, ``gate=`` are
  optional keyword arguments). A relative spec path is looked up from the rootdir, then the test file's
  folder, then the current folder.
* :func:`gradflow.testing.assert_retention` for assertions in test bodies.

Kept import-light: this module imports only pytest; gradflow's measuring code (and torch) is imported
when a fixture or marker is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

#: ``item.stash[SPEC_RESULT]``: the :class:`gradflow.evaluation.SpecResult` a ``gradflow`` marker produced
#: (the test body can read it through ``request.node.stash``).
SPEC_RESULT = pytest.StashKey[Any]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "gradflow(spec, preset=None, batches=None, gate=None): run a gradflow probe spec (probes/*.toml) as "
        "this test; it fails with the retention table when a check fails",
    )


@pytest.fixture
def gradflow_subject() -> Any:
    """Factory fixture: ``gradflow_subject(name="aaclip", preset=None, overrides=None, seed=None,
    weights=None, **options)`` returns a fresh :class:`gradflow.Subject`."""

    def factory(name: str = "aaclip", preset: str | None = None, overrides: dict[str, Any] | None = None,
                seed: int | None = None, weights: str | None = None, **options: Any) -> Any:
        from gradflow.subjects.registry import load_subject

        values = {str(k): str(v) for k, v in (overrides or {}).items()}
        return load_subject(name, roots=[Path.cwd()], preset=preset, overrides=values, seed=seed, weights=weights,
                            **options)

    return factory


def _spec_path(item: pytest.Item, spec: str) -> Path:
    path = Path(spec)
    if path.is_absolute():
        return path
    candidates = [item.config.rootpath / path, Path(str(item.path)).parent / path, Path.cwd() / path]
    return next((c for c in candidates if c.is_file()), candidates[0])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    marker = item.get_closest_marker("gradflow")
    if marker is None:
        return
    spec = marker.kwargs.get("spec", marker.args[0] if marker.args else None)
    if not spec:
        pytest.fail("@pytest.mark.gradflow needs a spec: @pytest.mark.gradflow(spec='probes/x.toml')", pytrace=False)
    from gradflow.errors import GradflowError
    from gradflow.testing import check_spec

    options = {k: marker.kwargs[k] for k in ("preset", "batches", "gate") if k in marker.kwargs}
    message = None
    try:
        item.stash[SPEC_RESULT] = check_spec(_spec_path(item, str(spec)), **options)
    except GradflowError as exc:
        message = f"gradflow spec error (bad input): {exc}"
    except AssertionError as exc:
        message = str(exc)
    if message is not None:  # failed outside the except block: no "during handling" chain in the report
        pytest.fail(message, pytrace=False)
