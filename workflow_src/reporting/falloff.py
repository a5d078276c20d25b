"""Where quality falls off between 8 and 4 bits (issue 20): per arch, qFID against the weight width
(8-bit activations) and against the activation width (8-bit weights), for each method and granularity
the matrix runs at enough widths (``matrix.include`` adds the tiny profile's w6a8 and w8a6)."""
from __future__ import annotations

from typing import List, Tuple

import pandas as pd

from ..config import FP
from ..figures import fig_title
from ..files import atomic_path
from .tables import arch_title, spread_label, uniform


def falloff_series(df: pd.DataFrame) -> List[Tuple[str, str, bool, str, pd.DataFrame]]:
    """``(arch, method, per_channel, "weights"|"activations", rows)``: the rows of one method and
    granularity at a8 over three or more weight widths, or at w8 over two or more activation widths,
    sorted widest first."""
    q = uniform(df[df["method"] != FP])
    out = []
    for (arch, method, pc), g in q.groupby(["arch", "method", "per_channel"], sort=True):
        w = g[g["a_bits"] == 8].sort_values("w_bits", ascending=False)
        a = g[g["w_bits"] == 8].sort_values("a_bits", ascending=False)
        if w["w_bits"].nunique() >= 3:
            out.append((arch, method, bool(pc), "weights", w))
        if a["a_bits"].nunique() >= 2:
            out.append((arch, method, bool(pc), "activations", a))
    return out


def write_falloff(df: pd.DataFrame, png: str) -> int:
    """One panel per arch: qFID (± bootstrap spread) against bits, weights solid and activations
    dashed, the arch's qFID noise floor dotted.  Returns the number of series drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = falloff_series(df)
    archs = sorted(set(df["arch"]))
    fig, axes = plt.subplots(1, len(archs), figsize=(4.6 * len(archs), 3.8), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        mine = [s for s in series if s[0] == arch]
        for _, method, pc, which, rows in mine:
            col = "w_bits" if which == "weights" else "a_bits"
            std = rows["qfid_std"] if "qfid_std" in rows else None
            ax.errorbar(rows[col], rows["qfid"], yerr=std, ls="-" if which == "weights" else "--", marker="o", ms=3, capsize=2,
                        label=f"{method} {'per-channel' if pc else 'per-tensor'}: {which} ({'a8' if which == 'weights' else 'w8'})")
        if "qfid_floor" in df:
            floor = df.loc[df["arch"] == arch, "qfid_floor"].dropna()
            if len(floor):
                ax.axhline(float(floor.iloc[0]), ls=":", lw=0.8, color="#999", label="qFID noise floor")
        if not mine:
            ax.text(0.5, 0.5, "no method at enough widths\n(matrix.include adds them)", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        ax.invert_xaxis()
        ax.set_yscale("log")
        ax.set_xlabel("bits (weights: solid, a8; activations: dashed, w8)")
        ax.set_ylabel("qFID against FP")
        ax.set_title(arch_title(arch), fontsize=9)
        if mine:
            ax.legend(fontsize=6)
    fig_title(fig, f"Where quality falls off: qFID by bit width (error bars: {spread_label(df)})", fontsize=9)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return len(series)
