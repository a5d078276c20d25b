"""The workflow, run for real: the whole DAG on the micro config in a temporary directory."""
import collections
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from micro import PARAM_READS, SNAKEMAKE
from slurm_plugins import plugin_env
from workflow_src import config as qcfg
from workflow_src.deploy import pt2
from workflow_src.deploy import runtime as rt
from workflow_src.reporting import tables
from workflow_src.workflow import export
from workflow_src.workflow.export import EXTENSIONS
from workflow_src.workflow import stages
from workflow_src.workflow.dvc_yaml import snakemake_jobs
from workflow_src.workflow.stages import STAGES, param_keys

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.workflow
def test_every_artifact_and_finite_metrics(micro_run):
    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    archs, variants = cfg["matrix"]["archs"], [v.name for v in qcfg.variants(cfg)]
    for arch in archs:
        for p in [f"models/s0/fp/{arch}.pt", f"distill/s0/{arch}.pt", f"eval/s0/{arch}/inputs.pt", f"eval/s0/{arch}/fp_stats.npz", f"metrics/s0/{arch}/fp.json"]:
            assert (micro_run / p).stat().st_size > 0, p
        for v in variants:
            for p in [f"models/s0/q/{arch}/{v}.pt", f"metrics/s0/{arch}/{v}.json", f"samples/s0/{arch}/{v}.png"]:
                assert (micro_run / p).stat().st_size > 0, p
    df = pd.read_csv(micro_run / "reports" / "results.csv")
    # the contract's columns first and unchanged, then the integer-export columns (issue 9), then where each
    # quantile pair came from, the arch's noise floor and QAT's kept epoch (issue 14), the generator's size (issue 20)
    assert list(df.columns) == ["arch", "method", "per_channel", "w_bits", "a_bits", "fid", "qfid", "feature_space", "fid_std", "qfid_std",
                                "runtime", "size_ratio", "latency_ratio", "latency_ratio_b1", "export_within_step", "export_qfid",
                                "onnxruntime_latency_ratio", "onnxruntime_size_ratio", "pt2e_latency_ratio", "pt2e_size_ratio",
                                "quantiles", "quantiles_from", "qfid_floor", "fid_floor", "selected_epoch", "selected_on", "distill_loss",
                                "avg_w_bits", "size_bytes", "seed",  # the replicate (issue 21): one row per variant and seed
                                # the deployable integer scheme (issue 22): onnxruntime's ratios, its exactness, its qFID cost
                                "deployable_latency_ratio", "deployable_size_ratio", "deployable_within_step", "deployable_qfid_vs_paper"]
    assert (df["seed"] == cfg["seeds"][0]).all()
    seeds = pd.read_csv(micro_run / "reports" / "seeds.csv")  # one seed: its values, no spread across seeds
    assert len(seeds) == len(df) and (seeds["n_seeds"] == 1).all() and seeds["qfid_seed_std"].isna().all()
    assert (seeds["qfid_mean"].to_numpy() == df["qfid"].to_numpy()).all() and (seeds["qfid_boot_std"].to_numpy() == df["qfid_std"].to_numpy()).all()
    readers = df["method"].isin(["ptq-quantile", "ar-brecq", "ste-brecq", "ma-qat", "lsq-qat"])
    mixed = df["method"] == "mp-quantile"
    assert (df[readers]["quantiles_from"].str.split(" ").str[1] == "w" + df[readers]["w_bits"].astype(str)).all()  # each width's own pair
    assert df[~readers & ~mixed]["quantiles"].isna().all()
    assert df[mixed]["quantiles_from"].str.startswith("sweep w8/w4 (").all()  # each width's pair (mixed.widths [4, 8])
    # sizes: FP at 32 bits; every uniform variant at its width; mixed precision within its budget and between w4 and w8 in bytes
    uni = df[~mixed & (df["method"] != "fp")]
    assert (df[df["method"] == "fp"]["avg_w_bits"] == 32).all() and (uni["avg_w_bits"] == uni["w_bits"]).all()
    assert (df[mixed]["avg_w_bits"] <= df[mixed]["w_bits"]).all() and (df[mixed]["avg_w_bits"] > 4).all()
    by = df.set_index(["arch", "method", "w_bits"])["size_bytes"]
    for arch in archs:
        assert by[arch, "ptq-minmax", 4] < by[arch, "mp-quantile", 6] < by[arch, "ptq-minmax", 8] < by[arch, "fp", 32]
    front = pd.read_csv(micro_run / "reports" / "front.csv")
    assert len(front) == len(df) and set(front["arch"]) == set(archs) and (micro_run / "reports" / "fig_front.png").stat().st_size > 0
    assert front[front["method"] == "fp"]["pareto"].all()  # qFID 0: nothing beats it, at any size
    for arch, g in front.groupby("arch"):  # on the front: each point smaller and worse than the previous one
        p = g[g["pareto"]].sort_values("size_bytes")
        assert p["qfid"].is_monotonic_decreasing and len(p) >= 2
    assert (df["qfid_floor"] > 0).all() and (df["fid_floor"] > 0).all()
    qat = df["method"].isin(["ma-qat", "lsq-qat"])
    assert df[qat]["selected_epoch"].between(-1, cfg["qat"]["epochs"] - 1).all() and df[~qat]["selected_epoch"].isna().all()
    # micro CycleGAN selects on the validation qFID (the tiny profile's way), the other archs keep the last epoch (the paper's)
    assert set(df[qat]["arch"] + ":" + df[qat]["selected_on"]) == {"cyclegan:validation qfid", "stylegan:last epoch", "sagan:last epoch"}
    assert df[~qat]["selected_on"].isna().all() and df[~qat]["distill_loss"].isna().all()
    assert set(df[qat]["arch"] + ":" + df[qat]["distill_loss"]) == {"cyclegan:mse", "stylegan:perceptual", "sagan:perceptual"}
    assert "Epoch kept by each trained method" in (micro_run / "reports" / "table4.md").read_text()
    info = json.loads((micro_run / "models" / "s0" / "q" / "cyclegan" / "ma-qat-tensor-w4a8.json").read_text())
    records = info["validation"]  # the start and every epoch, scored on held-out images
    assert [r["epoch"] for r in records] == list(range(-1, cfg["qat"]["epochs"])) and info["select_on"] == "qfid"
    k, kept = cfg["qat"]["select_spreads"], records[0]  # the documented rule: an epoch replaces the kept model
    for r in records[1:]:                               # only if lower by more than k combined spreads
        if r["qfid"] + k * math.hypot(r["qfid_std"], kept["qfid_std"]) < kept["qfid"]:
            kept = r
    assert info["selected_epoch"] == kept["epoch"], records
    assert "Noise floor" in (micro_run / "reports" / "table4.md").read_text()
    paper = (micro_run / "reports" / "paper_comparison.md").read_text()
    assert "## The paper's findings on this run" in paper and "Spearman" in paper and "Δ" not in paper
    assert (df["fid_std"] > 0).all() and (df[df["method"] != "fp"]["qfid_std"] > 0).all()
    assert len(df) == len(archs) * (1 + len(variants))
    assert df[["fid", "qfid"]].map(math.isfinite).all().all()
    assert set(df["method"]) == {"fp"} | set(cfg["matrix"]["methods"])
    assert df["feature_space"].str.startswith("tinycnn").all()
    table = (micro_run / "reports" / "table4.md").read_text()
    assert "StyleGAN FID" in table and "| w4a8 |" in table and "tinycnn" in table and " ± " in table and "bootstrap" in table
    html = (micro_run / "reports" / "index.html").read_text()
    sweep = pd.read_csv(micro_run / "reports" / "quantile_sweep.csv")
    assert set(sweep["arch"]) == set(archs) and sweep["qfid"].map(math.isfinite).all()
    assert (micro_run / "reports" / "fig1_quantile_sweep.png").stat().st_size > 0
    # the layer sensitivity: micro's first units of every arch (sensitivity.max_units), then every quantizer on
    sens = pd.read_csv(micro_run / "reports" / "sensitivity.csv")
    assert set(sens["arch"]) == set(archs) and sens["qfid"].map(math.isfinite).all() and (sens["qfid_std"] >= 0).all()
    assert (sens.groupby("arch").size() == cfg["sensitivity"]["max_units"] + 1).all()
    assert (sens.groupby("arch")["operand"].last() == "all").all() and (sens["samples"] <= cfg["sensitivity"]["samples"]).all()
    assert (micro_run / "reports" / "fig_sensitivity.png").stat().st_size > 0
    # integer exports of every exported variant: both runtimes, ratios measured, outputs close to the fake-quant model
    exported = df[(df["w_bits"].isin(cfg["export"]["w_bits"]) | mixed) & (df["a_bits"] == 8) & (df["method"] != "fp")]  # a6: not exported
    assert len(exported) == len(archs) * len(stages.exported_variants(cfg)) and mixed.sum() == len(archs)
    assert exported[["size_ratio", "latency_ratio", "latency_ratio_b1"]].map(lambda x: 0 < x < math.inf).all().all()
    assert exported["runtime"].str.match(r"^(onnxruntime|pt2e-x86|inductor-x86)").all()
    assert (exported["onnxruntime_size_ratio"] < 0.5).all()  # int8 weights; the torch.export graph JSON can outweigh micro weights
    # each file evaluated as written: the torch.export program is the fake-quant arithmetic exactly (integer weights rounded
    # like PyTorch's kernels, ties included); the ONNX file run op by op moves an activation one step where it sits on a
    # rounding tie (ONNX's QuantizeLinear divides by the scale where PyTorch multiplies by 1/s, and onnxruntime's float
    # kernels round differently), which StyleGAN's instance norms amplify: measured 0.97-1.0 of pixels within a step
    files = [(rt_, r) for p in (micro_run / "metrics").rglob("*.export.json") for rt_, r in json.loads(p.read_text())["runtimes"].items()]
    assert len(files) == len(cfg["export"]["runtimes"]) * len(exported)
    assert all(r["file_max_abs_diff"] <= 1e-4 for rt_, r in files if rt_ == "pt2e-x86"), [r["file_max_abs_diff"] for _, r in files]
    # torch.profiler's view of the lowered programs: their oneDNN int8 kernels (onnxruntime's paper-scheme CycleGAN has none:
    # every conv feeds an instance norm)
    assert all(r["profile_share"].get("int", 0) > 0 for rt_, r in files if rt_ == "pt2e-x86"), [r["profile_share"] for _, r in files]
    assert all(r["file_within_step"] >= 0.95 for rt_, r in files if rt_ == "onnxruntime"), [r["file_within_step"] for _, r in files]
    # onnxruntime's integer kernels against the file op by op (issue 22 item 4): the first quantized activation that
    # differs, all before it equal, is one kernel's requantization rounding: at most one step (a kernel that saturates
    # or mis-scales moves it further); the norms after it amplify (measured on micro: up to 26 steps, CycleGAN deployable)
    ort_records = [r for rt_, r in files if rt_ == "onnxruntime"] + [json.loads(p.read_text())["schemes"]["deployable"]["onnxruntime"]
                                                                     for p in (micro_run / "metrics").rglob("*.export.json")]
    firsts = [r["requantization"]["first"] for r in ort_records]
    assert all(f is None or f["max_steps"] == 1 for f in firsts), firsts
    assert any(f is not None for f in firsts)  # the comparison sees the kernels' rounding (micro: CycleGAN's and StyleGAN's files)
    assert df[df["method"] == "fp"]["runtime"].isna().all()
    for arch in archs:
        summary = json.loads((micro_run / "metrics" / "s0" / arch / "ptq-minmax-tensor-w8a8.export.json").read_text())
        assert set(summary["runtimes"]) == set(cfg["export"]["runtimes"])
        assert summary["runtimes"]["onnxruntime"]["session"]["intra_op_num_threads"] == summary["threads"]  # the settings it ran with
        want = {f"b{b}.{EXTENSIONS[r]}" for b in cfg["export"]["batch_sizes"] for r in cfg["export"]["runtimes"]}
        for d in (micro_run / "exports" / "s0" / arch / "fp", micro_run / "exports" / "s0" / arch / summary["variant"]):
            assert {p.name for p in d.glob("b*")} == want and all((d / n).stat().st_size > 0 for n in want), d
        # mixed precision: its 4-bit layers packed as INT4, the others INT8 (micro: widths 4 and 8)
        mp = json.loads((micro_run / "metrics" / "s0" / arch / "mp-quantile-tensor-w6a8.export.json").read_text())
        assert mp["weight_storage"].startswith("int4 packed (2 per byte) for the 4-bit layers, int8 for the 8-bit layers")
    # the deployable scheme (export.schemes): every exported variant, onnxruntime, beside the paper scheme's files
    assert exported[["deployable_latency_ratio", "deployable_size_ratio"]].map(lambda x: 0 < x < math.inf).all().all()
    assert (exported["deployable_qfid_vs_paper"] >= 0).all() and (exported["deployable_qfid_vs_paper"] < math.inf).all()
    deployable = [json.loads(p.read_text())["schemes"]["deployable"] for p in (micro_run / "metrics").rglob("*.export.json")]
    assert len(deployable) == len(exported) and all(d["weight_bits"] == cfg["export"]["deployable_weight_bits"] for d in deployable)
    assert all(d["calibration_images"] == min(cfg["calibration"]["images"], cfg["distill"]["size"]) for d in deployable)
    assert all(d["onnxruntime"]["file_within_step"] >= 0.95 for d in deployable), [d["onnxruntime"]["file_within_step"] for d in deployable]
    for arch in archs:
        d = json.loads((micro_run / "metrics" / "s0" / arch / "ptq-minmax-tensor-w8a8.export.json").read_text())["schemes"]["deployable"]
        assert d["requantized_convs"], arch  # every generator has a conv whose output the paper scheme leaves in float
        assert d["onnxruntime"]["profile_share"].get("int", 0) > 0 and "Conv" not in d["onnxruntime"]["float_fallbacks"], d["onnxruntime"]["float_fallbacks"]
        files = micro_run / "exports" / "s0" / arch / "ptq-minmax-tensor-w8a8" / "deployable"
        assert {p.name for p in files.glob("b*")} == {f"b{b}.onnx" for b in cfg["export"]["batch_sizes"]}
    export_md = (micro_run / "reports" / "export.md").read_text()
    assert "Layers left in float" in export_md and "InstanceNormalization" in export_md and "onednn.qconv_pointwise" in export_md
    assert "### Deployable scheme" in export_md and "deployable scheme, batch" in export_md and "| onnxruntime | <= 7 |" in export_md
    assert "quantized activations differ; the first" in export_md  # where the integer kernels depart from the file
    # where the time goes: every job's benchmark file and the start-up its log records (issue 18)
    timing = (micro_run / "reports" / "timing.md").read_text()
    assert all(f"| {rule} |" in timing for rule in ("train_fp", "distill", "quantize", "qat", "evaluate", "export")), timing
    assert re.search(r"\| train_fp \| 3 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9]+ \| [0-9]+% \|", timing), timing
    assert "Where the time goes" in html
    # no temporary files left behind
    assert not list(micro_run.rglob("*.tmp"))


