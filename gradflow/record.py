"""Run records: the versioned JSON document every command writes and every renderer reads.

Non-finite floats are stored as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` so the
file stays strict JSON; ``None`` means "no gradient" or "not defined" (the row's ``status`` says which).
Only ``run.created`` and ``run.elapsed_s`` differ between two runs with the same inputs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RecordError
from .files import FileError, read_text_capped, write_atomic
from .record_schema import SCHEMA, SCHEMA_VERSION, validate

if TYPE_CHECKING:
    import pandas as pd

    from .subject import Subject

#: How the retention intervals of a record are computed (docs/intervals.md).
INTERVAL_METHOD = "jackknife-log-t: log of the ratio of means, jackknife standard error, Student t with N-1 df"
TABLE_COLUMNS = [
    "branch", "target", "module", "norm_with", "norm_without", "retention",
    "ci_low", "ci_high", "n_batches",
]
def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as the strings record files use ('NaN', 'Infinity', '-Infinity')."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def environment() -> dict[str, Any]:
    """Versions and settings that affect the numbers (no host names, nothing that varies per run)."""
    import numpy
    import torch

    from . import __version__

    env: dict[str, Any] = {
        "gradflow": __version__,
        "python": platform.python_version(),
        "platform": platform.system().lower() + "-" + platform.machine(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    for package, key in (("open_clip_torch", "open_clip"),):
        # the installed version, without importing the package (open_clip takes seconds to import)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            env[key] = importlib.metadata.version(package)
    return env


def _model_summary(subject: Subject) -> dict[str, Any]:
    params = list(subject.model.parameters())
    first = next(iter(params), None)
    return {
        "class": type(subject.model).__name__,
        "n_parameters": sum(p.numel() for p in params),
        "n_trainable": sum(p.numel() for p in params if p.requires_grad),
        "dtype": str(first.dtype).replace("torch.", "") if first is not None else None,
        "device": str(first.device) if first is not None else None,
        "training": subject.model.training,
    }


def build_record(
    *,
    kind: str,
    subject: Subject,
    seed: int,
    n_batches: int,
    confidence: float,
    branches: Mapping[str, Any],
    targets: Mapping[str, Any],
    settings: Sequence[Any],
    passes: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    batch_seeds: list[int],
    elapsed_s: float,
    measurement: Mapping[str, Any] | None = None,
    batch_rule: Mapping[str, Any] | None = None,
    learning: Mapping[str, Any] | None = None,
) -> RunRecord:
    """Assemble a :class:`RunRecord` from the measurement layer's results."""
    data = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "run": {
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed_s, 3),
        },
        "environment": environment(),
        "subject": {
            "name": subject.name,
            "preset": subject.preset,
            "config": dict(subject.config),
            "model": _model_summary(subject),
        },
        "seed": seed,
        "confidence": confidence,
        "batches": {"count": n_batches, "pass_seeds": batch_seeds,
                    "rule": dict(batch_rule or {"rule": "fixed", "confidence": confidence})},
        "interval": {"method": INTERVAL_METHOD,
                     "confidence": (batch_rule or {}).get("look_confidence", confidence)},
        "branches": dict(branches),
        "targets": dict(targets),
        "settings": [
            {"name": s.name, "scale": s.scale,
             "ablate": {b: br.describe() for b, br in s.ablations.items()}}
            for s in settings
        ],
        "measurement": dict(measurement or {}),
        "passes": passes,
        "retention": rows,
    }
    if learning is not None:
        data["learning"] = dict(learning)
    # A JSON round trip makes the in-memory record identical to what load_run() returns.
    return RunRecord(json.loads(json.dumps(json_safe(data), allow_nan=False)))


