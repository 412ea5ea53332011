"""The benchmark suite's --quick mode runs every benchmark once (no timing is asserted)."""

from __future__ import annotations

from conftest import ROOT  # noqa: F401  (puts the repo root on sys.path for `benchmarks`)


def test_every_benchmark_runs_in_quick_mode(tmp_path):
    from benchmarks.run import main

    results = main(["--quick", "--out-dir", str(tmp_path)])
    assert set(results["probe_overhead"]["tiny"]) == {"plain", "gradflow", "norm_loop", "histogram"}
    assert {row["K"] for row in results["compare_efficiency"]} == {1, 2}
    assert set(results["norm_kernels"]) >= {"loop_item", "foreach_norm", "get_total_norm"}
    assert results["probe_scaling"]["by_modules"] and results["scale"]
    assert list(tmp_path.iterdir()) == []  # quick mode writes nothing
