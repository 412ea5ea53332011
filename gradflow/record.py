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
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RecordError

if TYPE_CHECKING:
    import pandas as pd

    from .subject import Subject

SCHEMA = "gradflow/run-record"
SCHEMA_VERSION = 1
TABLE_COLUMNS = [
    "branch", "target", "module", "norm_with", "norm_without", "retention",
    "ci_low", "ci_high", "n_batches",
]
_REQUIRED_KEYS = ("schema", "schema_version", "kind", "subject", "seed", "branches", "targets",
                  "passes", "retention")
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as the strings record files use ('NaN', 'Infinity', '-Infinity')."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


_ROW_FLOATS = ("norm_with", "norm_without", "retention", "ci_low", "ci_high")


def _number(value: Any) -> Any:
    return _NON_FINITE.get(value, value) if isinstance(value, str) else value


def _decode_numbers(data: dict[str, Any]) -> dict[str, Any]:
    """Turn the non-finite markers back into floats, only in numeric fields (names stay strings)."""
    for row in data.get("retention", []):
        for key in _ROW_FLOATS:
            row[key] = _number(row.get(key))
        row["per_batch"] = [_number(v) for v in row.get("per_batch", [])]
    for entry in data.get("passes", []):
        entry["loss"] = _number(entry.get("loss"))
        for norms in entry.get("norms", {}).values():
            for module in norms:
                norms[module] = _number(norms[module])
    return data


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
        "batches": {"count": n_batches, "pass_seeds": batch_seeds},
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
    # A JSON round trip makes the in-memory record identical to what load_run() returns.
    return RunRecord(_decode_numbers(json.loads(json.dumps(json_safe(data), allow_nan=False))))


class RunRecord:
    """A run record: what one ``compare`` or ``sweep`` measured, with accessors for the results."""

    def __init__(self, data: dict[str, Any], source: str | None = None):
        _validate(data, source)
        self.data = data
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


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    target = Path(path)
    if target.parent and not target.parent.exists():
        raise RecordError(f"cannot write {target}: the folder {target.parent} does not exist. Create it first.")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give it an ordinary new file's mode
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _validate(data: Any, source: str | None) -> None:
    where = f" in {source}" if source else ""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise RecordError(
            f"not a gradflow run record{where}: expected a JSON object with \"schema\": \"{SCHEMA}\". "
            "Pass a file written by `gradflow compare --out` or RunRecord.save()."
        )
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecordError(
            f"run record{where} has schema_version {version!r}; this gradflow reads version {SCHEMA_VERSION}. "
            "Re-run the measurement with this gradflow version, or read it with the version that wrote it."
        )
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise RecordError(f"run record{where} is incomplete: missing keys {missing}. The file may be truncated.")
    if not isinstance(data["retention"], list) or not all(isinstance(r, dict) for r in data["retention"]):
        raise RecordError(f"run record{where}: 'retention' must be a list of row objects.")
    if not isinstance(data["passes"], list) or not all(
        isinstance(p, dict) and isinstance(p.get("norms"), dict) for p in data["passes"]
    ):
        raise RecordError(f"run record{where}: 'passes' must be a list of objects with a 'norms' object.")
    for index, row in enumerate(data["retention"]):
        absent = [c for c in (*TABLE_COLUMNS, "scale", "status") if c not in row]
        if absent:
            raise RecordError(f"run record{where}: retention row {index} lacks {absent}.")


def load_run(path: str | os.PathLike[str]) -> RunRecord:
    """Read and validate a run record; a missing, corrupt or foreign file raises :class:`RecordError`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordError(f"run record {file} does not exist. Check the path, or create it with --out.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"cannot read run record {file}: {exc}.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(
            f"run record {file} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "the file is corrupt or was not written by gradflow."
        ) from None
    _validate(data, str(file))
    return RunRecord(_decode_numbers(data), source=str(file))
