"""Report: ``results.csv`` (the users' contract), ``table4.md`` laid out like the paper's Table 4,
sample grids (FP next to every variant on the same inputs), and an ``index.html`` that shows them."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Dict, List

import pandas as pd
import torch

from .config import FP, Variant, variants
from .utils import atomic_path, atomic_write_text

COLUMNS = ["arch", "method", "per_channel", "w_bits", "a_bits", "fid", "qfid", "feature_space"]
ARCH_TITLES = {"cyclegan": "CycleGAN", "sagan": "SAGAN", "stylegan": "StyleGAN"}
METHOD_TITLES = {FP: "full-precision", "ptq-minmax": "vanilla PTQ (min-max)", "ptq-quantile": "vanilla PTQ (quantile)",
                 "ar-brecq": "AR-BRECQ", "ste-brecq": "STE-BRECQ", "ma-qat": "MA-QAT", "lsq-qat": "LSQ-QAT"}
PTQ_METHODS = ("ptq-minmax", "ptq-quantile", "ar-brecq", "ste-brecq")  # Table 3
TABLE4_METHODS = ("ptq-minmax", "ptq-quantile", "ma-qat", "lsq-qat")   # Table 4: vanilla PTQ against QAT


def save_grid(images: torch.Tensor, out: str | Path) -> None:
    """One row of [-1, 1] images as a PNG."""
    from PIL import Image

    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
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
    """The ``results.csv`` contract: COLUMNS, ``per_channel`` as True/False (empty for FP)."""
    out = sort_results(df)[COLUMNS].copy()
    out["per_channel"] = out["per_channel"].map(lambda x: "" if x is None or pd.isna(x) else str(bool(x)))
    return out


def _fmt(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and pd.isna(x)) else f"{x:.2f}"


def table4(df: pd.DataFrame, cfg: Dict[str, Any]) -> str:
    """Markdown laid out like the paper's Table 4: one row per (method, per-channel, bits) of
    vanilla PTQ and QAT, one FID/qFID column pair per arch; headers name the feature space."""
    archs = [a for a in ("cyclegan", "sagan", "stylegan") if a in set(df["arch"])]
    space = ", ".join(sorted(set(df["feature_space"])))
    head = ["Method", "Per-channel", "Bits"] + [f"{ARCH_TITLES[a]} {m} [{space}] ({'↓'})" for a in archs for m in ("FID", "qFID")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fp = df[df["method"] == FP].set_index("arch")
    lines.append("| " + " | ".join([METHOD_TITLES[FP], "–", "–"] + [c for a in archs for c in (_fmt(fp.loc[a, "fid"]), _fmt(fp.loc[a, "qfid"]))]) + " |")
    for v in variants(cfg):
        if v.method not in TABLE4_METHODS:
            continue
        sel = df[(df["method"] == v.method) & (df["per_channel"] == v.per_channel) & (df["w_bits"] == v.w_bits) & (df["a_bits"] == v.a_bits)].set_index("arch")
        cells = [METHOD_TITLES.get(v.method, v.method), "✓" if v.per_channel else "✗", f"a{v.a_bits}/w{v.w_bits}"]
        cells += [c for a in archs for c in ((_fmt(sel.loc[a, "fid"]), _fmt(sel.loc[a, "qfid"])) if a in sel.index else ("–", "–"))]
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
    lines.append("| " + " | ".join([METHOD_TITLES[FP], "–"] + [c for _ in bits for c in (_fmt(fp["fid"]), _fmt(fp["qfid"]))]) + " |")
    for method in PTQ_METHODS:
        for pc in (True, False):
            rows = sub[(sub["method"] == method) & (sub["per_channel"] == pc) & (sub["a_bits"] == 8)]
            if rows.empty:
                continue
            by_bits = rows.set_index("w_bits")
            cells = [c for b in bits for c in ((_fmt(by_bits.loc[b, "fid"]), _fmt(by_bits.loc[b, "qfid"])) if b in by_bits.index else ("–", "–"))]
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


def build(cfg: Dict[str, Any], metric_files: List[str], samples_dir: str, out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = load_results(metric_files)
    bad = df[~df[["fid", "qfid"]].map(lambda x: pd.notna(x) and abs(x) != float("inf")).all(axis=1)]
    if len(bad):
        raise ValueError(f"non-finite metrics for {bad[['arch', 'variant']].values.tolist()}")
    csv_df = results_csv_frame(df)
    with atomic_path(out / "results.csv") as tmp:
        csv_df.to_csv(tmp, index=False, float_format="%.4f")
    t4 = table4(df, cfg)
    atomic_write_text(out / "table4.md", "# Table 4 layout (paper: Performance of quantization techniques)\n\n" + t4)
    atomic_write_text(out / "table3.md", "# Table 3 layout (paper: post-training quantization), one table per arch\n\n"
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
        + ("<h2>Figure 1: quantile sweep</h2><img src='fig1_quantile_sweep.png' alt='quantile sweep'>"
           if (out / "fig1_quantile_sweep.png").exists() else "")
        + "".join(sections)
    )
    atomic_write_text(out / "index.html", page)
