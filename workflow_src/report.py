"""Report: ``results.csv`` (the users' contract), ``table4.md`` laid out like the paper's Table 4,
sample grids (FP next to every variant on the same inputs), and an ``index.html`` that shows them."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Dict, List

import pandas as pd
import torch

from .config import FP, variants
from .utils import atomic_path, atomic_write_text

COLUMNS = ["arch", "method", "per_channel", "w_bits", "a_bits", "fid", "qfid", "feature_space", "fid_std", "qfid_std"]
# Integer export (rule export): the fastest runtime's ratios against FP32 at the largest batch, plus each runtime's.
EXPORT_COLUMNS = ["runtime", "size_ratio", "latency_ratio", "latency_ratio_b1", "export_within_step", "export_qfid",
                  "onnxruntime_latency_ratio", "onnxruntime_size_ratio", "pt2e_latency_ratio", "pt2e_size_ratio"]
KEY = ["arch", "method", "per_channel", "w_bits", "a_bits"]
ARCH_TITLES = {"cyclegan": "CycleGAN", "sagan": "SAGAN", "stylegan": "StyleGAN"}
METHOD_TITLES = {FP: "full-precision", "ptq-minmax": "vanilla PTQ (min-max)", "ptq-quantile": "vanilla PTQ (quantile)",
                 "ar-brecq": "AR-BRECQ", "ste-brecq": "STE-BRECQ", "ma-qat": "MA-QAT", "lsq-qat": "LSQ-QAT"}
PTQ_METHODS = ("ptq-minmax", "ptq-quantile", "ar-brecq", "ste-brecq")  # Table 3
TABLE4_METHODS = ("ptq-minmax", "ptq-quantile", "ma-qat", "lsq-qat")   # Table 4: vanilla PTQ against QAT


def save_grid(images: torch.Tensor, out: str | Path) -> None:
    """One row of [-1, 1] images as a PNG."""
    from PIL import Image

    x = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    row = torch.cat(list(x), dim=2).permute(1, 2, 0).numpy()  # H x (N W) x 3
    with atomic_path(out) as tmp:
        Image.fromarray(row).save(tmp, format="PNG")


def load_results(metric_files: List[str]) -> pd.DataFrame:
    rows = [json.loads(Path(p).read_text()) for p in metric_files]
    return sort_results(pd.DataFrame(rows))


def sort_results(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in report order: by arch, FP first, then method, per-channel first, more bits first."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results lack columns {missing}")
    df = df.assign(_m=df["method"].map(lambda m: 0 if m == FP else 1), _pc=df["per_channel"].map(lambda x: -1 if x is None or pd.isna(x) else int(bool(x))))
    df = df.sort_values(["arch", "_m", "method", "_pc", "w_bits", "a_bits"], ascending=[True, True, True, False, False, False])
    return df.drop(columns=["_m", "_pc"]).reset_index(drop=True)


def results_csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The ``results.csv`` contract: COLUMNS (then EXPORT_COLUMNS where exports exist),
    ``per_channel`` as True/False (empty for FP)."""
    cols = COLUMNS + [c for c in EXPORT_COLUMNS if c in df.columns]
    out = sort_results(df)[cols].copy()
    out["per_channel"] = out["per_channel"].map(lambda x: "" if x is None or pd.isna(x) else str(bool(x)))
    return out


def _fmt(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and pd.isna(x)) else f"{x:.2f}"


def _pm(row: Any, key: str) -> str:
    """``value ± bootstrap std`` of ``key`` in a results row (the std alone is omitted if absent)."""
    std = row.get(f"{key}_std") if hasattr(row, "get") else None
    if std is None or pd.isna(std) or pd.isna(row[key]):
        return _fmt(row[key])
    return f"{row[key]:.2f} ± {std:.2f}"


