"""Child process: run N steps of one variant and print its peak RSS (ru_maxrss) as JSON."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch


def main() -> None:
    preset, variant, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(2)
    from benchmarks.workloads import make_steps
    from gradflow.subjects.aaclip import make_subject

    subject = make_subject(preset=preset)
    batch = subject.batch(0)
    step = make_steps(subject, batch)[variant]
    step()  # warm-up: caches, optimizer state
    baseline_mb = _rss_mb("VmRSS")
    reset = _reset_peak()
    for _ in range(steps):
        step()
    peak_mb = _rss_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": variant, "peak_rss_mb": peak_mb, "rss_before_steps_mb": baseline_mb,
                      "peak_reset": reset}))


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) so the building of the model does not mask the steps' peak (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
