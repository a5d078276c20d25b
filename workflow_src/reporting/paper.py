"""The paper's published numbers (Tables 3 and 4, appendix B) as data, and the comparison that
puts ours beside them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pandas as pd

from .tables import arch_title, fmt_spread, fmt_value, method_title

PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.csv"
PAPER_TABLES = {"3": "Table 3", "4": "Table 4", "B": "App. B"}


def paper_numbers(path: Path = PAPER_NUMBERS) -> pd.DataFrame:
    """The paper's published numbers (Tables 3 and 4, appendix B) as data: one row per
    (table, arch, method, per_channel, w_bits, a_bits); FID in Inception space at full scale."""
    df = pd.read_csv(path, dtype={"table": str, "per_channel": str, "note": str}, keep_default_na=False)
    df["per_channel"] = df["per_channel"].map(lambda x: None if x == "" else x == "True")
    for c in ("fid", "qfid"):
        df[c] = pd.to_numeric(df[c].replace("", float("nan")))
    return df


def paper_comparison(df: pd.DataFrame, cfg: Dict[str, Any]) -> pd.DataFrame:
    """Every row the paper reports beside ours (same arch, method, granularity, bits) and the
    difference ours - paper.  Appendix B rows (MSE distillation) are matched only when this run's
    QAT used ``distill_loss: mse``."""
    ours = df.copy()
    ours["_pc"] = ours["per_channel"].map(lambda x: None if x is None or pd.isna(x) else bool(x))
    rows = []
    for _, p in paper_numbers().iterrows():
        sel = ours[(ours["arch"] == p["arch"]) & (ours["method"] == p["method"]) & (ours["w_bits"] == p["w_bits"]) & (ours["a_bits"] == p["a_bits"])]
        sel = sel[sel["_pc"].map(lambda x: x == p["per_channel"])]
        if p["table"] == "B" and cfg["qat"].get("distill_loss") != "mse":
            sel = sel.iloc[0:0]
        o = sel.iloc[0] if len(sel) else None
        row = {"table": PAPER_TABLES.get(p["table"], p["table"]), "arch": p["arch"], "method": p["method"],
               "per_channel": p["per_channel"], "bits": f"w{p['w_bits']}a{p['a_bits']}"}
        for m in ("fid", "qfid"):
            mine = None if o is None else o[m]
            row[f"paper_{m}"] = p[m]
            row[f"ours_{m}"] = mine
            row[f"ours_{m}_std"] = None if o is None else o.get(f"{m}_std")
            row[f"diff_{m}"] = None if mine is None or pd.isna(p[m]) else mine - p[m]
        row["feature_space"] = None if o is None else o["feature_space"]
        row["note"] = p["note"]
        rows.append(row)
    return pd.DataFrame(rows)


def paper_comparison_md(cmp: pd.DataFrame) -> str:
    spaces = sorted({s for s in cmp["feature_space"] if isinstance(s, str)})
    head = ["Table", "Arch", "Method", "Per-channel", "Bits", "FID paper", "FID ours", "Δ FID", "qFID paper", "qFID ours", "Δ qFID", "Note"]
    lines = [
        "Paper: pytorch-fid Inception features, 50000 images, paper-scale models. Ours: feature space "
        f"{', '.join(spaces) or '–'}. Only a paper-profile run (Inception) makes the differences meaningful; "
        "tiny-profile numbers live in another feature space and at another scale.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in cmp.iterrows():
        pc = "–" if r["per_channel"] is None else ("✓" if r["per_channel"] else "✗")
        cells = [r["table"], arch_title(r["arch"]), method_title(r["method"]), pc, r["bits"]]
        for m in ("fid", "qfid"):
            ours = {m: r[f"ours_{m}"], f"{m}_std": r[f"ours_{m}_std"]}
            cells += [fmt_value(r[f"paper_{m}"]), "–" if r[f"ours_{m}"] is None else fmt_spread(ours, m), fmt_value(r[f"diff_{m}"])]
        cells.append(r["note"] or "")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