@pytest.mark.workflow
def test_the_inductor_runtime_compiles_each_package_once_and_records_its_seconds_apart(micro_run, tmp_path, monkeypatch):
    """Issue 22 item 2: rule export's functions with the paper profile's inductor-x86 runtime beside pt2e-x86, on
    one micro variant at one batch size (micro's export.runtimes leave it out: 18 packages at 7-35 s of compile
    each).  Each package is compiled once, by the job that writes it, its seconds recorded apart from latency;
    it runs oneDNN's int8 kernels, and its numbers reach results.csv's columns and export.md."""
    monkeypatch.setenv("QGAN_TRACKING", "off")
    monkeypatch.chdir(tmp_path)
    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    cfg["export"].update(runtimes=["onnxruntime", "pt2e-x86", "inductor-x86"], batch_sizes=[8], deployable_runtimes=["onnxruntime", "inductor-x86"])
    arch, variant = "sagan", "ptq-minmax-tensor-w8a8"
    inputs = str(micro_run / f"eval/s0/{arch}/inputs.pt")
    export.export_fp(cfg, arch=arch, model=str(micro_run / f"models/s0/fp/{arch}.pt"), inputs=inputs, out="fp")
    export.export_variant(cfg, arch=arch, variant=variant, model=str(micro_run / f"models/s0/q/{arch}/{variant}.pt"), fp="fp", inputs=inputs,
                          features=str(micro_run / stages.feature_network(cfg)), distill=str(micro_run / f"distill/s0/{arch}.pt"),
                          files="q", summary="q.export.json")
    for d in ("fp", "q"):  # the program, and the package compiled from it; no scratch folder left behind
        assert sorted(p.name for p in (tmp_path / d).iterdir() if p.is_file()) == ["b8.aoti.pt2", "b8.onnx", "b8.pt2"], d
    assert sorted(p.name for p in (tmp_path / "q" / "deployable").iterdir()) == ["b8.aoti.pt2", "b8.onnx"]  # its program: a scratch copy
    s = json.loads((tmp_path / "q.export.json").read_text())
    r = s["runtimes"]["inductor-x86"]
    assert r["compile_seconds"] == {"8": s["written"]["inductor-x86/b8"]["compile_seconds"]} and r["compile_seconds"]["8"] > 0
    lowered = s["runtimes"]["pt2e-x86"]["int_kernels"]  # the convs and the linear of micro SAGAN, as the program lowers them
    assert r["int_kernels"] == {"qconv_unary": lowered["onednn.qconv_pointwise.default"], "qlinear_unary": lowered["onednn.qlinear_pointwise.default"]}
    assert r["runtime"] == f"inductor-x86-torch{torch.__version__.split('+')[0]}" and r["cpu_capability"] == pt2.cpu_capability()
    assert r["profile_share"]["int"] > 0 and {x["kind"] for x in r["profile"]} >= {"int", "generated"}  # its kernels, profiled
    if rt.cpu_has_vnni():  # exact but for requantization rounding (without VNNI, u8s8 pairs saturate: tests/test_export.py)
        assert r["within_step"] >= 0.95, r["within_step"]
    row = export.summary_row(tmp_path / "q.export.json")
    assert row["inductor_compile_seconds"] == r["compile_seconds"]["8"] and row["inductor_latency_ratio"] == r["latency_ratio"]["8"] > 0
    # the deployable scheme compiled too (export.deployable_runtimes): its own package, timed against the same FP32 one
    d = s["schemes"]["deployable"]["inductor-x86"]
    assert d["compile_seconds"]["8"] > 0 and d["int_kernels"]["qconv_unary"] == r["int_kernels"]["qconv_unary"]
    assert row["deployable_inductor_latency_ratio"] == d["latency_ratio"]["8"] and row["deployable_inductor_within_step"] == d["within_step"]
    page = tables.export_tables([str(tmp_path / "q.export.json")])
    assert f"| {variant} | inductor-x86 |" in page and f"{r['compile_seconds']['8']:.1f} |" in page
    assert f"| {variant} | inductor-x86 | <= {cfg['export']['deployable_weight_bits']} |" in page


