"""The report stage (rules/report.smk): ``results.csv``, Tables 3 and 4, the paper comparison,
the export tables and one ``index.html`` that shows them with every figure."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, List

import pandas as pd

from ..config import FP, variants
from ..figures import fig_title
from ..files import atomic_path, atomic_write_text, write_json
from ..workflow import tracking
from .falloff import write_falloff
from .front import front_md, write_front
from .page import write_page
from .paper import paper_comparison, paper_comparison_md
from .tables import (RESULTS_FLOAT, across_seeds, arch_title, export_tables, floor_note, load_results, merge_exports, merge_floors,
                     quantile_note, results_csv_frame, seeds_csv_frame, selection_note, spread_comparison_md, spread_note)
from .tables import table3 as table3_md
from .tables import table4 as table4_md
from .timing import timing_md


def arch_figure(arch: str, rows: List[tuple]) -> bytes:
    """FP next to each variant on the same inputs: one labelled row per variant, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    imgs = [(label, Image.open(p)) for label, p in rows]
    w, h = imgs[0][1].size
    fig, axes = plt.subplots(len(imgs), 1, figsize=(max(4, w / 40), 0.6 + len(imgs) * (0.2 + max(0.5, h / 40))), squeeze=False)
    for ax, (label, im) in zip(axes[:, 0], imgs):
        ax.imshow(im, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(label, fontsize=7, loc="left", pad=2)
    fig_title(fig, f"{arch_title(arch)}: same inputs, full precision vs. quantized", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def summary_metrics(df: pd.DataFrame) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{arch: {variant: {"fid", "qfid", "fid_std", "qfid_std"}}}``: the numbers ``dvc metrics
    show``/``diff`` compare, without the per-job records' other fields."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for _, r in df.iterrows():
        out.setdefault(r["arch"], {})[r["variant"]] = {k: float(r[k]) for k in ("fid", "qfid", "fid_std", "qfid_std")
                                                       if k in r and pd.notna(r[k])}
    return out


def report(cfg: Dict[str, Any], *, metrics: List[str], samples: List[str], fig1: str, sensitivity: str, figures: List[str], exports: List[str],
           floors: List[str], results: str, seeds: str, table4: str, table3: str, paper: str, export: str, timing: str, html: str,
           summary: str, front: str, fig_front: str, fig_bits: str) -> None:
    """Every table, the results page (:mod:`.page`) and the summary metrics from the variants'
    metrics, samples, export summaries and figures.  ``results`` has a row per variant and seed;
    everything else shows each variant over its seeds (:func:`.tables.across_seeds`), ``seeds``
    its spread across them beside the bootstrap spread."""
    tracking.flush()  # the jobs' MLflow records, for runs without Snakemake's onsuccess (DVC)
    Path(html).parent.mkdir(parents=True, exist_ok=True)
    per_seed = merge_floors(merge_exports(load_results(metrics), list(exports)), list(floors))
    bad = per_seed[~per_seed[["fid", "qfid"]].map(lambda x: pd.notna(x) and abs(x) != float("inf")).all(axis=1)]
    if len(bad):
        raise ValueError(f"non-finite metrics for {bad[['arch', 'variant', 'seed']].values.tolist()}")
    csv_df = results_csv_frame(per_seed)
    tracking.link_variants(cfg["profile"], per_seed[["arch", "variant", "method", "per_channel", "w_bits", "a_bits", "seed"]].to_dict("records"))
    with atomic_path(results) as tmp:
        csv_df.to_csv(tmp, index=False, float_format=RESULTS_FLOAT)
    df = across_seeds(per_seed)
    with atomic_path(seeds) as tmp:
        seeds_csv_frame(df).to_csv(tmp, index=False, float_format=RESULTS_FLOAT)
    write_json(summary, summary_metrics(df))
    front_table = write_front(df, front, fig_front)
    write_falloff(df, fig_bits)
    cmp = paper_comparison(df)
    floor = floor_note(list(floors))
    atomic_write_text(paper, "# The paper's findings and numbers beside ours\n\n" + paper_comparison_md(cmp, df, floor, per_seed))
    note = spread_note(cfg, df) + spread_comparison_md(df) + floor + quantile_note(df) + selection_note(df)
    atomic_write_text(export, "# Integer exports: size and latency against FP32\n\n" + (
        export_tables(list(exports)) if exports else
        f"No variant is exported: no weight width of the matrix is in `export.w_bits` = {cfg['export']['w_bits']}.\n"))
    atomic_write_text(table4, "# Table 4 layout (paper: Performance of quantization techniques)\n\n" + note + table4_md(df, cfg))
    atomic_write_text(table3, "# Table 3 layout (paper: post-training quantization), one table per arch\n\n" + note
                      + "\n".join(table3_md(df, a) for a in sorted(set(df["arch"]))))
    atomic_write_text(timing, timing_md("."))  # the jobs' benchmark files and logs, in the working directory
    archs = sorted(set(df["arch"]))
    sample_of = {(Path(p).parent.name, Path(p).stem): Path(p) for p in samples}
    overview = {}
    for arch in archs:
        rows = [("FP", sample_of.get((arch, FP)))] + [(v.name, sample_of.get((arch, v.name))) for v in variants(cfg)]
        overview[arch] = arch_figure(arch, [(label, p) for label, p in rows if p is not None and p.exists()])
    figure_of = {Path(p).stem[len("fig_samples_"):]: p for p in figures}
    shown = {"Figure 1: vanilla PTQ qFID against the activation quantile (validation inputs)": fig1} if Path(fig1).exists() else {}
    if Path(sensitivity).exists():
        shown["Layer sensitivity: the damage of each layer or operation quantized alone (validation inputs)"] = sensitivity
    shown["Where quality falls off: qFID by weight and activation width"] = fig_bits
    shown["Size against quality: generator size and qFID of every variant, the Pareto front joined"] = fig_front
    shown.update({f"Samples by method: {arch_title(a)}": figure_of[a] for a in archs if a in figure_of and Path(figure_of[a]).exists()})
    files = {"results.csv": results, "Across seeds": seeds, "Size-quality front": front, "Table 4": table4, "Table 3": table3, "Paper comparison": paper, "Timing": timing}
    if exports:
        files["export"] = export
    sweep_csv = Path(fig1).with_name("quantile_sweep.csv")
    if sweep_csv.exists():
        files["Quantile sweep"] = str(sweep_csv)
    sensitivity_csv = Path(sensitivity).with_name("sensitivity.csv")
    if sensitivity_csv.exists():
        files["Layer sensitivity"] = str(sensitivity_csv)
    write_page(cfg, df, csv_df, out=html, metrics=metrics, arch_figures=overview, files=files, figures=shown,
               mlflow_link=tracking.experiment_link(cfg["profile"]), front=front_md(front_table), per_seed=per_seed)
