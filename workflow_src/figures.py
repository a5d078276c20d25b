"""Figure layout shared by every figure the workflow draws (the sweep's Figure 1 and the report's):
below both the workflow and the reporting layers."""
from __future__ import annotations

import textwrap
from typing import Any


def fig_title(fig: Any, text: str, fontsize: float = 8) -> None:
    """``text`` as ``fig``'s title, wrapped to the figure's width, and the subplots laid out below
    it (a long title on a narrow one-panel figure was cut off at both edges and overlapped the
    first row)."""
    chars = max(20, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))  # an average glyph is about 0.55 em wide
    lines = textwrap.wrap(text, chars)
    fig.suptitle("\n".join(lines), fontsize=fontsize)
    fig.tight_layout()  # makes room for the suptitle too