class RunRecord:
    """A run record: what one ``compare`` or ``sweep`` measured, with accessors for the results."""

    def __init__(self, data: dict[str, Any], source: str | None = None):
        self.data = validate(data, source)
        self.source = source

    # -- accessors ---------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"compare"`` or ``"sweep"``."""
        return self.data["kind"]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The retention rows (one per branch, target and module; module ``"*"`` = whole target)."""
        return self.data["retention"]

    def row(self, branch: str, target: str, module: str = "*", scale: float | None = None) -> dict[str, Any]:
        """The retention row of ``branch`` and ``target`` (``module="*"``: the whole target).

        Args:
            branch: branch name.
            target: target name.
            module: ``"*"`` for the whole target, or a module's qualified name.
            scale: for sweep records, the branch scale of the row (required there).

        Returns:
            The row dict (see :class:`gradflow.verdicts.RetentionRow`).

        Raises:
            GradflowError: the record has no such row (the message lists what it has).
        """
        from .errors import GradflowError

        if self.kind == "sweep" and scale is None:
            scales = sorted({r["scale"] for r in self.rows if r["scale"] is not None})
            raise GradflowError(f"this is a sweep record: say which scale (one of {scales}), e.g. scale={scales[-1]}.")
        for row in self.rows:
            if (row["branch"], row["target"], row["module"]) == (branch, target, module) and row["scale"] == scale:
                return row
        branches = sorted({r["branch"] for r in self.rows})
        targets = sorted({r["target"] for r in self.rows})
        raise GradflowError(
            f"this run has no row for branch {branch!r}, target {target!r}, module {module!r}"
            + (f", scale {scale:g}" if scale is not None else "")
            + f". It measured branches {branches} and targets {targets}."
        )

    def samples(self, row: dict[str, Any]) -> tuple[list[float], list[float]] | None:
        """The per-batch norms ``(with, without)`` behind a row, from the record's passes.

        ``None`` when the passes do not hold them, or when they do not reproduce the row's retention (a row
        edited by hand, or a record put together from pieces: nothing is paired on numbers it did not see).
        """
        numerator, denominator = row.get("numerator"), row.get("denominator")
        by_setting: dict[str, list[float | None]] = {numerator: [], denominator: []}
        for entry in self.data["passes"]:
            if entry["setting"] in by_setting:
                value = entry["norms"].get(row["target"], {}).get(row["module"])
                by_setting[entry["setting"]].append(value)
        x, y = by_setting[numerator], by_setting[denominator]
        if not x or len(x) != len(y) or len(x) != row.get("n_batches") or any(v is None for v in (*x, *y)):
            return None
        retention = row.get("retention")
        denominator_mean = math.fsum(y) / len(y)  # type: ignore[arg-type]
        if not isinstance(retention, float) or denominator_mean == 0:
            return None
        if not math.isclose(math.fsum(x) / len(x) / denominator_mean, retention, rel_tol=1e-9):  # type: ignore[arg-type]
            return None
        return x, y  # type: ignore[return-value]

    def retention(self, branch: str, target: str, module: str = "*", scale: float | None = None) -> float:
        """Ratio of mean gradient norms with / without ``branch`` for ``target`` (NaN if undefined)."""
        value = self.row(branch, target, module, scale)["retention"]
        return math.nan if value is None else float(value)

    def ci(self, branch: str, target: str, module: str = "*", scale: float | None = None
           ) -> tuple[float, float] | None:
        """The confidence interval of :meth:`retention`, or ``None`` when there is none (one batch)."""
        row = self.row(branch, target, module, scale)
        return None if row["ci_low"] is None else (row["ci_low"], row["ci_high"])

    def norms(self, target: str, module: str = "*") -> dict[str, Any]:
        """Mean gradient norms of ``target``: ``{"with": float, "without": {branch: float}}`` (compare records).

        Raises:
            GradflowError: the record has no row for ``target`` and ``module``.
        """
        from .errors import GradflowError

        rows = [r for r in self.rows if r["target"] == target and r["module"] == module and r["scale"] is None]
        if not rows:
            targets = sorted({r["target"] for r in self.rows})
            raise GradflowError(f"this run has no compare row for target {target!r}, module {module!r}; it measured "
                                f"targets {targets}.")
        return {"with": rows[0]["norm_with"], "without": {r["branch"]: r["norm_without"] for r in rows}}

    def table(self) -> pd.DataFrame:
        """The retention table as a DataFrame (columns :data:`TABLE_COLUMNS`, then scale and status)."""
        import pandas as pd

        columns = [*TABLE_COLUMNS, "scale", "status"]
        return pd.DataFrame([{c: row[c] for c in columns} for row in self.rows], columns=columns)

    # -- I/O ---------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The record as strict JSON text (stable key order, non-finite floats as strings)."""
        return json.dumps(json_safe(self.data), indent=1, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the record atomically: a temporary file in the same folder, then a rename.

        A record of global numbers (DDP/FSDP2: identical on every rank) is written by rank 0 only; on the
        other ranks this returns the path without writing.
        """
        if self.is_global and _rank() != 0:
            return Path(path)
        return write_atomic(path, self.to_json())

    @property
    def is_global(self) -> bool:
        """Whether the numbers are global over torch.distributed ranks (DDP/FSDP2), the same on every rank."""
        runtime = self.data.get("measurement", {}).get("runtime", {})
        return runtime.get("scope", "local") != "local"


def _rank() -> int:
    import torch

    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def load_run(path: str | os.PathLike[str]) -> RunRecord:
    """Read and validate a run record (version 1 records are migrated, see :mod:`gradflow.record_schema`).

    Args:
        path: the record file (JSON, at most 256 MiB).

    Returns:
        The :class:`RunRecord`.

    Raises:
        RecordError: the file is missing, unreadable, too large, not JSON, or not a valid record (the message
            names the JSON path of the first bad field).
    """
    file = Path(path)
    try:
        text = read_text_capped(file)
    except FileNotFoundError:
        raise RecordError(f"run record {file} does not exist. Check the path, or create it with --out.") from None
    except FileError as exc:
        raise RecordError(f"cannot read run record: {exc}") from None
    except OSError as exc:
        raise RecordError(f"cannot read run record {file}: {exc.strerror or exc}.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(
            f"run record {file} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "the file is corrupt or was not written by gradflow."
        ) from None
    except (RecursionError, ValueError) as exc:
        raise RecordError(f"run record {file} cannot be parsed as a record ({type(exc).__name__}).") from None
    return RunRecord(data, source=str(file))
