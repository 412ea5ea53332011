"""Sweep records: the largest branch scale that keeps retention inside the band (a pure function)."""

from __future__ import annotations

from typing import Any

from ..errors import GradflowError
from ..record import RunRecord
from ..verdicts import Band, GateMode, Verdict, verdict


def sweep_curves(record: RunRecord) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """``{(branch, target): [whole-target rows sorted by scale]}`` of a sweep record."""
    curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in record.rows:
        if row["module"] == "*" and row.get("scale") is not None:
            curves.setdefault((row["branch"], row["target"]), []).append(row)
    return {key: sorted(rows, key=lambda r: r["scale"]) for key, rows in curves.items()}


def suggest_scale(record: RunRecord, band: Band | None = None, target: str | None = None,
                  mode: str | GateMode = GateMode.CI) -> dict[str, Any]:
    """The largest scale whose retention stays inside ``band`` for the whole-target row (module ``"*"``).

    "Stays" means every measured scale from the smallest up to it has verdict ``ok`` (or ``no effect``,
    which says nothing against it) in ``mode`` (``ci`` mode: the whole interval inside the band), so a curve
    that leaves the band and comes back is not trusted beyond the first failure. With ``target=None`` every
    target of the record must pass. Returns ``{"branch", "targets", "scale", "retention": {target: value},
    "verdicts": {target: verdict}, "message"}``; ``scale`` is ``None`` when even the smallest scale fails.
    """
    band = band or Band()
    if record.kind != "sweep":
        raise GradflowError(f"suggest_scale needs a sweep record (gradflow sweep), got kind {record.kind!r}.")
    curves = sweep_curves(record)
    targets = list(dict.fromkeys(t for _, t in curves))
    if target is not None:
        if target not in targets:
            raise GradflowError(f"the sweep record has no target {target!r}; it measured {targets}.")
        targets = [target]
    branches = list(dict.fromkeys(b for b, _ in curves))
    if not branches:
        raise GradflowError("the sweep record has no whole-target rows with a scale.")
    branch = branches[0]
    scales = sorted({r["scale"] for (b, t), rows in curves.items() if b == branch and t in targets for r in rows})
    by_scale = {
        t: {r["scale"]: r for r in curves.get((branch, t), [])} for t in targets
    }
    best: float | None = None
    failed_at: tuple[float, str, str] | None = None
    for scale in scales:
        verdicts = {t: verdict(by_scale[t][scale], band, mode).value if scale in by_scale[t] else "not measured"
                    for t in targets}
        # inside the band means the whole interval (ci mode) is; "no effect" (scale 0, or a branch off this
        # target's path) is no evidence against the scale
        bad = [(t, v) for t, v in verdicts.items() if v not in (Verdict.OK, Verdict.NO_EFFECT)]
        if bad:
            failed_at = (scale, *bad[0])
            break
        best = scale
    chosen = {t: by_scale[t].get(best) for t in targets} if best is not None else {}
    result: dict[str, Any] = {
        "branch": branch, "targets": targets, "scale": best, "band": band.describe(), "mode": str(GateMode(mode)),
        "retention": {t: (row["retention"] if row else None) for t, row in chosen.items()},
        "verdicts": {t: verdict(row, band, mode).value for t, row in chosen.items() if row},
    }
    names = ", ".join(targets)
    if best is None:
        assert failed_at is not None
        result["message"] = (f"no scale of {branch} keeps {names} inside the band {band.describe()}: already at "
                             f"scale {failed_at[0]:g} {failed_at[1]} is {failed_at[2]}.")
    elif failed_at is None:
        result["message"] = (f"every measured scale of {branch} (up to {best:g}) keeps {names} inside the band "
                             f"{band.describe()}; suggested scale {best:g}.")
    else:
        result["message"] = (f"suggested scale for {branch}: {best:g} (largest scale keeping {names} inside the "
                             f"band {band.describe()}; at {failed_at[0]:g} {failed_at[1]} is {failed_at[2]}).")
    return result
