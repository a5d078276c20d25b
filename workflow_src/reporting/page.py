"""``reports/index.html``: the results page a researcher reads first.  One self-contained file
(every image embedded as a data URI): findings first (per arch and weight width, the best method
and which methods the spreads and the noise floor cannot tell apart from it; the paper's findings
on this run), then plots, Tables 3 and 4 and the export tables rendered as tables with the
meaning of each ratio, every result, provenance and links to the files beside the page."""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import pandas as pd

from ..config import FP
from ..config.params import resolved_digest
from .paper import BEYOND, PAIRED_MIN_SEEDS, bootstrap_std, findings
from .tables import arch_title, fmt_spread, fmt_value, method_title, n_seeds, spread_label, uniform

PACKAGES = ("torch", "torchvision", "snakemake", "dvc", "mlflow", "pytorch-fid", "pandas", "numpy", "onnxruntime")
STYLE = """
body{font-family:system-ui,sans-serif;max-width:1150px;margin:1em auto;padding:0 1em;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
th{background:#f3f3f3}.scroll{overflow-x:auto}img{max-width:100%;image-rendering:pixelated}
.held{color:#070}.against{color:#b00}.within{color:#666}.note{color:#555;font-size:90%}
dl.prov{display:grid;grid-template-columns:max-content auto;gap:2px 1em}dl.prov dt{font-weight:bold}dl.prov dd{margin:0}
nav a{margin-right:1em}
"""


def _variant_label(row: Mapping[str, Any]) -> str:
    pc = row.get("per_channel")
    gran = "" if pc is None or (isinstance(pc, float) and math.isnan(pc)) else (" (per-channel)" if bool(pc) else " (per-tensor)")
    return f"{method_title(row['method'])}{gran}"


def _apart(a: Mapping[str, Any], b: Mapping[str, Any], metric: str, floor: Optional[float]) -> bool:
    """Whether ``a`` and ``b`` differ in ``metric`` beyond :data:`BEYOND` combined bootstrap spreads
    and are not both at or below the noise floor ``floor``."""
    va, vb = float(a[metric]), float(b[metric])
    if floor is not None and va <= floor and vb <= floor:
        return False
    return abs(va - vb) > BEYOND * math.hypot(bootstrap_std(a, metric), bootstrap_std(b, metric))


def _floor(df: pd.DataFrame, arch: str, column: str) -> Optional[float]:
    if column not in df.columns:
        return None
    v = df.loc[df["arch"] == arch, column].dropna()
    return None if v.empty else float(v.iloc[0])


def best_by_width(df: pd.DataFrame) -> pd.DataFrame:
    """Per arch and weight width (8-bit activations): the quantized variant with the lowest qFID,
    the variants that the spreads and the noise floor cannot tell apart from it (``tied``), and
    whether it sits above the arch's qFID noise floor at all."""
    rows = []
    q = uniform(df[(df["method"] != FP) & (df["a_bits"] == 8)])  # mixed precision has its own figure (the size front)
    for arch in sorted(set(q["arch"])):
        floor = _floor(df, arch, "qfid_floor")
        for w in sorted({int(b) for b in q.loc[q["arch"] == arch, "w_bits"]}, reverse=True):
            cell = q[(q["arch"] == arch) & (q["w_bits"] == w)].sort_values("qfid")
            best = cell.iloc[0]
            tied = [r for _, r in cell.iloc[1:].iterrows() if not _apart(best, r, "qfid", floor)]
            rows.append({"arch": arch, "w_bits": w, "best": _variant_label(best), "qfid": fmt_spread(best, "qfid"),
                         "tied": [_variant_label(r) for r in tied], "n": len(cell),
                         "above_floor": None if floor is None else float(best["qfid"]) > floor, "floor": floor})
    return pd.DataFrame(rows)


def fid_against_fp(df: pd.DataFrame) -> pd.DataFrame:
    """Quantized variants whose FID is lower than their full-precision generator's, and whether
    that is a difference at all (beyond the spreads and the arch's FID noise floor) or noise."""
    rows = []
    for arch, g in df.groupby("arch", sort=True):
        fp = g[g["method"] == FP]
        if fp.empty:
            continue
        fp = fp.iloc[0]
        floor = _floor(df, arch, "fid_floor")
        for _, r in g[(g["method"] != FP) & (g["fid"] < fp["fid"])].iterrows():
            beyond = _apart(fp, r, "fid", None)
            below_floor = floor is not None and float(fp["fid"]) - float(r["fid"]) <= floor
            rows.append({"arch": arch, "variant": r["variant"], "fid": fmt_spread(r, "fid"), "fp_fid": fmt_spread(fp, "fid"),
                         "real": beyond and not below_floor})
    return pd.DataFrame(rows, columns=["arch", "variant", "fid", "fp_fid", "real"])


