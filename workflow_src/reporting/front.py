"""The size-quality front (issue 20): per arch, every variant's generator size (``size_bytes``: its
weights at their widths, quant/size.py) against its qFID, the Pareto-optimal variants joined.

A variant is Pareto-optimal when no other one of its arch is at most as large with at most its qFID
(and strictly better in one of them).  FP is a point too: qFID 0 by definition, the largest size.
``within_floor`` marks variants whose qFID is at most the arch's qFID noise floor (the FP generator
against itself on other inputs): those the evaluation cannot tell from FP."""
from __future__ import annotations

import math
from typing import List

import pandas as pd

from ..config import FP
from ..figures import fig_title
from ..files import atomic_path
from .tables import RESULTS_FLOAT, arch_title, method_title, spread_label, uniform

FRONT_COLUMNS = ["arch", "variant", "method", "per_channel", "w_bits", "a_bits", "avg_w_bits", "size_bytes", "size_ratio", "qfid", "qfid_std",
                 "qfid_floor", "within_floor", "pareto"]


def pareto_mask(sizes: List[float], qfids: List[float]) -> List[bool]:
    """Whether each point is non-dominated (smaller is better on both axes); equal points are all kept."""
    keep = []
    for i, (s, q) in enumerate(zip(sizes, qfids)):
        keep.append(not any((s2 <= s and q2 <= q) and (s2 < s or q2 < q) for j, (s2, q2) in enumerate(zip(sizes, qfids)) if j != i))
    return keep


def front_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per variant (FP included) with its size, its size over FP's, its qFID and whether it is
    on its arch's front; by arch, then size."""
    need = {"size_bytes", "qfid"}
    if not need <= set(df.columns):
        raise ValueError(f"results lack {sorted(need - set(df.columns))}: rerun the evaluate jobs (they record each generator's size)")
    parts = []
    for arch, g in df.groupby("arch", sort=True):
        g = g.copy()
        fp = g[g["method"] == FP]
        fp_size = float(fp["size_bytes"].iloc[0]) if len(fp) else math.nan
        g["size_ratio"] = g["size_bytes"] / fp_size
        floor = g["qfid_floor"] if "qfid_floor" in g else pd.Series(math.nan, index=g.index)
        g["qfid_floor"] = floor
        g["within_floor"] = [bool(q <= f) if pd.notna(f) else False for q, f in zip(g["qfid"], floor)]
        g["pareto"] = pareto_mask(list(g["size_bytes"].astype(float)), list(g["qfid"].astype(float)))
        parts.append(g.sort_values(["size_bytes", "qfid"]))
    out = pd.concat(parts)
    for c in FRONT_COLUMNS:
        if c not in out:
            out[c] = math.nan
    return out[FRONT_COLUMNS].reset_index(drop=True)


def _label(r: pd.Series) -> str:
    if r["method"] == FP:
        return "FP"
    gran = "ch" if bool(r["per_channel"]) else "t"
    return f"{r['method']} {gran} w{int(r['w_bits'])}"


def write_front(df: pd.DataFrame, csv: str, png: str) -> pd.DataFrame:
    """``csv``: :func:`front_table`; ``png``: one panel per arch, size (KiB, log) against qFID (symlog),
    every variant a dot (mixed precision: squares), the front joined and labelled, FP a star, the
    noise floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = front_table(df)
    with atomic_path(csv) as tmp:
        out = table.copy()
        out["per_channel"] = out["per_channel"].map(lambda x: "" if x is None or pd.isna(x) else str(bool(x)))
        out.to_csv(tmp, index=False, float_format=RESULTS_FLOAT)
    archs = list(dict.fromkeys(table["arch"]))
    fig, axes = plt.subplots(1, len(archs), figsize=(5.0 * len(archs), 4.2), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        g = table[table["arch"] == arch]
        kib = g["size_bytes"] / 1024
        mixed = ~g.index.isin(uniform(g).index)  # the registry's mixed-precision methods
        q = g[(g["method"] != FP)]
        ax.scatter(kib[(g["method"] != FP) & ~mixed], g.loc[(g["method"] != FP) & ~mixed, "qfid"], s=14, color="#888", label="uniform width")
        ax.scatter(kib[mixed], g.loc[mixed, "qfid"], s=22, marker="s", color="#c60", label="mixed precision")
        fp = g[g["method"] == FP]
        ax.scatter(fp["size_bytes"] / 1024, fp["qfid"], s=90, marker="*", color="k", label="FP", zorder=3)
        front = g[g["pareto"]]
        ax.plot(front["size_bytes"] / 1024, front["qfid"], "-", color="#06c", lw=1, zorder=2, label="Pareto front")
        for _, r in front.iterrows():
            ax.annotate(_label(r), (r["size_bytes"] / 1024, r["qfid"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        floor = g["qfid_floor"].dropna()
        if len(floor):
            ax.axhline(float(floor.iloc[0]), ls="--", lw=0.8, color="#999", label="qFID noise floor")
        ax.set_xscale("log")
        # symlog: FP's qFID of 0 on the axis, each quantized variant's on a log scale above the smallest
        ax.set_yscale("symlog", linthresh=max(1e-4, float(q["qfid"].clip(lower=0).min() or 1e-4)) if len(q) else 1e-4)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("generator size (KiB: weights at their widths)")
        ax.set_ylabel("qFID against FP (lower is better)")
        ax.set_title(arch_title(arch), fontsize=9)
        ax.legend(fontsize=6, loc="upper right")
    fig_title(fig, f"Size against quality: every variant, the Pareto-optimal ones joined (evaluation inputs; {spread_label(df)})", fontsize=9)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return table


def front_md(table: pd.DataFrame) -> str:
    """Per arch, the front's variants and the smallest generator within the noise floor."""
    lines = []
    for arch, g in table.groupby("arch", sort=True):
        lines.append(f"#### {arch_title(arch)}\n\n| variant | method | avg bits/weight | size (KiB) | size / FP | qFID |\n|---|---|---:|---:|---:|---:|")
        for _, r in g[g["pareto"]].iterrows():
            std = f" ± {r['qfid_std']:.2g}" if pd.notna(r["qfid_std"]) and r["method"] != FP else ""
            lines.append(f"| {r['variant']} | {method_title(r['method'])} | {r['avg_w_bits']:.2f} | {r['size_bytes'] / 1024:.1f} | "
                         f"{r['size_ratio']:.3f} | {r['qfid']:.3g}{std} |")
        ok = g[g["within_floor"] & (g["method"] != FP)]
        lines.append("\n" + (f"Smallest within the qFID noise floor ({g['qfid_floor'].iloc[0]:.3g}): {ok.iloc[0]['variant']}, "
                             f"{ok.iloc[0]['size_ratio']:.3f} of FP's size." if len(ok) else
                             "No quantized variant is within the qFID noise floor.") + "\n")
    return "\n".join(lines)
