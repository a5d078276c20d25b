"""The report's tables: ``results.csv`` (the users' contract), Tables 3 and 4 laid out like the
paper's, and the integer-export tables.  Which methods each table shows and the row and column
titles come from the registry."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pandas as pd

from .. import registry
from ..config import FP, variants
from ..workflow import tracking
from ..workflow.export import EXTENSIONS, summary_row

COLUMNS = ["arch", "method", "per_channel", "w_bits", "a_bits", "fid", "qfid", "feature_space", "fid_std", "qfid_std"]
# Integer export (rule export): the fastest runtime's ratios against FP32 at the largest batch, plus each runtime's.
EXPORT_COLUMNS = ["runtime", "size_ratio", "latency_ratio", "latency_ratio_b1", "export_within_step", "export_qfid",
                  "onnxruntime_latency_ratio", "onnxruntime_size_ratio", "pt2e_latency_ratio", "pt2e_size_ratio"]
# The deployable integer scheme (export.schemes; workflow_src/deploy/scheme.py), onnxruntime at the largest
# batch: its ratios against FP32, its agreement with its own fake-quant model, and its quality cost, the qFID
# between its fake-quant outputs and the paper model's on the export's check inputs.
DEPLOYABLE_COLUMNS = ["deployable_latency_ratio", "deployable_size_ratio", "deployable_within_step", "deployable_qfid_vs_paper"]
# The inductor-x86 runtime (export.runtimes; the paper profile's): the AOTInductor package's ratios against
# the FP32 package at the largest batch, and the seconds its compile took (paid once, in the export job).
# With export.deployable_runtimes naming it, the deployable scheme's package too: its latency ratio and within-step share.
INDUCTOR_COLUMNS = ["inductor_latency_ratio", "inductor_size_ratio", "inductor_compile_seconds", "deployable_inductor_latency_ratio",
                    "deployable_inductor_within_step"]
# The quantile pair a method started from ("a U/L; w U/L") and where it came from: the sweep's pick
# for the width on validation inputs, or the params key that set it (empty for methods without one).
QUANTILE_COLUMNS = ["quantiles", "quantiles_from"]
# The arch's noise floor (rule noise_floor): qFID of the FP generator against itself on other inputs,
# and FID between the real evaluation and training splits; a value below them is not a difference.
FLOOR_COLUMNS = ["qfid_floor", "fid_floor"]
# Trained methods (QAT): the epoch kept (-1: the quantile-PTQ start) and what chose it (with
# qat.select: best the lowest validation qFID or held-out loss, else the last epoch), and the
# distillation loss it trained with (perceptual, or mse: the paper's appendix B).
TRAINING_COLUMNS = ["selected_epoch", "selected_on", "distill_loss"]
# The generator's size (issue 20): bits per quantized weight averaged over its weights (32: FP; a
# mixed-precision variant's w_bits is its budget) and the bytes of its weights at their widths.
SIZE_COLUMNS = ["avg_w_bits", "size_bytes"]
# The replicate (params seeds) a row of results.csv comes from (issue 21): one row per variant and seed.
SEED_COLUMNS = ["seed"]
KEY = ["arch", "method", "per_channel", "w_bits", "a_bits"]
# reports/seeds.csv: one row per variant, over its seeds: the mean, the standard deviation across
# seeds (ddof 1; empty with one seed) and the mean bootstrap spread over samples, for FID and qFID.
SEEDS_COLUMNS = KEY + ["n_seeds", "seeds", "fid_mean", "fid_seed_std", "fid_boot_std", "qfid_mean", "qfid_seed_std", "qfid_boot_std"]
# Columns of a variant that are one seed's choice, not a measurement: the aggregate keeps the first seed's.
_FIRST_SEED_COLUMNS = ["quantiles", "quantiles_from", "selected_epoch", "selected_on", "distill_loss"]
RESULTS_FLOAT = "%.6g"  # results.csv: six significant digits (a qFID of 3e-5 is not 0.0000)
FP_TITLE = "full-precision"


def arch_title(arch: str) -> str:
    return registry.archs()[arch].title if arch in registry.archs() else arch


def method_title(method: str) -> str:
    if method == FP:
        return FP_TITLE
    return registry.methods()[method].title if method in registry.methods() else method


def uniform(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of one weight width throughout (FP included): not those of mixed-precision methods,
    whose ``w_bits`` is a budget."""
    mixed = [m.name for m in registry.methods().values() if m.mixed]
    return df[~df["method"].isin(mixed)]


