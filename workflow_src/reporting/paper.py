"""The paper's published numbers (Tables 3 and 4, appendix B) as data, and the comparison with
ours that carries across scales: whether each of the paper's findings holds on this run, and how
well the paper's ranking of methods agrees with ours (Spearman's rank correlation per table and
arch).  Raw numbers stand side by side for reference; they are not subtracted, since a tiny run's
feature space, image size and models differ from the paper's."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import pandas as pd

from .. import registry
from .tables import arch_title, fmt_spread, fmt_value, method_title
from .tables import n_seeds as tables_n_seeds

PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.csv"
PAPER_TABLES = {"3": "Table 3", "4": "Table 4", "B": "App. B"}
PTQ = ("ptq-minmax", "ptq-quantile", "ptq-mse", "ar-brecq", "ste-brecq")
BEYOND = 2.0  # a difference counts when it exceeds this many combined standard deviations (bootstrap, or across seeds)
PAIRED_ALPHA = 0.05  # ... or when the paired t-test across seeds rejects "no difference" at this two-sided level
PAIRED_MIN_SEEDS = 3  # the paired test needs this many seeds that both sides share (2 degrees of freedom)


def paper_numbers(path: Path = PAPER_NUMBERS) -> pd.DataFrame:
    """The paper's published numbers (Tables 3 and 4, appendix B) as data: one row per
    (table, arch, method, per_channel, w_bits, a_bits); FID in Inception space at full scale."""
    df = pd.read_csv(path, dtype={"table": str, "per_channel": str, "note": str}, keep_default_na=False)
    df["per_channel"] = df["per_channel"].map(lambda x: None if x == "" else x == "True")
    for c in ("fid", "qfid"):
        df[c] = pd.to_numeric(df[c].replace("", float("nan")))
    return df


def _ours(df: pd.DataFrame) -> pd.DataFrame:
    ours = df.copy()
    ours["_pc"] = ours["per_channel"].map(lambda x: None if x is None or pd.isna(x) else bool(x))
    return ours


def paper_comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Every row the paper reports beside ours (same arch, method, granularity, bits), with each
    row's rank among the quantized rows of its table and arch, in the paper and in ours (1: the
    lowest qFID).  A QAT row of ours meets the paper's appendix B row (MSE distillation) when its
    ``distill_loss`` (results.csv) is ``mse``, and Table 4's (perceptual distillation) when it is not."""
    ours = _ours(df)
    rows = []
    trained = {m.name for m in registry.methods().values() if m.kind == "qat"}
    for _, p in paper_numbers().iterrows():
        sel = ours[(ours["arch"] == p["arch"]) & (ours["method"] == p["method"]) & (ours["w_bits"] == p["w_bits"]) & (ours["a_bits"] == p["a_bits"])]
        sel = sel[sel["_pc"].map(lambda x: x == p["per_channel"])]
        if p["method"] in trained:  # appendix B rows are MSE-distilled QAT, Table 4's perceptual
            sel = sel[(sel.get("distill_loss", pd.Series("", index=sel.index)) == "mse") == (p["table"] == "B")]
        o = sel.iloc[0] if len(sel) else None
        row = {"table": PAPER_TABLES.get(p["table"], p["table"]), "arch": p["arch"], "method": p["method"],
               "per_channel": p["per_channel"], "bits": f"w{p['w_bits']}a{p['a_bits']}"}
        for m in ("fid", "qfid"):
            row[f"paper_{m}"] = p[m]
            row[f"ours_{m}"] = None if o is None else o[m]
            row[f"ours_{m}_std"] = None if o is None else o.get(f"{m}_std")
        row["feature_space"] = None if o is None else o["feature_space"]
        row["note"] = p["note"]
        rows.append(row)
    out = pd.DataFrame(rows)
    out["paper_rank"], out["ours_rank"] = float("nan"), float("nan")
    for _, idx in _rank_groups(out):
        both = out.loc[idx]
        out.loc[idx, "paper_rank"] = both["paper_qfid"].rank(method="average")
        out.loc[idx, "ours_rank"] = pd.to_numeric(both["ours_qfid"]).rank(method="average")
    return out