@pytest.mark.workflow
def test_the_results_page_stands_alone_with_findings_tables_plots_and_provenance(micro_run):
    """reports/index.html read as a browser would: every image decodes from the page itself, every
    link resolves (a file beside the page, an anchor on it, or the MLflow experiment's runs), and it
    holds the findings, the tables as tables, the plots and the provenance."""
    import base64
    import io
    from html.parser import HTMLParser

    from PIL import Image

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.imgs, self.links, self.ids, self.cells, self.headings, self.pre, self._cell = [], [], set(), [], [], 0, None

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            self.ids |= {a["id"]} if "id" in a else set()
            if tag == "img":
                self.imgs.append(a)
            elif tag == "a" and "href" in a:
                self.links.append(a["href"])
            elif tag in ("td", "th", "h2", "h3"):
                self._cell = (tag, [])
            self.pre += tag == "pre"

        def handle_data(self, data):
            if self._cell:
                self._cell[1].append(data)

        def handle_endtag(self, tag):
            if self._cell and tag == self._cell[0]:
                (self.headings if tag in ("h2", "h3") else self.cells).append("".join(self._cell[1]).strip())
                self._cell = None

    page = Page()
    page.feed((micro_run / "reports" / "index.html").read_text())
    assert len(page.imgs) >= 2 + 2 * 3  # qFID plot, Figure 1, each arch's sample figure and overview
    for img in page.imgs:
        assert img["src"].startswith("data:image/png;base64,") and img.get("alt"), img.get("alt")
        Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))).verify()
    for href in page.links:
        if href.startswith("#"):
            assert href[1:] in page.ids, href
        elif href.startswith("http"):
            assert re.fullmatch(r"http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?workflowType=machine_learning", href), href
        else:
            assert (micro_run / "reports" / href).resolve().is_file(), href
    linked = {Path(h).name for h in page.links}
    assert {"results.csv", "table3.md", "table4.md", "export.md", "paper_comparison.md", "fig1_quantile_sweep.png",
            "quantile_sweep.csv", "fig_sensitivity.png", "sensitivity.csv"} <= linked and any(h.startswith("http") for h in page.links)
    assert page.pre == 0  # tables as tables, not Markdown in <pre>
    assert {"Findings", "Plots", "Tables 3 and 4", "Integer exports", "All results", "Provenance and files"} <= set(page.headings)
    assert not {"nan", "NaN", "None", "True", "False"} & set(page.cells)
    text = " ".join(page.cells)
    for arch in ("StyleGAN", "SAGAN", "CycleGAN"):
        assert f"{arch} | w8a8" in " | ".join(page.cells) and f"{arch} | w4a8" in " | ".join(page.cells)
    assert "quantile ranges beat min-max ranges" in text and "ratio" in (micro_run / "reports" / "index.html").read_text()
    html = (micro_run / "reports" / "index.html").read_text()
    assert re.search(r"<dt>Resolved params \(sha256\)</dt><dd>[0-9a-f]{64}", html) and "<dt>Commit</dt>" in html
    assert "snakemake 9." in html and "torch 2." in html and "Evaluated on</dt><dd>cpu" in html