def load_results(metric_files: List[str]) -> pd.DataFrame:
    rows = [json.loads(Path(p).read_text()) for p in metric_files]
    return sort_results(pd.DataFrame(rows))


def sort_results(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in report order: by arch, FP first, then method, per-channel first, more bits first."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results lack columns {missing}")
    df = df.assign(_m=df["method"].map(lambda m: 0 if m == FP else 1), _pc=df["per_channel"].map(lambda x: -1 if x is None or pd.isna(x) else int(bool(x))))
    by = ["arch", "_m", "method", "_pc", "w_bits", "a_bits"] + (["seed"] if "seed" in df.columns else [])
    df = df.sort_values(by, ascending=[True, True, True, False, False, False, True][:len(by)])
    return df.drop(columns=["_m", "_pc"]).reset_index(drop=True)


def results_csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The ``results.csv`` contract: COLUMNS (then EXPORT_COLUMNS where exports exist, then
    QUANTILE_COLUMNS where the metrics record them, then FLOOR_COLUMNS where floors were measured,
    then TRAINING_COLUMNS, then SIZE_COLUMNS, the seed, then DEPLOYABLE_COLUMNS where that scheme was exported, then
    INDUCTOR_COLUMNS where that runtime was),
    ``per_channel`` as True/False (empty for FP)."""
    cols = COLUMNS + [c for c in EXPORT_COLUMNS + QUANTILE_COLUMNS + FLOOR_COLUMNS + TRAINING_COLUMNS + SIZE_COLUMNS + SEED_COLUMNS
                      + DEPLOYABLE_COLUMNS + INDUCTOR_COLUMNS if c in df.columns]
    out = sort_results(df)[cols].copy()
    out["per_channel"] = out["per_channel"].map(lambda x: "" if x is None or pd.isna(x) else str(bool(x)))
    return out


SIG = 3  # significant digits in every table: tiny qFIDs are 1e-4..1e-1, paper FIDs 10..150


def fmt_value(x: Any) -> str:
    """``x`` to :data:`SIG` significant digits (no exponent above 1e-4), "–" when missing."""
    if x is None or (isinstance(x, float) and pd.isna(x)):
        return "–"
    return f"{x:.{SIG}g}" if x == 0 or abs(x) >= 1e-4 else f"{x:.{SIG - 1}e}"


def fmt_spread(row: Any, key: str) -> str:
    """``value ± bootstrap std`` of ``key`` in a results row (the std alone is omitted if absent)."""
    std = row.get(f"{key}_std") if hasattr(row, "get") else None
    if std is None or pd.isna(std) or pd.isna(row[key]):
        return fmt_value(row[key])
    return f"{fmt_value(row[key])} ± {fmt_value(std)}"


def table4(df: pd.DataFrame, cfg: Dict[str, Any]) -> str:
    """Markdown laid out like the paper's Table 4: one row per (method, per-channel, bits) of
    vanilla PTQ and QAT, one FID/qFID column pair per arch; headers name the feature space."""
    archs = [a for a in registry.archs() if a in set(df["arch"])] + sorted(set(df["arch"]) - set(registry.archs()))
    space = ", ".join(sorted(set(df["feature_space"])))
    head = ["Method", "Per-channel", "Bits"] + [f"{arch_title(a)} {m} [{space}] ({'↓'})" for a in archs for m in ("FID", "qFID")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fp = df[df["method"] == FP].set_index("arch")
    lines.append("| " + " | ".join([FP_TITLE, "–", "–"] + [c for a in archs for c in (fmt_spread(fp.loc[a], "fid"), fmt_value(fp.loc[a, "qfid"]))]) + " |")
    shown = registry.methods_in_table("table4")
    for v in variants(cfg):
        if v.method not in shown:
            continue
        sel = df[(df["method"] == v.method) & (df["per_channel"] == v.per_channel) & (df["w_bits"] == v.w_bits) & (df["a_bits"] == v.a_bits)].set_index("arch")
        cells = [method_title(v.method), "✓" if v.per_channel else "✗", f"w{v.w_bits}a{v.a_bits}"]
        cells += [c for a in archs for c in ((fmt_spread(sel.loc[a], "fid"), fmt_spread(sel.loc[a], "qfid")) if a in sel.index else ("–", "–"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table3(df: pd.DataFrame, arch: str) -> str:
    """Markdown laid out like the paper's Table 3 for one arch: post-training methods by row,
    FID/qFID at 8-bit and 4-bit weights (8-bit activations) by column."""
    sub = df[df["arch"] == arch]
    space = ", ".join(sorted(set(sub["feature_space"])))
    bits = sorted({int(b) for b in sub["w_bits"] if b != 32}, reverse=True)
    head = ["Method", "Per-channel"] + [f"w{b}a8 {m} [{space}] (↓)" for b in bits for m in ("FID", "qFID")]
    lines = [f"### {arch_title(arch)}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fp = sub[sub["method"] == FP].iloc[0]
    lines.append("| " + " | ".join([FP_TITLE, "–"] + [c for _ in bits for c in (fmt_spread(fp, "fid"), fmt_value(fp["qfid"]))]) + " |")
    for method in registry.methods_in_table("table3"):
        for pc in (True, False):
            rows = sub[(sub["method"] == method) & (sub["per_channel"] == pc) & (sub["a_bits"] == 8)]
            if rows.empty:
                continue
            by_bits = rows.set_index("w_bits")
            cells = [c for b in bits for c in ((fmt_spread(by_bits.loc[b], "fid"), fmt_spread(by_bits.loc[b], "qfid")) if b in by_bits.index else ("–", "–"))]
            lines.append("| " + " | ".join([method_title(method), "✓" if pc else "✗"] + cells) + " |")
    return "\n".join(lines) + "\n"


def spread_comparison(agg: pd.DataFrame) -> pd.DataFrame:
    """Per arch and weight width (quantized rows at a8, uniform widths) of :func:`across_seeds`' frame:
    how many variants, the median qFID, the median spread across seeds and the median bootstrap
    spread over samples, and the median of their ratio per variant (how much a bootstrap ± understates
    the run-to-run variation)."""
    q = uniform(agg)
    q = q[(q["method"] != FP) & (q["a_bits"] == 8)].assign(ratio=lambda d: d["qfid_std"] / d["qfid_boot_std"])
    rows = [{"arch": arch, "w_bits": int(w), "variants": len(g), "qfid": g["qfid"].median(), "seed_std": g["qfid_std"].median(),
             "boot_std": g["qfid_boot_std"].median(), "ratio": g["ratio"].replace([float("inf")], float("nan")).median()}
            for (arch, w), g in q.groupby(["arch", "w_bits"], sort=True)]
    return pd.DataFrame(rows, columns=["arch", "w_bits", "variants", "qfid", "seed_std", "boot_std", "ratio"])


def spread_comparison_md(agg: pd.DataFrame) -> str:
    """:func:`spread_comparison` as Markdown, for runs of two or more seeds ("" for one)."""
    if n_seeds(agg) < 2:
        return ""
    t = spread_comparison(agg)
    lines = [f"Spread across {n_seeds(agg)} seeds beside the bootstrap spread over samples (qFID, quantized variants at a8; "
             "medians over the variants of each arch and width; ratio: the median per variant of seed std / bootstrap std):", "",
             "| Arch | Weights | Variants | qFID | std across seeds | bootstrap std | ratio |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {arch_title(r['arch'])} | w{r['w_bits']} | {r['variants']} | {fmt_value(r['qfid'])} | {fmt_value(r['seed_std'])} | "
              f"{fmt_value(r['boot_std'])} | {fmt_value(r['ratio'])} |" for _, r in t.iterrows()]
    return "\n".join(lines) + "\n\n"


def n_seeds(df: pd.DataFrame) -> int:
    """How many seeds every row of ``df`` (from :func:`across_seeds`) averages (1 without the column)."""
    return int(df["n_seeds"].min()) if "n_seeds" in df.columns and len(df) else 1


def spread_label(df: pd.DataFrame) -> str:
    """What a spread of ``df`` is, for figure titles and headings."""
    n = n_seeds(df)
    return f"std across {n} seeds" if n > 1 else "bootstrap spread over samples, one seed"


def spread_note(cfg: Dict[str, Any], df: pd.DataFrame | None = None) -> str:
    """What ± means: with two or more seeds (``df`` from :func:`across_seeds`), the spread across
    them; with one, the bootstrap spread over samples, with each arch's number of generated images
    (``n_samples`` of its metrics: an image-to-image GAN's evaluation set is its test split, which
    may hold fewer), said plainly to cover sampling noise only."""
    n = n_seeds(df) if df is not None else 1
    if n > 1:
        seeds = ", ".join(sorted({s for s in df["seeds"]}))
        return (f"Each value is the mean over {n} seeds ({seeds}): every seed trains its own FP model, draws its own "
                "distillation set, calibration, QAT run and evaluation inputs. ± is the standard deviation across those seeds "
                f"(n = {n}), the spread that decides which method wins; the bootstrap spread over samples of each run "
                "is beside it in seeds.csv.\n\n")
    b = int(cfg["eval"].get("bootstrap", 0))
    if b < 2:
        return ("One seed and no bootstrap: the values carry no spread; a difference between two of them is not evidence "
                "(params seeds, eval.bootstrap).\n\n")
    counts = f"the {cfg['eval']['n_samples']} generated images"
    if df is not None and "n_samples" in df.columns:
        per_arch = df.dropna(subset=["n_samples"]).groupby("arch", sort=True)["n_samples"].max()
        counts = "the generated images (" + ", ".join(f"{arch_title(a)} {int(n)}" for a, n in per_arch.items()) + ")"
    return (f"± is the standard deviation over {b} bootstrap resamples of {counts} "
            "(FID: against the fixed real statistics; qFID: quantized and FP features resampled in pairs, same inputs): "
            "a spread across samples, not across training seeds. This run has one seed (params `seeds`), so ± covers "
            "sampling noise only, not the variation across training, calibration and QAT runs that decides which method "
            "wins: run several seeds (configs/seeds3.yaml) before calling one method better than another.\n\n")


def selection_note(df: pd.DataFrame) -> str:
    """Per trained method, how often early stopping kept the quantile-PTQ start (``selected_epoch``
    -1) and on what it chose: a QAT cell equal to its PTQ start is that, not training that matched it."""
    if "selected_epoch" not in df.columns:
        return ""
    rows = df[pd.to_numeric(df["selected_epoch"], errors="coerce").notna()]
    if rows.empty:
        return ""
    lines = ["Epoch kept by each trained method (-1: its quantile-PTQ start, kept because no epoch was better):"]
    for method, g in rows.groupby("method", sort=False):
        on = ", ".join(sorted({str(x) for x in g.get("selected_on", pd.Series(dtype=str)).dropna()})) or "?"
        epochs = pd.to_numeric(g["selected_epoch"]).astype(int)
        lines.append(f"- {method_title(method)}: the start in {int((epochs == -1).sum())} of {len(g)} cells; "
                     f"epochs kept {sorted(epochs.tolist())} ({on})")
    return "\n".join(lines) + "\n\n"


def quantile_note(df: pd.DataFrame) -> str:
    """Which quantile pair each arch's methods started from at each width, and where it came from
    (results.csv's ``quantiles``/``quantiles_from``)."""
    if "quantiles" not in df.columns:
        return ""
    rows = df[df["quantiles"].map(lambda q: isinstance(q, str) and q != "")]
    if rows.empty:
        return ""
    lines = ["Quantile pairs (a: activations, w: weights; upper/lower) and where each came from:"]
    for (arch, pair, source), g in rows.groupby(["arch", "quantiles", "quantiles_from"], sort=False):  # in report order
        widths = "/".join(f"w{b}" for b in sorted({int(b) for b in g["w_bits"]}, reverse=True))
        lines.append(f"- {arch_title(arch)} {widths}, {', '.join(method_title(m) for m in dict.fromkeys(g['method']))}: "
                     f"{pair} ({source})")
    return "\n".join(lines) + "\n\n"


def _key_text(df: pd.DataFrame) -> pd.Series:
    """Each row's variant key (KEY) as text: FP's empty granularity groups and merges like any value."""
    return df[KEY].apply(lambda r: "|".join(str(x) for x in r), axis=1)


def merge_floors(df: pd.DataFrame, floor_files: List[str]) -> pd.DataFrame:
    """``df`` with each arch's FLOOR_COLUMNS (rule noise_floor) on every row of the arch and seed."""
    if not floor_files:
        return df
    floors = pd.DataFrame([json.loads(Path(p).read_text()) for p in floor_files])[["arch", "seed"] + FLOOR_COLUMNS]
    return df.merge(floors, on=["arch", "seed"], how="left")


def across_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """One row per variant from its rows per seed (column ``seed``), what the tables, figures and
    findings show: every measured column is the mean over seeds; with two or more seeds ``fid_std``
    and ``qfid_std`` become the standard deviation across seeds (ddof 1), with one they stay the
    bootstrap spread over samples; ``fid_boot_std``/``qfid_boot_std`` keep the mean bootstrap spread,
    ``n_seeds`` and ``seeds`` say what was averaged, ``spread`` which std the row carries.  The
    first seed's row gives what is a choice, not a measurement (quantile pair, epoch kept)."""
    rows = []
    for _, g in df.assign(_k=_key_text(df)).groupby("_k", sort=False):
        g = g.sort_values("seed")
        row = g.iloc[0].copy()
        for c in g.columns:
            if c not in KEY + SEED_COLUMNS + _FIRST_SEED_COLUMNS and pd.api.types.is_numeric_dtype(g[c]):
                row[c] = g[c].mean()
        n = len(g)
        row["fid_boot_std"], row["qfid_boot_std"] = g["fid_std"].mean(), g["qfid_std"].mean()
        if n > 1:
            row["fid_std"], row["qfid_std"] = g["fid"].std(ddof=1), g["qfid"].std(ddof=1)
        row["n_seeds"], row["seeds"], row["spread"] = n, " ".join(str(int(s)) for s in g["seed"]), "seeds" if n > 1 else "bootstrap"
        rows.append(row)
    return sort_results(pd.DataFrame(rows).drop(columns=["_k", "seed"]))


def seeds_csv_frame(agg: pd.DataFrame) -> pd.DataFrame:
    """``reports/seeds.csv`` (SEEDS_COLUMNS) from :func:`across_seeds`: per variant, the mean FID and
    qFID, their spread across seeds (empty with one seed) beside the bootstrap spread over samples."""
    out = agg.copy()
    for m in ("fid", "qfid"):
        out[f"{m}_mean"] = out[m]
        out[f"{m}_seed_std"] = out[f"{m}_std"].where(out["n_seeds"] > 1)
    out["per_channel"] = out["per_channel"].map(lambda x: "" if x is None or pd.isna(x) else str(bool(x)))
    return out[SEEDS_COLUMNS]


def floor_note(floor_files: List[str]) -> str:
    """One line per arch: the noise floor of qFID and FID in the tables' feature space (the mean over
    seeds where there are several)."""
    if not floor_files:
        return ""
    every = [json.loads(Path(p).read_text()) for p in floor_files]
    floors = []
    for arch in sorted({f["arch"] for f in every}):
        mine = [f for f in every if f["arch"] == arch]
        floors.append({**mine[0], **{k: sum(f[k] for f in mine) / len(mine) for k in FLOOR_COLUMNS}})
        if len(mine) > 1:
            floors[-1]["qfid_floor_inputs"] += f"; mean of {len(mine)} seeds"
    lines = [f"Noise floor [{', '.join(sorted({f['feature_space'] for f in floors}))}]: a difference below it is not one. "
             "qFID floor: the FP generator against itself on other inputs; FID floor: real evaluation images against real "
             "training images."]
    lines += [f"- {arch_title(f['arch'])}: qFID floor {fmt_value(f['qfid_floor'])} ({f['qfid_floor_inputs']}); "
              f"FID floor {fmt_value(f['fid_floor'])} ({f['fid_floor_splits']})" for f in floors]
    return "\n".join(lines) + "\n\n"


def _int_share(r: Dict[str, Any]) -> str:
    return f"{r['profile_share'].get('int', 0.0):.2f}" if "profile_share" in r else ""


def _steps(n: int) -> str:
    return f"{n} step" + ("" if n == 1 else "s")


def merge_exports(df: pd.DataFrame, export_files: List[str]) -> pd.DataFrame:
    """``df`` with the EXPORT_COLUMNS of each variant's export summary (FP rows stay empty)."""
    if not export_files:
        return df
    ex = pd.DataFrame([summary_row(p) for p in export_files])
    for c in EXPORT_COLUMNS:
        if c not in ex.columns:
            ex[c] = float("nan")
    key = lambda d: _key_text(d) + "|" + d["seed"].astype(str)  # noqa: E731  variant and seed as text
    ex = ex.assign(_k=key(ex))[["_k"] + EXPORT_COLUMNS + [c for c in DEPLOYABLE_COLUMNS + INDUCTOR_COLUMNS if c in ex.columns]]
    return df.assign(_k=key(df)).merge(ex, on="_k", how="left").drop(columns="_k")


def export_tables(export_files: List[str]) -> str:
    """Markdown: per arch, each variant's size and latency ratios, output agreement with the
    fake-quant model per runtime; then the layers each runtime leaves in float, and where
    onnxruntime's time goes (per-op-type profile of one w8a8 variant at the largest batch)."""
    summaries = [json.loads(Path(p).read_text()) for p in export_files]
    out = ["Ratios are integer export / FP32 export of the same generator, same runtime, same process and thread count "
           "(median of interleaved runs after warm-up). *within step*: share of output pixels within one 8-bit level (2/255) "
           "of the fake-quant model; *qFID int*: qFID between the integer runtime's and the fake-quant model's outputs on the "
           "same inputs; *file max diff*: the file evaluated as written (no integer fusions; a compiled inductor-x86 package has no other "
           "reading than its run) against the fake-quant model; *int share*: the runtime's time in integer kernels at the largest batch "
           "(onnxruntime's profile; torch.profiler's for the torch.export program and the package); *compile s*: the seconds the job took to compile the package, apart from its latency. 4-bit weights are stored packed two per byte (ONNX INT4) but no runtime here has an int4 kernel: "
           "they are dequantized to float and run as float convolutions.\n"]
    for arch in sorted({s["arch"] for s in summaries}):
        rows = sorted((s for s in summaries if s["arch"] == arch), key=lambda s: (s["method"], not s["per_channel"], -s["w_bits"]))
        if not rows:
            continue
        bs = [str(b) for b in rows[0]["batch_sizes"]]
        out.append(f"\n## {arch_title(arch)}\n")
        head = ["variant", "runtime", "size ratio"] + [f"latency ratio b{b}" for b in bs] + [f"FP32 ms b{bs[-1]}", f"int ms b{bs[-1]}", "int share", "within step",
                                                                       "qFID int", "file max diff", f"compile s b{bs[-1]}"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in rows:
            for rt, r in s["runtimes"].items():
                cells = [s["variant"], rt, f"{r['size_ratio']:.3f}"] + [f"{r['latency_ratio'][b]:.2f}" for b in bs] + [
                    f"{r['fp_latency_ms'][bs[-1]]:.2f}", f"{r['latency_ms'][bs[-1]]:.2f}", _int_share(r), f"{r['within_step']:.3f}", f"{r['qfid_vs_fakequant']:.4f}",
                    f"{r['file_max_abs_diff']:.1e}",
                    f"{r['compile_seconds'][bs[-1]]:.1f}" if "compile_seconds" in r else ""]
                out.append("| " + " | ".join(cells) + " |")
        dep = [s for s in rows if s.get("schemes", {}).get("deployable")]
        if dep:
            out.append("\n### Deployable scheme\n")
            out.append("Conv outputs the paper scheme leaves in float requantized (8-bit min-max on the distillation set) and 8-bit "
                       "weights narrowed; *qFID vs paper*: qFID between its fake-quant outputs and the paper model's on the check "
                       "inputs (its quality cost).\n")
            head = ["variant", "runtime", "weight bits", "requantized convs", "size ratio"] + [f"latency ratio b{b}" for b in bs] + [
                "int share", "within step", "qFID int", "file max diff", "qFID vs paper"]
            out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for s in dep:
                d = s["schemes"]["deployable"]
                for rt in (k for k in EXTENSIONS if k in d):
                    r = d[rt]
                    cells = [s["variant"], rt, f"<= {d['weight_bits']}", str(len(d["requantized_convs"])), f"{r['size_ratio']:.3f}"] + [
                        f"{r['latency_ratio'][b]:.2f}" for b in bs] + [_int_share(r), f"{r['within_step']:.3f}", f"{r['qfid_vs_fakequant']:.4f}",
                                                                       f"{r['file_max_abs_diff']:.1e}", fmt_value(d["qfid_vs_paper"])]
                    out.append("| " + " | ".join(cells) + " |")
        rep = next((s for s in rows if s["w_bits"] == 8), rows[0])
        out.append(f"\n### Layers left in float ({rep['variant']})\n")
        for rt, r in rep["runtimes"].items():
            fb = r.get("float_fallbacks", {})
            ints = r.get("int_kernels")
            out.append(f"- **{rt}**" + (f" (integer kernels: {', '.join(f'{k} x{n}' for k, n in ints.items())})" if ints else "") + ":")
            out += [f"  - `{op}`: {', '.join(f'`{l}`' for l in layers)}" for op, layers in fb.items()] or ["  - none"]
        profiled = [("", rep["runtimes"].get("onnxruntime", {}))]
        if rep.get("schemes", {}).get("deployable"):
            profiled.append((", deployable scheme", rep["schemes"]["deployable"]["onnxruntime"]))
        for label, res in profiled:
            prof = res.get("profile")
            if not prof:
                continue
            out.append(f"\n### onnxruntime profile ({rep['variant']}{label}, batch {bs[-1]}): "
                       + ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(res["profile_share"].items(), key=lambda kv: -kv[1])) + "\n")
            out += ["| op | kind | ms per call | share |", "|---|---|---|---|"]
            out += [f"| {r['op']} | {r['kind']} | {r['ms']:.3f} | {100 * r['share']:.1f}% |" for r in prof[:10]]
            req = res.get("requantization")
            if req:
                out.append(f"\nIts integer kernels against the file run op by op, on {bs[-1]} check inputs: {req['differing']} of "
                           f"{req['tensors']} quantized activations differ" + ("." if not req["first"] else
                           f"; the first, `{req['first']['tensor']}`, in {100 * req['first']['share']:.2f}% of values by at most "
                           f"{_steps(req['first']['max_steps'])} (that kernel's rounding); the layers after carry it, up to "
                           f"{_steps(req['worst']['max_steps'])} at `{req['worst']['tensor']}`."))
    return "\n".join(out) + "\n"


def results_from_mlflow(profile: str) -> pd.DataFrame:
    """The newest evaluation run of every (arch, variant, seed), as the rows of ``results.csv``."""
    import mlflow  # MLflow is heavy: imported when runs are read, not with the report module

    mlflow.set_tracking_uri(tracking.tracking_uri())
    df = mlflow.search_runs(experiment_names=[tracking.experiment_name(profile)], filter_string="tags.stage = 'evaluate'",
                            order_by=["attributes.start_time DESC"])
    if df.empty:
        return pd.DataFrame()
    df = df.drop_duplicates(subset=["tags.arch", "tags.variant", "tags.seed"], keep="first")
    out = pd.DataFrame({
        "arch": df["tags.arch"], "variant": df["tags.variant"], "method": df["tags.method"],
        "per_channel": df["tags.per_channel"].map(lambda s: None if s == "None" else s == "True"),
        "w_bits": df["tags.w_bits"].astype(int), "a_bits": df["tags.a_bits"].astype(int),
        "fid": df["metrics.fid"], "qfid": df["metrics.qfid"], "feature_space": df["tags.feature_space"],
        "fid_std": df.get("metrics.fid_std"), "qfid_std": df.get("metrics.qfid_std"), "seed": df["tags.seed"].astype(int),
    })
    return sort_results(out)
