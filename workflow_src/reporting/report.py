"""The report stage (rules/report.smk): ``results.csv``, Tables 3 and 4, the paper comparison,
the export tables and one ``index.html`` that shows them with every figure."""
from __future__ import annotations

import html as html_module
import os
from pathlib import Path
from typing import Any, Dict, List

import pandas as pd

from ..config import FP, variants
from ..files import atomic_path, atomic_write_text
from ..workflow import tracking
from .paper import paper_comparison, paper_comparison_md
from .tables import (RESULTS_FLOAT, arch_title, export_tables, floor_note, fmt_value, load_results, merge_exports, merge_floors, quantile_note,
                     results_csv_frame, selection_note, spread_note)
from .tables import table3 as table3_md
from .tables import table4 as table4_md
from .timing import timing_md


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
    fig.suptitle(f"{arch_title(arch)}: same inputs, full precision vs. quantized", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def report(cfg: Dict[str, Any], *, metrics: List[str], samples: List[str], fig1: str, figures: List[str], exports: List[str],
           floors: List[str], results: str, table4: str, table3: str, paper: str, export: str, timing: str, html: str) -> None:
    """Every table and the HTML page from the variants' metrics, samples, export summaries and
    figures.  The page links the figures relative to itself and writes a per-arch sample overview
    (``samples_<arch>.png``) beside itself."""
    tracking.flush()  # the jobs' MLflow records, for runs without Snakemake's onsuccess (DVC)
    page_dir = Path(html).parent
    page_dir.mkdir(parents=True, exist_ok=True)
    df = merge_floors(merge_exports(load_results(metrics), list(exports)), list(floors))
    bad = df[~df[["fid", "qfid"]].map(lambda x: pd.notna(x) and abs(x) != float("inf")).all(axis=1)]
    if len(bad):
        raise ValueError(f"non-finite metrics for {bad[['arch', 'variant']].values.tolist()}")
    csv_df = results_csv_frame(df)
    with atomic_path(results) as tmp:
        csv_df.to_csv(tmp, index=False, float_format=RESULTS_FLOAT)
    cmp = paper_comparison(df)
    floor = floor_note(list(floors))
    atomic_write_text(paper, "# The paper's findings and numbers beside ours\n\n" + paper_comparison_md(cmp, df, floor))
    note = spread_note(cfg, df) + floor + quantile_note(df) + selection_note(df)
    atomic_write_text(export, "# Integer exports: size and latency against FP32\n\n" + (
        export_tables(list(exports)) if exports else
        f"No variant is exported: no weight width of the matrix is in `export.w_bits` = {cfg['export']['w_bits']}.\n"))
    atomic_write_text(table4, "# Table 4 layout (paper: Performance of quantization techniques)\n\n" + note + table4_md(df, cfg))
    atomic_write_text(table3, "# Table 3 layout (paper: post-training quantization), one table per arch\n\n" + note
                      + "\n".join(table3_md(df, a) for a in sorted(set(df["arch"]))))
    atomic_write_text(timing, timing_md("."))  # the jobs' benchmark files and logs, in the working directory
    archs = sorted(set(df["arch"]))
    sample_of = {(Path(p).parent.name, Path(p).stem): Path(p) for p in samples}
    sections = []
    for arch in archs:
        rows = [("FP", sample_of.get((arch, FP)))] + [(v.name, sample_of.get((arch, v.name))) for v in variants(cfg)]
        rows = [(label, p) for label, p in rows if p is not None and p.exists()]
        fig = page_dir / f"samples_{arch}.png"
        arch_figure(arch, rows, fig)
        sub = df[df["arch"] == arch][["variant", "fid", "qfid"]]
        sections.append(f"<h2>{arch_title(arch)}</h2><img src='{fig.name}' alt='{arch} samples'>"
                        + sub.to_html(index=False, float_format=fmt_value))
    link = lambda p: os.path.relpath(p, page_dir)  # noqa: E731
    figure_of = {Path(p).stem[len("fig_samples_"):]: p for p in figures}
    page = (
        "<!doctype html><meta charset='utf-8'><title>qgan-bench report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px}img{image-rendering:pixelated;max-width:100%}</style>"
        f"<h1>qgan-bench report: profile {html_module.escape(cfg['profile'])}</h1>"
        f"<p>FID: generated vs real images (each dataset's FID split); qFID: quantized vs full-precision generator on the same inputs. "
        f"Feature space: {html_module.escape(', '.join(sorted(set(df['feature_space']))))}. Activations 8-bit asymmetric static; weights symmetric.</p>"
        "<h2>Results</h2>" + csv_df.to_html(index=False, float_format=fmt_value)
        + "<h2>The paper's findings and numbers beside ours</h2>"
        + f"<pre>{html_module.escape(Path(paper).read_text())}</pre>"
        + (f"<h2>Figure 1: quantile sweep</h2><img src='{link(fig1)}' alt='quantile sweep'>" if Path(fig1).exists() else "")
        + "".join(f"<h2>Samples by method: {arch_title(a)}</h2><img src='{link(figure_of[a])}' alt='{a} samples by method'>"
                  for a in archs if a in figure_of and Path(figure_of[a]).exists())
        + "".join(sections)
        + (f"<h2>Integer exports</h2><pre>{html_module.escape(Path(export).read_text())}</pre>" if exports else "")
        + f"<h2>Where the time goes</h2><pre>{html_module.escape(Path(timing).read_text())}</pre>"
    )
    atomic_write_text(html, page)