def table4(df: pd.DataFrame, cfg: Dict[str, Any]) -> str:
    """Markdown laid out like the paper's Table 4: one row per (method, per-channel, bits) of
    vanilla PTQ and QAT, one FID/qFID column pair per arch; headers name the feature space."""
    archs = [a for a in ("cyclegan", "sagan", "stylegan") if a in set(df["arch"])]
    space = ", ".join(sorted(set(df["feature_space"])))
    head = ["Method", "Per-channel", "Bits"] + [f"{ARCH_TITLES[a]} {m} [{space}] ({'↓'})" for a in archs for m in ("FID", "qFID")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fp = df[df["method"] == FP].set_index("arch")
    lines.append("| " + " | ".join([METHOD_TITLES[FP], "–", "–"] + [c for a in archs for c in (_pm(fp.loc[a], "fid"), _fmt(fp.loc[a, "qfid"]))]) + " |")
    for v in variants(cfg):
        if v.method not in TABLE4_METHODS:
            continue
        sel = df[(df["method"] == v.method) & (df["per_channel"] == v.per_channel) & (df["w_bits"] == v.w_bits) & (df["a_bits"] == v.a_bits)].set_index("arch")
        cells = [METHOD_TITLES.get(v.method, v.method), "✓" if v.per_channel else "✗", f"a{v.a_bits}/w{v.w_bits}"]
        cells += [c for a in archs for c in ((_pm(sel.loc[a], "fid"), _pm(sel.loc[a], "qfid")) if a in sel.index else ("–", "–"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table3(df: pd.DataFrame, arch: str) -> str:
    """Markdown laid out like the paper's Table 3 for one arch: post-training methods by row,
    FID/qFID at 8-bit and 4-bit weights (8-bit activations) by column."""
    sub = df[df["arch"] == arch]
    space = ", ".join(sorted(set(sub["feature_space"])))
    bits = sorted({int(b) for b in sub["w_bits"] if b != 32}, reverse=True)
    head = ["Method", "Per-channel"] + [f"w{b}a8 {m} [{space}] (↓)" for b in bits for m in ("FID", "qFID")]
    lines = [f"### {ARCH_TITLES.get(arch, arch)}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fp = sub[sub["method"] == FP].iloc[0]
    lines.append("| " + " | ".join([METHOD_TITLES[FP], "–"] + [c for _ in bits for c in (_pm(fp, "fid"), _fmt(fp["qfid"]))]) + " |")
    for method in PTQ_METHODS:
        for pc in (True, False):
            rows = sub[(sub["method"] == method) & (sub["per_channel"] == pc) & (sub["a_bits"] == 8)]
            if rows.empty:
                continue
            by_bits = rows.set_index("w_bits")
            cells = [c for b in bits for c in ((_pm(by_bits.loc[b], "fid"), _pm(by_bits.loc[b], "qfid")) if b in by_bits.index else ("–", "–"))]
            lines.append("| " + " | ".join([METHOD_TITLES.get(method, method), "✓" if pc else "✗"] + cells) + " |")
    return "\n".join(lines) + "\n"


def arch_figure(arch: str, rows: List[tuple], out: Path) -> None:
    """FP next to each variant on the same inputs: one labelled row per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    imgs = [(label, Image.open(p)) for label, p in rows]
    w, h = imgs[0][1].size
    fig, axes = plt.subplots(len(imgs), 1, figsize=(max(4, w / 40), 0.4 + len(imgs) * (0.2 + max(0.5, h / 40))), squeeze=False)
    for ax, (label, im) in zip(axes[:, 0], imgs):
        ax.imshow(im, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(label, fontsize=7, loc="left", pad=2)
    fig.suptitle(f"{ARCH_TITLES.get(arch, arch)}: same inputs, full precision vs. quantized", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


PAPER_NUMBERS = Path(__file__).resolve().parent / "reference" / "paper_numbers.csv"
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
        cells = [r["table"], ARCH_TITLES.get(r["arch"], r["arch"]), METHOD_TITLES.get(r["method"], r["method"]), pc, r["bits"]]
        for m in ("fid", "qfid"):
            ours = {m: r[f"ours_{m}"], f"{m}_std": r[f"ours_{m}_std"]}
            cells += [_fmt(r[f"paper_{m}"]), "–" if r[f"ours_{m}"] is None else _pm(ours, m), _fmt(r[f"diff_{m}"])]
        cells.append(r["note"] or "")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _spread_note(cfg: Dict[str, Any]) -> str:
    b = int(cfg["eval"].get("bootstrap", 0))
    if b < 2:
        return ""
    return (f"± is the standard deviation over {b} bootstrap resamples of the {cfg['eval']['n_samples']} generated images "
            "(FID: against the fixed real statistics; qFID: quantized and FP features resampled in pairs, same inputs).\n\n")


def merge_exports(df: pd.DataFrame, export_files: List[str]) -> pd.DataFrame:
    """``df`` with the EXPORT_COLUMNS of each variant's export summary (FP rows stay empty)."""
    from .export.stage import summary_row

    if not export_files:
        return df
    ex = pd.DataFrame([summary_row(p) for p in export_files])
    for c in EXPORT_COLUMNS:
        if c not in ex.columns:
            ex[c] = float("nan")
    key = lambda d: d[KEY].apply(lambda r: "|".join(str(x) for x in r), axis=1)  # noqa: E731  variant key as text
    ex = ex.assign(_k=key(ex))[["_k"] + EXPORT_COLUMNS]
    return df.assign(_k=key(df)).merge(ex, on="_k", how="left").drop(columns="_k")


def export_tables(export_files: List[str]) -> str:
    """Markdown: per arch, each variant's size and latency ratios, output agreement with the
    fake-quant model per runtime; then the layers each runtime leaves in float, and where
    onnxruntime's time goes (per-op-type profile of one w8a8 variant at the largest batch)."""
    summaries = [json.loads(Path(p).read_text()) for p in export_files]
    out = ["Ratios are integer export / FP32 export of the same generator, same runtime, same process and thread count "
           "(median of interleaved runs after warm-up). *within step*: share of output pixels within one 8-bit level (2/255) "
           "of the fake-quant model; *qFID int*: qFID between the integer runtime's and the fake-quant model's outputs on the "
           "same inputs; *file max diff*: the file evaluated as written (no integer fusions) against the fake-quant model. 4-bit weights are stored packed two per byte (ONNX INT4) but no runtime here has an int4 kernel: "
           "they are dequantized to float and run as float convolutions.\n"]
    for arch in sorted({s["arch"] for s in summaries}):
        rows = sorted((s for s in summaries if s["arch"] == arch), key=lambda s: (s["method"], not s["per_channel"], -s["w_bits"]))
        if not rows:
            continue
        bs = [str(b) for b in rows[0]["batch_sizes"]]
        out.append(f"\n## {ARCH_TITLES.get(arch, arch)}\n")
        head = ["variant", "runtime", "size ratio"] + [f"latency ratio b{b}" for b in bs] + [f"FP32 ms b{bs[-1]}", f"int ms b{bs[-1]}", "within step", "qFID int", "file max diff"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in rows:
            for rt, r in s["runtimes"].items():
                cells = [s["variant"], rt, f"{r['size_ratio']:.3f}"] + [f"{r['latency_ratio'][b]:.2f}" for b in bs] + [
                    f"{r['fp_latency_ms'][bs[-1]]:.2f}", f"{r['latency_ms'][bs[-1]]:.2f}", f"{r['within_step']:.3f}", f"{r['qfid_vs_fakequant']:.4f}", f"{r['file_max_abs_diff']:.1e}"]
                out.append("| " + " | ".join(cells) + " |")
        rep = next((s for s in rows if s["w_bits"] == 8), rows[0])
        out.append(f"\n### Layers left in float ({rep['variant']})\n")
        for rt, r in rep["runtimes"].items():
            fb = r.get("float_fallbacks", {})
            ints = r.get("int_kernels")
            out.append(f"- **{rt}**" + (f" (integer kernels: {', '.join(f'{k} x{n}' for k, n in ints.items())})" if ints else "") + ":")
            out += [f"  - `{op}`: {', '.join(f'`{l}`' for l in layers)}" for op, layers in fb.items()] or ["  - none"]
        prof = rep["runtimes"].get("onnxruntime", {}).get("profile")
        if prof:
            share = rep["runtimes"]["onnxruntime"]["profile_share"]
            out.append(f"\n### onnxruntime profile ({rep['variant']}, batch {bs[-1]}): "
                       + ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(share.items(), key=lambda kv: -kv[1])) + "\n")
            out += ["| op | kind | ms per call | share |", "|---|---|---|---|"]
            out += [f"| {r['op']} | {r['kind']} | {r['ms']:.3f} | {100 * r['share']:.1f}% |" for r in prof[:10]]
    return "\n".join(out) + "\n"


def build(cfg: Dict[str, Any], metric_files: List[str], samples_dir: str, out_dir: str, export_files: List[str] = ()) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = merge_exports(load_results(metric_files), list(export_files))
    bad = df[~df[["fid", "qfid"]].map(lambda x: pd.notna(x) and abs(x) != float("inf")).all(axis=1)]
    if len(bad):
        raise ValueError(f"non-finite metrics for {bad[['arch', 'variant']].values.tolist()}")
    csv_df = results_csv_frame(df)
    with atomic_path(out / "results.csv") as tmp:
        csv_df.to_csv(tmp, index=False, float_format="%.4f")
    t4 = table4(df, cfg)
    cmp = paper_comparison(df, cfg)
    atomic_write_text(out / "paper_comparison.md", "# The paper's numbers beside ours\n\n" + paper_comparison_md(cmp))
    note = _spread_note(cfg)
    if export_files:
        atomic_write_text(out / "export.md", "# Integer exports: size and latency against FP32\n\n" + export_tables(list(export_files)))
    atomic_write_text(out / "table4.md", "# Table 4 layout (paper: Performance of quantization techniques)\n\n" + note + t4)
    atomic_write_text(out / "table3.md", "# Table 3 layout (paper: post-training quantization), one table per arch\n\n" + note
                      + "\n".join(table3(df, a) for a in sorted(set(df["arch"]))))
    sections = []
    for arch in sorted(set(df["arch"])):
        rows = [("FP", Path(samples_dir) / arch / f"{FP}.png")] + [
            (v.name, Path(samples_dir) / arch / f"{v.name}.png") for v in variants(cfg)
        ]
        rows = [(l, p) for l, p in rows if p.exists()]
        fig = out / f"samples_{arch}.png"
        arch_figure(arch, rows, fig)
        sub = df[df["arch"] == arch][["variant", "fid", "qfid"]]
        sections.append(
            f"<h2>{ARCH_TITLES.get(arch, arch)}</h2><img src='{fig.name}' alt='{arch} samples'>"
            + sub.to_html(index=False, float_format=lambda x: f"{x:.2f}")
        )
    page = (
        "<!doctype html><meta charset='utf-8'><title>qgan-bench report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px}img{image-rendering:pixelated;max-width:100%}</style>"
        f"<h1>qgan-bench report: profile {html.escape(cfg['profile'])}</h1>"
        f"<p>FID: generated vs real test images; qFID: quantized vs full-precision generator on the same inputs. "
        f"Feature space: {html.escape(', '.join(sorted(set(df['feature_space']))))}. Activations 8-bit asymmetric static; weights symmetric.</p>"
        "<h2>Results</h2>" + csv_df.to_html(index=False, float_format=lambda x: f"{x:.2f}")
        + "<h2>The paper's numbers beside ours</h2><p>Paper: Inception features, 50000 images, paper-scale models; "
        "differences are meaningful only for a paper-profile run.</p>"
        + cmp.drop(columns=[c for c in cmp.columns if c.endswith("_std")]).to_html(index=False, float_format=lambda x: f"{x:.2f}", na_rep="–")
        + ("<h2>Figure 1: quantile sweep</h2><img src='fig1_quantile_sweep.png' alt='quantile sweep'>"
           if (out / "fig1_quantile_sweep.png").exists() else "")
        + "".join(f"<h2>Samples by method: {ARCH_TITLES.get(a, a)}</h2><img src='fig_samples_{a}.png' alt='{a} samples by method'>"
                  for a in sorted(set(df["arch"])) if (out / f"fig_samples_{a}.png").exists())
        + "".join(sections)
        + (f"<h2>Integer exports</h2><pre>{html.escape((out / 'export.md').read_text())}</pre>" if export_files else "")
    )
    atomic_write_text(out / "index.html", page)