def _e(x: Any) -> str:
    return html.escape(str(x))


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes, alt: str) -> str:
    return f"<img src='{_png_uri(data)}' alt='{_e(alt)}'>"


def _markdown(text: str) -> str:
    """The report's Markdown (tables, lists, emphasis) as HTML."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _md_file(path: str, start: str = "") -> str:
    """A report Markdown file as HTML below a page section: its title dropped, its headings two
    levels down; from the first line that begins with ``start`` when given (Table 3 repeats
    Table 4's notes)."""
    text = Path(path).read_text()
    if text.startswith("# "):
        text = text.split("\n", 1)[1]
    if start:
        at = [i for i, line in enumerate(text.splitlines()) if line.startswith(start)]
        text = "\n".join(text.splitlines()[at[0]:]) if at else text
    text = re.sub(r"^(#{1,6}) ", lambda m: "#" * min(6, len(m.group(1)) + 2) + " ", text, flags=re.M)
    return f"<div class='scroll'>{_markdown(text)}</div>"


def qfid_plot(df: pd.DataFrame) -> bytes:
    """qFID by method with its bootstrap spread as error bars: one panel per arch and weight
    width (8-bit activations), log axis, the arch's qFID noise floor as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = uniform(df[(df["method"] != FP) & (df["a_bits"] == 8)])  # mixed precision has its own figure (the size front)
    archs = sorted(set(q["arch"]))
    widths = sorted({int(b) for b in q["w_bits"]}, reverse=True)
    n_rows = max(len(q[(q["arch"] == a) & (q["w_bits"] == w)]) for a in archs for w in widths)
    fig, axes = plt.subplots(len(archs), len(widths), figsize=(5.2 * len(widths), 0.9 + len(archs) * (0.6 + 0.22 * n_rows)), squeeze=False)
    for i, arch in enumerate(archs):
        floor = _floor(df, arch, "qfid_floor")
        for j, w in enumerate(widths):
            ax = axes[i, j]
            cell = q[(q["arch"] == arch) & (q["w_bits"] == w)].iloc[::-1]
            if cell.empty:
                ax.axis("off")
                continue
            y = list(range(len(cell)))
            val = cell["qfid"].astype(float).to_numpy()
            err = cell["qfid_std"].astype(float).fillna(0).to_numpy() if "qfid_std" in cell else None
            lo = None if err is None else [min(e, v * 0.99) for v, e in zip(val, err)]  # a log axis has no room below 0
            ax.errorbar(val, y, xerr=None if err is None else [lo, err], fmt="o", ms=4, capsize=2)
            ax.set_yticks(y, [_variant_label(r) for _, r in cell.iterrows()], fontsize=7)
            ax.set_xscale("log")
            if floor:
                ax.axvline(floor, ls="--", color="grey", lw=1, label="noise floor")
                ax.legend(fontsize=6, loc="lower right")
            ax.set_title(f"{arch_title(arch)}, w{w}a8", fontsize=9)
            ax.set_xlabel(f"qFID [{cell['feature_space'].iloc[0]}] (lower is better)", fontsize=7)
            ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def provenance(cfg: Mapping[str, Any], metrics: Sequence[str]) -> Dict[str, str]:
    """Where these numbers come from: the code's commit, the profile, a digest of the resolved
    params, the package versions, the devices the evaluations ran on and the date."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               check=True).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = f"unknown ({root} is not a git checkout)"
    versions = []
    for p in PACKAGES:
        try:
            versions.append(f"{p} {metadata.version(p)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{p} (not installed)")
    devices = set()
    for p in metrics:
        env = json.loads(Path(p).read_text()).get("environment") or {}
        if env:
            devices.add(env["device"] + (f" ({env['gpu_name']})" if env.get("gpu_name") else "")
                        + f", torch {env.get('torch_version')}" + (f", CUDA {env['cuda_version']}" if env.get("gpu_name") else ""))
    digest = resolved_digest(cfg)
    dumped = Path(".qgan") / f"params-{digest[:16]}.yaml"  # what the Snakemake run's jobs read (DVC's read params.yaml)
    return {"Commit": commit, "Profile": str(cfg["profile"]),
            "Resolved params (sha256)": digest + (f" ({dumped})" if dumped.exists() else ""),
            "Packages": ", ".join(versions), "Evaluated on": "; ".join(sorted(devices)) or "unknown",
            "Written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _results_table(csv_df: pd.DataFrame) -> str:
    """results.csv as a readable table: empty columns dropped, missing values as –, ✓/✗."""
    out = csv_df.dropna(axis=1, how="all").copy()
    out["per_channel"] = out["per_channel"].map({"True": "✓", "False": "✗", "": "–"})
    body = "".join("<tr>" + "".join(f"<td>{_e(fmt_value(v) if isinstance(v, float) else ('–' if v is None or v == '' else v))}</td>"
                                    for v in r) + "</tr>" for r in out.itertuples(index=False))
    return ("<div class='scroll'><table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in out.columns) + "</tr>" + body + "</table></div>")


def _findings_html(df: pd.DataFrame, per_seed: Optional[pd.DataFrame] = None) -> str:
    best = best_by_width(df)
    n = n_seeds(df)
    what = (f"standard deviations across {n} seeds (each its own FP model, calibration and QAT run)" if n > 1 else
            "bootstrap standard deviations over the generated images of one seed (a spread across samples, not across training seeds)")
    parts = [f"<p class='note'>Spreads are {what}. Two values differ only beyond {BEYOND:g} combined spreads and when not both sit at or "
             "below the arch's noise floor (qFID: the FP generator against itself on other inputs).</p>",
             "<table><tr><th>Arch</th><th>Weights</th><th>Best (lowest qFID)</th><th>qFID</th><th>Not distinguishable from it</th>"
             "<th>Above the noise floor?</th></tr>"]
    for _, r in best.iterrows():
        above = "–" if r["above_floor"] is None else ("yes" if r["above_floor"] else f"no (floor {fmt_value(r['floor'])}): as good as FP")
        tied = "; ".join(r["tied"]) if r["tied"] else f"none of the other {r['n'] - 1}"
        parts.append(f"<tr><td>{_e(arch_title(r['arch']))}</td><td>w{r['w_bits']}a8</td><td>{_e(r['best'])}</td><td>{_e(r['qfid'])}</td>"
                     f"<td>{_e(tied)}</td><td>{_e(above)}</td></tr>")
    parts.append("</table>")
    lower = fid_against_fp(df)
    if len(lower):
        real = lower[lower["real"]]
        parts.append(f"<p>{len(lower)} quantized variants have a lower FID than their full-precision generator; "
                     + (f"{len(real)} by more than the spread and the FID noise floor: "
                        + ", ".join(f"{_e(arch_title(r['arch']))} {_e(r['variant'])} {_e(r['fid'])} vs FP {_e(r['fp_fid'])}" for _, r in real.iterrows())
                        if len(real) else "none by more than the spread and the FID noise floor, so none is better than FP")
                     + ".</p>")
    fd = findings(df, per_seed)
    paired = per_seed is not None and n_seeds(df) >= PAIRED_MIN_SEEDS
    parts.append("<h3>The paper's findings on this run</h3><table><tr><th>Finding (paper section)</th><th>Metric</th><th>Cells</th>"
                 "<th>Held</th><th>Against</th><th>Within spread</th>" + ("<th>By paired test</th>" if paired else "") + "<th>Verdict</th></tr>")
    for _, r in fd.iterrows():
        cls = {"held": "held", "not held": "against"}.get(r["verdict"], "within")
        parts.append(f"<tr><td>{_e(r['claim'])} ({_e(r['section'])})</td><td>{_e(r['metric'])}</td><td>{r['cells']}</td><td>{r['held']}</td>"
                     f"<td>{r['against']}</td><td>{r['within']}</td>" + (f"<td>{r['paired']}</td>" if paired else "")
                     + f"<td class='{cls}'><b>{_e(r['verdict'])}</b></td></tr>")
    parts.append("</table>")
    return "".join(parts)


RATIOS = ("<p class='note'>Every ratio is integer export over FP32 export of the same generator in the same runtime: "
          "below 1 is smaller or faster than FP32, above 1 larger or slower. Latencies in milliseconds per batch.</p>")


def write_page(cfg: Mapping[str, Any], df: pd.DataFrame, csv_df: pd.DataFrame, *, out: str, metrics: Sequence[str],
               arch_figures: Mapping[str, bytes], files: Mapping[str, str], figures: Mapping[str, str], mlflow_link: Tuple[str, str],
               front: str = "", per_seed: Optional[pd.DataFrame] = None) -> None:
    """The page.  ``front``: the size-quality front per arch (Markdown, shown under the findings);
    ``files``: the outputs beside it by title (linked and, for Markdown, shown);
    ``figures``: figure PNGs by title (embedded and linked); ``arch_figures``: per arch, the
    FP-vs-variant sample overview (embedded); ``mlflow_link``: (text, href or "")."""
    from ..files import atomic_write_text

    page_dir = Path(out).parent
    link = lambda p: os.path.relpath(p, page_dir)  # noqa: E731
    toc = [("findings", "Findings"), ("plots", "Plots"), ("tables", "Tables 3 and 4"), ("export", "Integer exports"),
           ("results", "All results"), ("paper", "Beside the paper"), ("samples", "Samples"), ("timing", "Time"),
           ("provenance", "Provenance and files")]
    body = [f"<h1>qgan-bench results: profile {_e(cfg['profile'])}</h1>",
            "<nav>" + "".join(f"<a href='#{k}'>{_e(t)}</a>" for k, t in toc if k != "export" or "export" in files) + "</nav>",
            "<p>FID: generated against real images (each dataset's evaluation split); qFID: quantized against full-precision "
            "generator on the same inputs (0 = identical outputs). Lower is better for both. Activations 8-bit asymmetric "
            f"static, weights symmetric. Feature space: {_e(', '.join(sorted(set(df['feature_space']))))}.</p>",
            "<h2 id='findings'>Findings</h2>", _findings_html(df, per_seed),
            *([f"<h3>Size against quality: the Pareto-optimal variants per arch (qFID ± {spread_label(df)})</h3>",
               f"<div class='scroll'>{_markdown(front)}</div>"] if front else []),
            f"<h2 id='plots'>Plots</h2><h3>qFID by method (error bars: {spread_label(df)})</h3>", _img(qfid_plot(df), "qFID by method")]
    for title, p in figures.items():
        body.append(f"<h3>{_e(title)} (<a href='{_e(link(p))}'>{_e(Path(p).name)}</a>)</h3>" + _img(Path(p).read_bytes(), title))
    body += ["<h2 id='tables'>Tables 3 and 4</h2>", "<h3>Table 4: vanilla PTQ and QAT</h3>", _md_file(files["Table 4"]),
             "<h3>Table 3: post-training methods (notes as for Table 4)</h3>", _md_file(files["Table 3"], start="### ")]
    if "export" in files:
        body += ["<h2 id='export'>Integer exports</h2>", RATIOS, _md_file(files["export"])]
    body += ["<h2 id='results'>All results</h2><p>Every row of <a href='results.csv'>results.csv</a> (empty columns left out).</p>",
             _results_table(csv_df),
             "<h2 id='paper'>Beside the paper</h2>", _md_file(files["Paper comparison"]),
             "<h2 id='samples'>Samples: full precision and every variant on the same inputs</h2>"]
    body += [f"<h3>{_e(arch_title(a))}</h3>" + _img(data, f"{a} samples") for a, data in arch_figures.items()]
    body += ["<h2 id='timing'>Where the time goes</h2>", _md_file(files["Timing"]),
             "<h2 id='provenance'>Provenance and files</h2><dl class='prov'>"
             + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in provenance(cfg, metrics).items())
             + "<dt>MLflow</dt><dd>" + (f"<a href='{_e(mlflow_link[1])}'>{_e(mlflow_link[0])}</a>" if mlflow_link[1] else _e(mlflow_link[0]))
             + "</dd><dt>Files</dt><dd>"
             + ", ".join(f"<a href='{_e(link(p))}'>{_e(Path(p).name)}</a>" for p in list(files.values()) + list(figures.values()))
             + "</dd></dl>"]
    atomic_write_text(out, "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>qgan-bench results</title>"
                      f"<style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>\n")
