"""Number formatting shared by the renderers."""

from __future__ import annotations

import math
import unicodedata
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


def fmt_delta(value: float | None) -> str:
    """A signed change of retention ('+0.586'), '—' when undefined."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:+.3f}"


def fmt_scale(value: float | None) -> str:
    """A branch scale ('0.1'), '' for rows without one."""
    return "" if value is None else f"{value:g}"


def fmt_ci_pair(ci: tuple[float, float] | list[float] | None) -> str:
    """An interval given as a pair, '—' without one."""
    if ci is None:
        return "—"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def visible(value: object) -> str:
    """``value`` as text whose control characters are shown, not obeyed.

    Names and notes come from models and record files, which are untrusted: an ESC sequence must not
    recolour, move the cursor or hide text in a terminal or a CI log, and a line break must not forge a table
    row. C0/C1 control characters (and DEL) become ``\\xNN`` escapes; Unicode format characters that reorder
    or hide text (bidi overrides, zero-width joiners) become ``\\uNNNN``.
    """
    text = str(value)
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif unicodedata.category(char) in ("Cf", "Cs", "Co", "Zl", "Zp"):
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def text(value: object, style: str = "") -> Any:
    """A rich ``Text`` of ``value`` made :func:`visible`: never parsed as markup, control characters shown."""
    from rich.text import Text

    return Text(visible(value), style=style)


_MD_SPECIAL = "\\`*_[]<>#|~$"
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def md_escape(text: object) -> str:
    """Make untrusted text (module names) literal inside a markdown table cell.

    Line breaks become spaces (a cell is one line); ``& < >`` become entities (no raw HTML reaches the
    page); other markdown punctuation, including the cell separator ``|``, is backslash-escaped.
    """
    out = []
    for char in visible(str(text).replace("\r\n", " ").replace("\r", " ").replace("\n", " ")):
        if char in _HTML_ENTITIES:
            out.append(_HTML_ENTITIES[char])
        elif char in _MD_SPECIAL:
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def module_label(module: str) -> str:
    """How a row's module is shown: '(all)' for the whole-target row."""
    return "(all)" if module == "*" else module


def batches_text(record: Any) -> str:
    """How many batches a record used and by which rule: ``"6 batches (auto: decided at look 2 of 4)"``."""
    batches = record.data["batches"]
    count = batches["count"]
    rule = batches.get("rule") or {}
    text = f"{count} batch" + ("" if count == 1 else "es")
    if rule.get("rule", "fixed") != "fixed":
        looks = rule.get("looks") or []
        at = looks.index(count) + 1 if count in looks else "?"
        reason = {"decided": "every verdict decided", "precise": "intervals narrower than the precision",
                  "max_batches": "reached max-batches undecided"}.get(str(rule.get("reason")), str(rule.get("reason")))
        level = rule.get("look_confidence")
        text += (f" (--batches auto: stopped at look {at} of {len(looks)}, {reason}"
                 + (f"; {float(level) * 100:.2f}% intervals per look" if isinstance(level, int | float) else "") + ")")
    return text


def ci_label(record: Any) -> str:
    """The interval column's heading: its confidence (per look with ``--batches auto``), e.g. ``"95% CI"``."""
    level = (record.data.get("interval") or {}).get("confidence", record.data.get("confidence", 0.95))
    pct = float(level) * 100
    return f"{pct:.0f}% CI" if abs(pct - round(pct)) < 1e-9 else f"{pct:.2f}% CI"


UNCERTAIN_HINT = ("uncertain: the interval straddles a bound (or one batch has none), so these batches cannot "
                  "decide; run with --batches auto or more batches")


def uncertain_hint(record: Any) -> str:
    """What to do about ``uncertain`` rows, given how the record chose its batch count."""
    rule = (record.data.get("batches") or {}).get("rule")
    if not isinstance(rule, dict) or rule.get("rule") == "fixed":
        return UNCERTAIN_HINT
    if rule.get("reason") == "max_batches":
        return ("uncertain: the interval straddles a bound; --batches auto reached its last look (--max-batches or "
                "every batch the source has) before deciding. Raise --max-batches, or read the retention as close "
                "to the bound")
    if rule.get("reason") == "precise":
        return ("uncertain: the interval straddles a bound but is as narrow as the --precision asked for: the "
                "retention is that close to the bound")
    return ("uncertain: the interval straddles a bound. --batches auto stops once the whole-target rows are "
            "decided, so a per-module row can stay uncertain; fix more batches (--batches N) to decide it")


def measurement_notes(record: Any) -> tuple[list[str], list[str]]:
    """``(notes, warnings)`` of how a record was measured: wrappers taken off, gradient paths, global or
    local numbers, resolved selectors; warnings such as a sweep whose scale changed nothing."""
    measurement = record.data.get("measurement") or {}
    return [str(n) for n in measurement.get("notes", [])], [str(w) for w in measurement.get("warnings", [])]
