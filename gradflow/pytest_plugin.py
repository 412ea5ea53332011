"""gradflow's pytest plugin (registered through the ``pytest11`` entry point).

Kept import-light: torch is only imported when a gradflow fixture or marker is used.
"""

from __future__ import annotations


def pytest_configure(config) -> None:  # noqa: ANN001 - pytest's hook signature
    config.addinivalue_line(
        "markers", "gradflow(spec): turn a gradflow probe spec (probes/*.toml) into a test"
    )
