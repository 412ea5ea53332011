"""Number formatting shared by the renderers."""

from __future__ import annotations

import math
from typing import Any


def fmt_norm(value: float | None) -> str:
    """A gradient norm: 4 significant digits, 'no grad' for None."""
    if value is None:
        return "no grad"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def fmt_ratio(value: float | None) -> str:
    """A retention ratio with 3 decimals, '—' when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3f}"


def fmt_ci(row: dict[str, Any]) -> str:
    """The confidence interval of a row as '[low, high]', '—' without one."""
    if row.get("ci_low") is None:
        return "—"
    return f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
