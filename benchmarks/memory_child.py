"""Child process: run N steps of one variant and print its peak RSS (ru_maxrss) as JSON."""

from __future__ import annotations

import json
import resource
import sys

import torch


def main() -> None:
    preset, variant, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(2)
    from benchmarks.workloads import make_steps
    from gradflow.subjects.aaclip import make_subject

    subject = make_subject(preset=preset)
    batch = subject.batch(0)
    step = make_steps(subject, batch)[variant]
    for _ in range(steps):
        step()
    print(json.dumps({"variant": variant, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