def _rank_groups(cmp: pd.DataFrame):
    """(key, index) of the quantized rows of each (table, arch) that both the paper and we scored."""
    q = cmp[(cmp["method"] != "fp") & cmp["ours_qfid"].notna() & cmp["paper_qfid"].notna()]
    for key, g in q.groupby(["table", "arch"], sort=False):
        yield key, g.index


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties): the Pearson correlation of the ranks;
    NaN with fewer than three pairs or a constant side."""
    ra, rb = pd.Series(list(a), dtype=float).rank(), pd.Series(list(b), dtype=float).rank()
    if len(ra) < 3 or ra.nunique() < 2 or rb.nunique() < 2:
        return float("nan")
    return float(ra.corr(rb))


def rank_agreement(cmp: pd.DataFrame) -> pd.DataFrame:
    """Per (table, arch): how many quantized rows both scored and Spearman's rho between the
    paper's qFIDs (and FIDs) and ours: whether the methods come in the same order."""
    rows = []
    for (table, arch), idx in _rank_groups(cmp):
        g = cmp.loc[idx]
        fid = g[g["paper_fid"].notna() & g["ours_fid"].notna()]
        rows.append({"table": table, "arch": arch, "rows": len(g), "rho_qfid": spearman(g["paper_qfid"], g["ours_qfid"]),
                     "rho_fid": spearman(fid["paper_fid"], fid["ours_fid"])})
    return pd.DataFrame(rows, columns=["table", "arch", "rows", "rho_qfid", "rho_fid"])


@dataclass(frozen=True)
class Finding:
    """One claim of the paper, as a comparison between two sides in every cell (arch,
    granularity, width) of our results where both exist: ``better`` (side a lower than side b)
    or ``no_better`` (side b not lower than side a: b brings no gain).  A side is the best of its
    methods in the cell; ``a_width``/``b_width`` replace the cell's width, ``a_per_channel``/
    ``b_per_channel`` fix a side's granularity (one cell per arch and width), and ``per_method``
    compares each method of ``a`` with itself on the other side."""

    key: str
    claim: str
    where: str
    a: Tuple[str, ...]
    b: Tuple[str, ...] = ()
    kind: str = "better"
    metric: str = "qfid"
    widths: Tuple[int, ...] = ()  # cells at these widths only (empty: every width)
    a_width: Optional[int] = None
    b_width: Optional[int] = None
    a_per_channel: Optional[bool] = None
    b_per_channel: Optional[bool] = None
    per_method: bool = False


FINDINGS = [
    Finding("quantile", "quantile ranges beat min-max ranges for vanilla PTQ", "4.1, 5", ("ptq-quantile",), ("ptq-minmax",)),
    Finding("ste-w8", "STE-BRECQ beats AR-BRECQ at 8-bit weights", "4.1", ("ste-brecq",), ("ar-brecq",), widths=(8,)),
    Finding("ar-w4", "AR-BRECQ beats STE-BRECQ at 4-bit weights", "4.1", ("ar-brecq",), ("ste-brecq",), widths=(4,)),
    Finding("ar-4-vs-8", "AR-BRECQ has a better FID at 4-bit than at 8-bit weights", "4.1", ("ar-brecq",), metric="fid",
            widths=(4,), b_width=8, per_method=True),
    Finding("qat-vs-ptq", "QAT (LSQ) beats every post-training method", "4.2, 5", ("lsq-qat",), PTQ),
    Finding("lsq-vs-ma", "LSQ-QAT beats MA-QAT", "4.2", ("lsq-qat",), ("ma-qat",)),
    Finding("per-channel", "per-channel weights bring no significant gain under QAT", "5", ("ma-qat", "lsq-qat"),
            kind="no_better", a_per_channel=False, b_per_channel=True, per_method=True),
]


def _side(ours: pd.DataFrame, arch: str, methods: Tuple[str, ...], per_channel: bool, w_bits: int, metric: str) -> Optional[pd.Series]:
    sel = ours[(ours["arch"] == arch) & ours["method"].isin(methods) & (ours["_pc"] == per_channel) & (ours["w_bits"] == w_bits)
               & (ours["a_bits"] == 8)]
    sel = sel[sel[metric].notna()]
    return None if sel.empty else sel.loc[sel[metric].idxmin()]