@pytest.mark.workflow
def test_fewer_weight_bits_cost_more_qfid(micro_run):
    df = pd.read_csv(micro_run / "reports" / "results.csv")
    sel = df[(df["method"] == "ptq-minmax") & (df["per_channel"] == False)]  # noqa: E712
    for arch, g in sel.groupby("arch"):
        q = g.set_index("w_bits")["qfid"]
        assert q[4] > q[8], f"{arch}: qFID w4 {q[4]} <= w8 {q[8]}"


@pytest.mark.workflow
def test_second_run_is_a_no_op(micro_run):
    proc = subprocess.run(SNAKEMAKE + ["-d", str(micro_run), "--cores", "1", "-n", "report", "--configfile", str(ROOT / "configs" / "micro.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


def _under(key: str, section: str) -> bool:
    return key == section or key.startswith(section + ".")


def _declared_once_set(cfg, record, key: str) -> bool:
    """A key the params leave unset that the job looked up (matrix.exclude, brecq.quantiles) has no
    value to declare; it must be declared once the params set it (to a value or a section)."""
    *parents, leaf = key.split(".")
    cur = cfg = json.loads(json.dumps(cfg))
    for p in parents:
        if not isinstance(cur.get(p), dict):
            return False
        cur = cur[p]
    if leaf in cur:
        return False
    for value in (None, {}):
        cur[leaf] = value
        if any(_under(key, d) for d in param_keys(cfg, record["rule"], record["wildcards"])):
            return True
    return False


@pytest.mark.workflow
def test_each_job_reads_exactly_the_params_keys_its_rule_declares(micro_run):
    """Each job of the micro run recorded the params keys its stage read (the CLI hands it a params
    mapping that records them, config/trace.py).  Every key read is one its rule declares, so its change
    reruns the job (Snakemake's params trigger, DVC's params:); every declared key is read, so no other
    change reruns it; every key of the params is read by some job, except what the Snakefile alone reads
    (which jobs exist: matrix.archs, seeds; what they ask a cluster for: resources) and `runtime` (how a job
    runs, never what it computes: read by many, declared by none)."""
    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    records = [json.loads(p.read_text()) for p in sorted((micro_run / PARAM_READS).rglob("*.json"))]
    assert {r["rule"] for r in records} == {"prepare_data", "train_features", "real_stats", "train_fp", "distill", "eval_inputs", "quantize",
                                            "qat", "train_perceptual", "evaluate_fp", "evaluate", "noise_floor", "quantile_sweep", "fig1",
                                            "sensitivity", "fig_sensitivity",
                                            "export_fp", "export", "sample_figure", "report"}
    assert len(records) == len(list((micro_run / "logs").rglob("*.log"))), "a job without its record of reads"
    undeclared, unread = [], []
    for r in records:
        declared = param_keys(cfg, r["rule"], r["wildcards"])
        assert not [d for d in declared if _under(d, "runtime")], (r["rule"], declared)
        job = f"{r['rule']} {r['wildcards']}"
        undeclared += [f"{job}: {k}" for k in r["reads"] if not _under(k, "runtime") and not any(_under(k, d) for d in declared)
                       and not _declared_once_set(cfg, r, k)]
        unread += [f"{job}: {d}" for d in declared if not any(_under(k, d) or _under(d, k) for k in r["reads"])]
    assert not undeclared, "read but not declared (a change would not rerun the job):\n" + "\n".join(undeclared)
    assert not unread, "declared but never read (a change would rerun the job for nothing):\n" + "\n".join(unread)

    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    read = {k for r in records for k in r["reads"]}
    never = [k for k in leaves(cfg) if not any(_under(k, x) or _under(x, k) for x in read)
             and not any(_under(k, s) for s in ("matrix.archs", "seeds", "resources", "runtime"))]
    assert not never, f"params keys no job reads: {never}"


# One key of each kind (a top-level value, a section's, an arch's, a method's, a network's, an
# export's), with a valid other value: Snakemake's own params check must name exactly the jobs that read it.
CHANGED_KEYS = {"seed": 1, "calibration.momentum": 0.9, "brecq.ar_steps": 61, "archs.sagan.qat.lr_weights": 2.0e-5,
                "features.tinycnn.steps": 81, "export.repeats": 4}


@pytest.fixture(scope="module")
def micro_dag():
    """Every job of the micro run's DAG, with its inputs and outputs (a dry run in an empty directory)."""
    return snakemake_jobs(ROOT, [str(ROOT / "configs" / "micro.yaml")])


@pytest.mark.workflow
@pytest.mark.parametrize("key", sorted(CHANGED_KEYS))
def test_changing_one_key_reruns_exactly_the_jobs_that_read_it_and_what_follows(micro_run, micro_dag, tmp_path, key):
    """With one key changed, Snakemake plans the jobs whose record says they read it (the records of
    test_each_job_reads_exactly_the_params_keys_its_rule_declares) and the jobs downstream of them: no other."""
    override: dict = {}
    cur = override
    *parents, leaf = key.split(".")
    for p in parents:
        cur = cur.setdefault(p, {})
    cur[leaf] = CHANGED_KEYS[key]
    (tmp_path / "one.yaml").write_text(json.dumps(override))
    planned = {j["name"] for j in snakemake_jobs(ROOT, [str(ROOT / "configs" / "micro.yaml"), str(tmp_path / "one.yaml")], workdir=micro_run)}
    records = [json.loads(p.read_text()) for p in sorted((micro_run / PARAM_READS).rglob("*.json"))]
    readers = {".".join((r["rule"], *(("s" if w == "seed" else "") + r["wildcards"][w] for w in STAGES[r["rule"]].wildcards)))
               for r in records if any(_under(key, k) or _under(k, key) for k in r["reads"])}
    assert readers, key
    expected, grew = set(readers), True
    while grew:  # and every job that takes an output of one of them
        made = {o for j in micro_dag if j["name"] in expected for o in j["outputs"]}
        more = {j["name"] for j in micro_dag if set(j["inputs"]) & made} - expected
        expected, grew = expected | more, bool(more)
    assert planned == expected, f"{key}: planned but not expected {sorted(planned - expected)}; expected but not planned {sorted(expected - planned)}"


@pytest.mark.workflow
def test_changing_the_sample_grid_reruns_the_evaluations_and_what_reads_them(micro_run, tmp_path):
    """eval.grid (how many images a sample row shows) is read by the evaluations alone; before, the
    quantile sweep declared the whole `eval` section, and every quantize and QAT job followed it."""
    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"eval: {{grid: {cfg['eval']['grid'] // 2}}}\n")
    proc = subprocess.run(SNAKEMAKE + ["-d", str(micro_run), "--cores", "1", "-n", "report", "--configfile", str(ROOT / "configs" / "micro.yaml"), str(grid)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = collections.Counter(re.findall(r"^(?:local)?rule (\w+):$", proc.stdout, re.M))
    archs = cfg["matrix"]["archs"]
    assert planned["evaluate"] == len(archs) * len(qcfg.variants(cfg)) and planned["evaluate_fp"] == len(archs)
    # downstream of the FP statistics and the metrics: the noise floor, the sample figures, the report
    assert set(planned) == {"evaluate", "evaluate_fp", "noise_floor", "sample_figure", "report"}, planned


@pytest.mark.workflow
def test_changing_the_bootstrap_count_reruns_qat_only_where_it_selects_on_the_validation_qfid(micro_run, tmp_path):
    """eval.bootstrap sets the spread that a QAT epoch must beat on the validation qFID (micro CycleGAN
    selects so, the other archs keep the last epoch): CycleGAN's QAT jobs rerun, no other arch's."""
    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    other = tmp_path / "bootstrap.yaml"
    other.write_text(f"eval: {{bootstrap: {cfg['eval']['bootstrap'] + 1}}}\n")
    proc = subprocess.run(SNAKEMAKE + ["-d", str(micro_run), "--cores", "1", "-n", "-p", "report", "--configfile", str(ROOT / "configs" / "micro.yaml"), str(other)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    qat = re.findall(r"workflow_src --threads \S+ qat --seed \d+ --arch (\w+)", proc.stdout)
    assert qat and set(qat) == {"cyclegan"}, qat
    # the layer sensitivity's spreads are bootstrap too: its tables change, and mixed precision, which allocates from them, reruns
    quantized = re.findall(r"workflow_src --threads \S+ quantize --seed \d+ --arch \w+ --variant (\S+)", proc.stdout)
    assert quantized and all(v.startswith("mp-quantile-") for v in quantized), quantized
    assert not re.search(r"^(?:local)?rule (quantile_sweep|train_fp|distill):$", proc.stdout, re.M)


def _with_published_checkpoint(wd, checkpoint):
    """The paper profile imports StyleGAN from rosinality's checkpoint (configs/paper.yaml); put a
    fabricated one in the published layout where it expects it."""
    from rosinality_layout import PAPER_CHECKPOINT

    (wd / PAPER_CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(checkpoint, wd / PAPER_CHECKPOINT)


def test_paper_plan_is_complete(tmp_path, published_stylegan_checkpoint):
    _with_published_checkpoint(tmp_path, published_stylegan_checkpoint)
    proc = subprocess.run(SNAKEMAKE + ["-d", str(tmp_path), "-n", "--cores", "1", "report", "--configfile", str(ROOT / "configs" / "paper.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "fetch_inception" in out and "train_features" not in out
    assert "fetch_vgg16" in out and "train_perceptual" not in out
    vs = qcfg.variants(qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "paper.yaml"]))
    from workflow_src import registry

    n_qat = sum(v.method in registry.trained_methods() for v in vs)
    assert n_qat and f"quantize {3 * (len(vs) - n_qat)}" in " ".join(out.split())
    assert f"qat {3 * n_qat}" in " ".join(out.split())


def test_slurm_profile_plans_the_paper_matrix_with_the_params_resources(tmp_path, published_stylegan_checkpoint):
    """profiles/slurm's dry run of the paper matrix: GPU rules ask for one GPU, CPU rules for none,
    every submitted job for the partition and the cpus/mem/runtime of the params' `resources`."""
    _with_published_checkpoint(tmp_path, published_stylegan_checkpoint)
    proc = subprocess.run(SNAKEMAKE + ["-d", str(tmp_path), "--workflow-profile", str(ROOT / "profiles" / "slurm"), "-n",
                                       "report", "--configfile", str(ROOT / "configs" / "paper.yaml")], capture_output=True, text=True,
                          env={**os.environ, **plugin_env()})
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "paper.yaml"])
    gpu_rules = {"train_fp", "distill", "quantize", "qat", "evaluate", "evaluate_fp", "real_stats", "quantile_sweep", "noise_floor", "sensitivity"}
    cpu_rules = {"eval_inputs", "fig1", "fig_sensitivity", "sample_figure", "report", "import_fp", "export_fp", "export"}  # export: CPU runtimes
    seen = set()
    for rule, resources in re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", proc.stdout, re.M):
        res = dict(kv.split("=", 1) for kv in resources.split(", "))
        want = qcfg.rule_resources(cfg, rule)
        if rule in ("prepare_data", "fetch_inception", "fetch_vgg16"):
            continue  # local rules: they run on the login node
        seen.add(rule)
        assert res.get("gpu") == ("1" if rule in gpu_rules else None), (rule, res)
        assert res["slurm_partition"] == "gpu", (rule, res)
        assert (int(res["cpus_per_task"]), int(res["mem_mb"]), int(res["runtime"])) == (want["cpus"], want["mem_mb"], want["runtime"]), (rule, res)
    assert seen == gpu_rules | cpu_rules


def test_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--lint"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.workflow
def test_results_rebuilt_from_mlflow_equal_the_metrics_files(micro_run, monkeypatch):
    from workflow_src.reporting import tables as report

    monkeypatch.chdir(micro_run)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from_mlflow = report.results_csv_frame(report.results_from_mlflow("micro"))
    from_files = pd.read_csv(micro_run / "reports" / "results.csv", keep_default_na=False)
    from_mlflow.to_csv(micro_run / "from_mlflow.csv", index=False, float_format=report.RESULTS_FLOAT)
    # the evaluation columns are rebuilt from MLflow; the export columns come from the export summaries
    assert (from_mlflow["seed"] == 0).all()  # the run's tag
    from_mlflow[report.COLUMNS].to_csv(micro_run / "from_mlflow.csv", index=False, float_format=report.RESULTS_FLOAT)
    lines = (micro_run / "reports" / "results.csv").read_text().splitlines()
    evaluation = "".join(",".join(line.split(",")[: len(report.COLUMNS)]) + "\n" for line in lines)
    assert (micro_run / "from_mlflow.csv").read_text() == evaluation
    assert len(from_files) == len(from_mlflow)
    import mlflow

    runs = mlflow.search_runs(experiment_names=["qgan-bench-micro"])
    # every job that trains or evaluates, the helper networks and the sweep included, and one parent per variant
    assert set(runs["tags.stage"]) == {"train", "quantize", "evaluate", "export", "variant", "train_features", "train_perceptual", "quantile_sweep",
                                      "sensitivity"}
    sweep = runs[(runs["tags.stage"] == "quantile_sweep") & (runs["tags.arch"] == "sagan")].iloc[0]
    sweep_rows = pd.read_csv(micro_run / "sweeps" / "s0" / "sagan" / "quantile_sweep.csv")
    history = mlflow.tracking.MlflowClient().get_metric_history(sweep["run_id"], "validation_qfid")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(i, round(q, 6)) for i, q in enumerate(sweep_rows["qfid"])]
    assert runs["tags.workflow_id"].dropna().nunique() == 1
    # one parent run per row of results.csv, with every hyperparameter and final metric of the variant
    variants = mlflow.search_runs(experiment_names=["qgan-bench-micro"], filter_string="tags.stage = 'variant'")
    assert len(variants) == len(from_files) and not variants.duplicated(["tags.arch", "tags.variant", "tags.seed"]).any()
    assert (variants["tags.seed"] == "0").all() and variants["tags.mlflow.runName"].str.endswith("-s0").all()
    by_variant = variants.set_index(["tags.arch", "tags.variant"])
    row = by_variant.loc[("sagan", "ptq-minmax-tensor-w8a8")]  # quantized, evaluated and exported
    expect = from_files[(from_files["arch"] == "sagan") & (from_files["method"] == "ptq-minmax") & (from_files["per_channel"] == "False")
                        & (from_files["w_bits"] == 8)].iloc[0]
    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    assert row["metrics.qfid"] == pytest.approx(float(expect["qfid"]), rel=1e-5) and row["metrics.fid"] == pytest.approx(float(expect["fid"]), rel=1e-5)
    assert row["params.eval.bootstrap"] == str(cfg["eval"]["bootstrap"]) and row["metrics.onnxruntime.size_ratio"] > 0  # evaluation's and export's
    assert row["params.calibration.images"] == str(cfg["calibration"]["images"])  # and the quantization job's
    kids = runs[runs["tags.mlflow.parentRunId"] == row["run_id"]]
    assert sorted(kids["tags.stage"]) == ["evaluate", "export", "quantize"]
    assert by_variant.loc[("sagan", "ar-brecq-tensor-w4a8"), "params.brecq.ar_steps"] == str(cfg["brecq"]["ar_steps"])
    assert set(runs[runs["tags.variant"] == "fp"]["tags.mlflow.parentRunId"].dropna()) <= set(variants["run_id"])
    train = runs[runs["tags.stage"] == "train"]
    history = mlflow.tracking.MlflowClient().get_metric_history(train.iloc[0]["run_id"], "loss_g")
    assert len(history) > 10, "per-step losses are logged as step metrics"
    # a quantize or QAT run holds the hyperparameters its job read: BRECQ's, QAT's, the per-arch overrides
    quantize = runs[runs["tags.stage"] == "quantize"].set_index(["tags.arch", "tags.variant"])
    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    ar, qat = quantize.loc[("sagan", "ar-brecq-tensor-w4a8")], quantize.loc[("cyclegan", "lsq-qat-tensor-w4a8")]
    assert ar["params.brecq.ar_steps"] == str(cfg["brecq"]["ar_steps"]) and ar["params.calibration.images"] == str(cfg["calibration"]["images"])
    assert qat["params.qat.epochs"] == str(cfg["qat"]["epochs"]) and qat["params.archs.cyclegan.qat.select_on"] == "qfid"


@pytest.mark.workflow
def test_block_reconstruction_on_the_micro_run(micro_run):
    """Per-block losses are written next to the model; reconstruction lowers the error of most
    blocks and of every variant as a whole, and never leaves a block worse than it started."""
    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    infos = sorted((micro_run / "models" / "s0" / "q").glob("*/*-brecq-*.json"))
    assert len(infos) == len(cfg["matrix"]["archs"]) * sum(v.method.endswith("brecq") for v in qcfg.variants(cfg))
    improved = total = 0
    for path in infos:
        recon = json.loads(path.read_text())["recon"]
        assert recon and all(r["mse_after"] <= r["mse_before"] for r in recon), (path.name, recon)
        assert sum(r["mse_after"] for r in recon) < sum(r["mse_before"] for r in recon), path.name
        improved += sum(r["mse_after"] < r["mse_before"] for r in recon)
        total += len(recon)
    assert improved >= 0.9 * total, f"only {improved} of {total} blocks improved"
    assert (micro_run / "reports" / "table3.md").read_text().count("| STE-BRECQ |") == len(cfg["matrix"]["archs"]) * len(cfg["matrix"]["per_channel"])


@pytest.mark.workflow
def test_qat_improves_on_its_ptq_initialisation_on_the_micro_run(micro_run):
    """MA-QAT and LSQ-QAT start from quantile PTQ.  Where that start is measurably worse than FP
    (qFID above three times the arch's noise floor: micro StyleGAN, 0.94 against a floor of 0.14)
    QAT must beat it beyond the two bootstrap spreads (measured 0.13/0.16).  Elsewhere the start is
    within a few floors of FP, and QAT must not end worse than it by more than the spreads plus two
    floors: differences below the floor are sampling noise, and the micro outcome there moves with
    incidental randomness far beyond the bootstrap spread (micro CycleGAN MA-QAT w4a8 from the same
    PTQ start 0.21 ended at 0.05, 0.12, 0.22, 0.32, 0.44 and 0.52 across perceptual networks and
    hold-out settings; SAGAN LSQ-QAT at 0.017-0.031 from 0.012, floor 0.064).  Making QAT improve
    everywhere is issue 14.5's open work.  Their per-step losses are logged next to the model.
    A QAT whose early stopping kept its PTQ start (no epoch beat it on the validation split by the
    combined spread: test_every_artifact_and_finite_metrics checks that rule) is that start: its
    qFID must then equal PTQ's.  Measured on an AVX-512 Xeon, where oneDNN's kernels round otherwise
    than on the AVX2 EPYC this test was written on: micro CycleGAN per-tensor MA-QAT's best epoch
    scored 0.119 +- 0.083 on the validation inputs against its start's 0.126 +- 0.066, so the start
    (0.174 on the evaluation inputs, floor 0.049) was kept; the same with the code before it."""
    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    df = pd.read_csv(micro_run / "reports" / "results.csv")
    improved = 0
    for arch in cfg["matrix"]["archs"]:
        for pc in cfg["matrix"]["per_channel"]:
            sel = df[(df["arch"] == arch) & (df["w_bits"] == 4) & (df["per_channel"] == pc)].set_index("method")
            ptq, ptq_std, floor = sel.loc["ptq-quantile", "qfid"], sel.loc["ptq-quantile", "qfid_std"], sel.loc["ptq-quantile", "qfid_floor"]
            for method in ("ma-qat", "lsq-qat"):
                q, q_std = sel.loc[method, "qfid"], sel.loc[method, "qfid_std"]
                what = f"{arch} per_channel={pc}: {method} qFID {q:.4f} +- {q_std:.4f}, PTQ {ptq:.4f} +- {ptq_std:.4f}, floor {floor:.4f}"
                if sel.loc[method, "selected_epoch"] == -1:  # early stopping kept the PTQ start: that model, that score
                    assert (q, q_std) == (ptq, ptq_std), what
                elif ptq > 3 * floor:
                    assert q < ptq - q_std - ptq_std, what
                    improved += 1
                else:
                    assert q <= ptq + q_std + ptq_std + 2 * floor, what
                variant = f"{method}-{'channel' if pc else 'tensor'}-w4a8"
                losses = pd.read_csv(micro_run / "models" / "s0" / "q" / arch / f"{variant}.losses.csv")
                assert list(losses["step"]) == list(range(len(losses))) and len(losses) > 0
    assert improved >= 2  # StyleGAN's two methods at least
    assert "LSQ-QAT" in (micro_run / "reports" / "table4.md").read_text()


@pytest.mark.workflow
def test_snakemake_report_shows_tables_and_figures_with_captions(micro_run):
    out = micro_run / "reports" / "snakemake-report.html"
    proc = subprocess.run(SNAKEMAKE + ["-d", str(micro_run), "--report", str(out), "--configfile", str(ROOT / "configs" / "micro.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = out.read_text(errors="replace")
    for name in ("fig1_quantile_sweep.png", "fig_samples_stylegan.png", "results.csv", "table4.md", "paper_comparison.md"):
        assert name in page, name
    assert "bootstrap" in page and "truncation" in page  # captions
    for arch in ("stylegan", "sagan", "cyclegan"):
        assert (micro_run / "reports" / f"fig_samples_{arch}.png").stat().st_size > 0
    index = (micro_run / "reports" / "index.html").read_text()
    assert "fig_samples_cyclegan.png" in index and "Beside the paper" in index


@pytest.mark.workflow
def test_jobs_forked_by_the_warm_process_compute_what_fresh_processes_compute(micro_run, tmp_path):
    """Every job of the micro run was forked by the run's warm process, which stopped with the run;
    the same jobs rerun each in a fresh process (QGAN_WARM=off), in a copy of the run, write the same
    weights and metrics, the seeded sampling included."""
    import shutil

    import torch

    logs = [p for p in (micro_run / "logs").rglob("*.log") if "qgan-bench: work starts" in p.read_text()]
    assert len(logs) > 50 and all("(forked by the warm process)" in p.read_text() for p in logs)
    assert (micro_run / ".qgan" / "forkserver.log").read_text().rstrip().endswith("stopped")
    copy = tmp_path / "copy"
    shutil.copytree(micro_run, copy, symlinks=True)
    variants = ["ptq-minmax-tensor-w4a8", "ma-qat-tensor-w4a8"]
    proc = subprocess.run(SNAKEMAKE + [*[f"metrics/s0/sagan/{v}.json" for v in variants], "-d", str(copy), "--cores", "2",
                                       "--forcerun", "quantize", "qat", "evaluate", "--configfile", str(ROOT / "configs" / "micro.yaml")],
                          capture_output=True, text=True, env={**os.environ, "QGAN_WARM": "off", "QGAN_TRACKING": "off"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for v in variants:
        log = (copy / "logs" / "evaluate" / "s0" / "sagan" / f"{v}.log").read_text()
        assert "qgan-bench: work starts" in log and "forked" not in log  # rerun, afresh
        fresh, warm = json.loads((copy / "metrics" / "s0" / "sagan" / f"{v}.json").read_text()), json.loads((micro_run / "metrics" / "s0" / "sagan" / f"{v}.json").read_text())
        assert {k: fresh[k] for k in ("fid", "qfid", "fid_std", "qfid_std")} == {k: warm[k] for k in ("fid", "qfid", "fid_std", "qfid_std")}
        a = torch.load(copy / "models" / "s0" / "q" / "sagan" / f"{v}.pt", weights_only=True)
        b = torch.load(micro_run / "models" / "s0" / "q" / "sagan" / f"{v}.pt", weights_only=True)
        flat = lambda d: {k: v for k, v in d.items() if isinstance(v, torch.Tensor)} if isinstance(d, dict) else {}
        sa, sb = flat(a.get("state_dict", a)), flat(b.get("state_dict", b))
        assert sa.keys() == sb.keys() and sa and all(torch.equal(sa[k], sb[k]) for k in sa), v


@pytest.mark.workflow
def test_adding_a_seed_plans_only_that_seeds_jobs_and_the_report(micro_run, micro_dag, tmp_path):
    """seeds [0] -> [0, 1] on the finished micro run: Snakemake plans every replicate job of seed 1
    (one per job of seed 0) and the report that aggregates them; no job of seed 0, nothing shared."""
    more = tmp_path / "seeds.yaml"
    more.write_text("seeds: [0, 1]\n")
    planned = {j["name"] for j in snakemake_jobs(ROOT, [str(ROOT / "configs" / "micro.yaml"), str(more)], workdir=micro_run)}
    seed0 = {j["name"] for j in micro_dag if ".s0." in j["name"]}
    seed1 = planned - {"report"}
    assert "report" in planned and seed1 <= {n.replace(".s0.", ".s1.") for n in seed0}, sorted(seed1)
    # seed 1 runs every job of seed 0 but the exports (the first seed's only); its sweeps and sensitivity, which its
    # quantization reads (micro: quantiles from the sweep, mixed precision from the sensitivity), are its own
    assert seed1 == {n.replace(".s0.", ".s1.") for n in seed0 if not n.startswith("export")}, sorted(seed1 ^ {n.replace(".s0.", ".s1.") for n in seed0})


@pytest.mark.workflow
def test_two_seeds_train_two_models_and_leave_the_first_seeds_as_it_was(micro_run, tmp_path):
    """Seeds 0 and 1 in a fresh directory (the micro run's prepared data copied in): FP training and
    the evaluation inputs of each seed under its own path, seed 1's differ from seed 0's, and seed
    0's are the micro run's own, bit for bit: adding a seed changes no other seed's artifacts."""
    import shutil

    import torch

    shutil.copytree(micro_run / "data", tmp_path / "data")
    (tmp_path / "seeds.yaml").write_text("seeds: [0, 1]\n")
    targets = [p for s in (0, 1) for p in (f"models/s{s}/fp/sagan.pt", f"eval/s{s}/sagan/inputs.pt")]
    proc = subprocess.run(SNAKEMAKE + ["-d", str(tmp_path), "--cores", "2", *targets, "--configfile", str(ROOT / "configs" / "micro.yaml"),
                                       str(tmp_path / "seeds.yaml")], capture_output=True, text=True, env={**os.environ, "QGAN_TRACKING": "off"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
    m0, m1, ref = load(tmp_path / "models/s0/fp/sagan.pt"), load(tmp_path / "models/s1/fp/sagan.pt"), load(micro_run / "models/s0/fp/sagan.pt")
    g0, g1, gref = (m["state"]["G"] for m in (m0, m1, ref))
    assert g0.keys() == gref.keys() and all(torch.equal(g0[k], gref[k]) for k in g0)  # seed 0 as the one-seed run trained it
    assert any(not torch.equal(g0[k], g1[k]) for k in g0 if g0[k].is_floating_point())  # seed 1: another model
    i0, i1 = load(tmp_path / "eval/s0/sagan/inputs.pt"), load(tmp_path / "eval/s1/sagan/inputs.pt")
    assert not torch.equal(i0["inputs"], i1["inputs"]) and torch.equal(i0["inputs"], load(micro_run / "eval/s0/sagan/inputs.pt")["inputs"])
