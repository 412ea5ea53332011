"""Plain text from rich renderables: no ANSI codes, ASCII borders (assertion messages, JUnit XML, logs)."""

from __future__ import annotations

import io
from typing import Any


def render_plain(renderables: list[Any], width: int = 140) -> str:
    """Render rich renderables as plain text: no ANSI codes, ASCII table borders."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, legacy_windows=False,
                      no_color=True, emoji=False, highlight=False, markup=False)
    for item in renderables:
        if isinstance(item, Table):
            item.box = box.ASCII2
        console.print(item)
    return buffer.getvalue()