def paired_p(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Two-sided p-value of the paired t-test of ``b - a`` across seeds (``a[i]`` and ``b[i]`` from
    one seed: one FP model, distillation set and evaluation inputs, whose variation the difference
    cancels); None with fewer than :data:`PAIRED_MIN_SEEDS` pairs.  Differences equal at every seed
    have no spread: p is 0 when they are not zero, 1 when they are."""
    if len(a) != len(b):
        raise ValueError(f"paired test: {len(a)} values on one side, {len(b)} on the other")
    if len(a) < PAIRED_MIN_SEEDS:
        return None
    d = [float(y) - float(x) for x, y in zip(a, b)]
    if max(d) == min(d):
        return 0.0 if d[0] != 0 else 1.0
    from scipy import stats

    return float(stats.ttest_rel(b, a).pvalue)


def _per_seed_values(per_seed: Optional[pd.DataFrame], side: pd.Series, metric: str) -> Dict[int, float]:
    """``metric`` of the variant of ``side`` (an across-seeds row) at each seed of ``per_seed``."""
    if per_seed is None or "seed" not in per_seed.columns:
        return {}
    sel = per_seed[(per_seed["arch"] == side["arch"]) & (per_seed["method"] == side["method"]) & (per_seed["_pc"] == side["_pc"])
                   & (per_seed["w_bits"] == side["w_bits"]) & (per_seed["a_bits"] == side["a_bits"]) & per_seed[metric].notna()]
    return {int(s): float(v) for s, v in zip(sel["seed"], sel[metric])}


def finding_cells(df: pd.DataFrame, f: Finding, per_seed: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Every cell of finding ``f`` in our results (``df``: a row per variant, its spread across seeds
    or its bootstrap spread): both sides' values and spreads, and the verdict: ``held`` (the claim
    holds beyond :data:`BEYOND` combined spreads), ``against`` (the opposite holds beyond them) or
    ``within`` (the difference is inside the spread).  With ``per_seed`` (a row per variant and seed)
    and at least :data:`PAIRED_MIN_SEEDS` seeds, a cell within the spread is also judged by the paired
    t-test across seeds (``p_paired``; ``decided_by`` says which test decided a held or against)."""
    ours = _ours(df)
    per_seed = None if per_seed is None else _ours(per_seed)
    ours = ours[ours["method"] != "fp"]
    fixed = f.a_per_channel is not None or f.b_per_channel is not None
    pairs = [((m,), (m,)) for m in f.a] if f.per_method else [(f.a, f.b)]
    rows = []
    for arch in sorted(set(ours["arch"])):
        for w in sorted({int(b) for b in ours["w_bits"]}, reverse=True):
            if f.widths and w not in f.widths:
                continue
            for pc in ((None,) if fixed else (True, False)):
                for side_a, side_b in pairs:
                    pa = pc if f.a_per_channel is None else f.a_per_channel
                    pb = pc if f.b_per_channel is None else f.b_per_channel
                    a = _side(ours, arch, side_a, pa, f.a_width or w, f.metric)
                    b = _side(ours, arch, side_b, pb, f.b_width or w, f.metric)
                    if a is None or b is None:
                        continue
                    spread = math.hypot(bootstrap_std(a, f.metric), bootstrap_std(b, f.metric))
                    diff = float(b[f.metric]) - float(a[f.metric])  # > 0: side a is lower (better)
                    if f.kind == "better":
                        verdict = "held" if diff > BEYOND * spread else "against" if -diff > BEYOND * spread else "within"
                    else:  # side b (lower is better) must not beat side a beyond the spread
                        verdict = "against" if -diff > BEYOND * spread else "held"
                    va, vb = _per_seed_values(per_seed, a, f.metric), _per_seed_values(per_seed, b, f.metric)
                    both = sorted(set(va) & set(vb))
                    p = paired_p([va[s] for s in both], [vb[s] for s in both])
                    decided_by = "" if verdict == "within" or (f.kind != "better" and verdict == "held") else "spread"
                    if not decided_by and p is not None and p < PAIRED_ALPHA and (f.kind == "better" or diff < 0):
                        verdict, decided_by = ("held" if diff > 0 else "against"), "paired test"
                    rows.append({"finding": f.key, "arch": arch, "per_channel": pc, "w_bits": w, "a": a["method"],
                                 "a_value": float(a[f.metric]), "b": b["method"], "b_value": float(b[f.metric]),
                                 "spread": spread, "p_paired": p, "seeds_paired": len(both) if p is not None else 0,
                                 "verdict": verdict, "decided_by": decided_by})
    return pd.DataFrame(rows, columns=["finding", "arch", "per_channel", "w_bits", "a", "a_value", "b", "b_value", "spread",
                                       "p_paired", "seeds_paired", "verdict", "decided_by"])


def bootstrap_std(row: Mapping[str, Any], metric: str) -> float:
    """A results row's bootstrap spread of ``metric`` (0 where it has none)."""
    s = row.get(f"{metric}_std")
    return 0.0 if s is None or pd.isna(s) else float(s)


def findings(df: pd.DataFrame, per_seed: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per finding of the paper: cells held / against / within the spread, and a verdict:
    ``held`` when it holds in most cells and is contradicted in none, ``not held`` when it is
    contradicted in most, ``mixed`` when some cells hold and others contradict it, ``not resolved``
    when most differences are within the spread (at this number of seeds: more could resolve them),
    ``not run`` when no cell exists.  ``paired``: the held and against cells that only the paired
    test across seeds decided (``per_seed``: a row per variant and seed)."""
    out = []
    for f in FINDINGS:
        cells = finding_cells(df, f, per_seed)
        n = {v: int((cells["verdict"] == v).sum()) for v in ("held", "against", "within")}
        n["paired"] = int((cells["decided_by"] == "paired test").sum())
        total = len(cells)
        verdict = ("not run" if total == 0 else "held" if n["held"] * 2 > total and n["against"] == 0
                   else "not held" if n["against"] * 2 > total else "mixed" if n["held"] and n["against"] else "not resolved")
        out.append({"finding": f.key, "claim": f.claim, "section": f.where, "metric": f.metric, "cells": total, **n, "verdict": verdict})
    return pd.DataFrame(out)


def paper_comparison_md(cmp: pd.DataFrame, df: Optional[pd.DataFrame] = None, floor: str = "",
                        per_seed: Optional[pd.DataFrame] = None) -> str:
    """The comparison page: the paper's findings on our results (``df``: a row per variant over its
    seeds; ``per_seed``: a row per variant and seed, for the paired test), the rank agreement per
    table, then the raw numbers side by side with each row's rank."""
    spaces = sorted({s for s in cmp["feature_space"] if isinstance(s, str)})
    lines = [
        "Paper: pytorch-fid Inception features, 50000 images, paper-scale models. Ours: feature space "
        f"{', '.join(spaces) or '–'}. Raw numbers from different feature spaces and scales are not comparable; what can "
        "carry over is which method wins, so this page asks whether each finding of the paper holds here and whether "
        "the methods come in the paper's order.", ""]
    if floor:
        lines += [floor, ""]
    if df is not None:
        fd = findings(df, per_seed)
        n_seeds = tables_n_seeds(df)
        paired = per_seed is not None and n_seeds >= PAIRED_MIN_SEEDS
        spread = (f"standard deviations across seeds (n = {n_seeds}: each seed its own FP model, calibration and QAT run)"
                  if n_seeds > 1 else "bootstrap standard deviations (resamples of the generated images of one seed: a spread "
                  "across samples only, so a *held* here may not survive another seed)")
        lines += [f"## The paper's findings on this run (n = {n_seeds} seed{'s' if n_seeds > 1 else ''})", "",
                  f"Per cell (arch, granularity, width): *held* when the claim holds by more than {BEYOND:g} combined {spread}, "
                  "*against* when the opposite does, *within* otherwise. Verdict: *held* in most cells and against in none, "
                  "*not held* against in most, *mixed* both, *not resolved* (at this n) mostly within." + (
                      f" A cell within that spread is also judged by the paired t-test across its {n_seeds} seeds (the two "
                      "methods' difference at each seed, which cancels what a seed's FP model and inputs add to both): "
                      f"two-sided p < {PAIRED_ALPHA:g} decides it (column *by paired test*; one test per cell, not "
                      "corrected for the number of cells)." if paired else ""), "",
                  "| Finding (paper section) | Metric | Cells | Held | Against | Within spread | "
                  + ("By paired test | " if paired else "") + "Verdict |", "|---|---|---|---|---|---|" + ("---|" if paired else "") + "---|"]
        for _, r in fd.iterrows():
            lines.append(f"| {r['claim']} ({r['section']}) | {r['metric']} | {r['cells']} | {r['held']} | {r['against']} | "
                         f"{r['within']} | " + (f"{r['paired']} | " if paired else "") + f"**{r['verdict']}** |")
        lines.append("")
    ra = rank_agreement(cmp)
    lines += ["## Do the methods come in the paper's order?", "",
              "Spearman's rank correlation between the paper's numbers and ours over the quantized rows of each table and "
              "arch that both have (1: same order, -1: reversed; – with fewer than three rows).", "",
              "| Table | Arch | Rows | ρ qFID | ρ FID |", "|---|---|---|---|---|"]
    lines += [f"| {r['table']} | {arch_title(r['arch'])} | {r['rows']} | {fmt_value(r['rho_qfid'])} | {fmt_value(r['rho_fid'])} |"
              for _, r in ra.iterrows()] or ["| – | – | 0 | – | – |"]
    head = ["Table", "Arch", "Method", "Per-channel", "Bits", "FID paper", "FID ours", "qFID paper", "qFID ours",
            "rank paper", "rank ours", "Note"]
    lines += ["", "## The numbers side by side", "", "Ranks: by qFID among the quantized rows of the same table and arch "
              "that both scored (1 = best).", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in cmp.iterrows():
        pc = "–" if r["per_channel"] is None else ("✓" if r["per_channel"] else "✗")
        cells = [r["table"], arch_title(r["arch"]), method_title(r["method"]), pc, r["bits"]]
        for m in ("fid", "qfid"):
            ours = {m: r[f"ours_{m}"], f"{m}_std": r[f"ours_{m}_std"]}
            cells += [fmt_value(r[f"paper_{m}"]), "–" if r[f"ours_{m}"] is None or pd.isna(r[f"ours_{m}"]) else fmt_spread(ours, m)]
        cells += [fmt_value(r["paper_rank"]), fmt_value(r["ours_rank"]), r["note"] or ""]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
