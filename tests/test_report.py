"""The report: the paper's numbers as data, and the side-by-side comparison with ours."""
from pathlib import Path

import pandas as pd
import pytest

from workflow_src import config as qcfg
from workflow_src.reporting import paper as report

ROOT = Path(__file__).resolve().parents[1]


def test_paper_numbers_cover_tables_3_4_and_appendix_b():
    p = report.paper_numbers()
    t4 = p[p["table"] == "4"]
    # Table 4: FP + 4 vanilla PTQ + 4 MA-QAT + 2 LSQ-QAT rows, for each of the three archs
    assert len(t4) == 11 * 3 and set(t4["arch"]) == {"stylegan", "sagan", "cyclegan"}
    assert len(p[p["table"] == "3"]) == 11 and set(p[p["table"] == "3"]["arch"]) == {"stylegan"}
    row = t4[(t4["arch"] == "stylegan") & (t4["method"] == "lsq-qat") & (t4["w_bits"] == 4)].iloc[0]
    assert (row["fid"], row["qfid"], row["per_channel"]) == (33.1, 11.0, False)
    assert set(p["method"]) <= {"fp", "ptq-quantile", "ar-brecq", "ste-brecq", "ma-qat", "lsq-qat"}


def test_comparison_puts_ours_beside_the_paper_with_ranks_not_differences():
    ours = pd.DataFrame([
        {"arch": "stylegan", "method": "lsq-qat", "per_channel": False, "w_bits": 4, "a_bits": 8, "fid": 30.0, "qfid": 12.5,
         "fid_std": 0.4, "qfid_std": 0.2, "feature_space": "inception-2048d", "distill_loss": "perceptual"},
        {"arch": "stylegan", "method": "ma-qat", "per_channel": False, "w_bits": 4, "a_bits": 8, "fid": 35.0, "qfid": 10.0,
         "fid_std": 0.4, "qfid_std": 0.2, "feature_space": "inception-2048d", "distill_loss": "perceptual"},
        {"arch": "stylegan", "method": "fp", "per_channel": None, "w_bits": 32, "a_bits": 32, "fid": 25.0, "qfid": 0.0,
         "fid_std": 0.3, "qfid_std": 0.0, "feature_space": "inception-2048d", "distill_loss": None},
    ])
    cmp = report.paper_comparison(ours)
    assert not [c for c in cmp.columns if c.startswith("diff")]
    t4 = cmp[(cmp["table"] == "Table 4") & (cmp["arch"] == "stylegan") & (cmp["bits"] == "w4a8") & (cmp["per_channel"] == False)]  # noqa: E712
    lsq, ma = (t4[t4["method"] == m].iloc[0] for m in ("lsq-qat", "ma-qat"))
    # paper: LSQ 11.0 < MA 18.5 (ranks 1, 2); ours: LSQ 12.5 > MA 10.0 (ranks 2, 1)
    assert (lsq["paper_qfid"], lsq["ours_qfid"], lsq["paper_rank"], lsq["ours_rank"]) == (11.0, 12.5, 1.0, 2.0)
    assert (ma["paper_rank"], ma["ours_rank"]) == (2.0, 1.0)
    assert cmp[(cmp["method"] == "ma-qat") & (cmp["arch"] == "sagan")]["ours_fid"].isna().all()
    md = report.paper_comparison_md(cmp, ours)
    assert "| Table 4 | StyleGAN | LSQ-QAT | ✗ | w4a8 | 33.1 | 30 ± 0.4 | 11 | 12.5 ± 0.2 | 1 | 2 |" in md
    appendix_b = cmp[cmp["table"] == "App. B"]
    assert len(appendix_b) == 2 and appendix_b["ours_qfid"].isna().all()  # our QAT used the perceptual loss
    # QAT rows distilled with pixel MSE (results.csv's distill_loss) meet the paper's MSE ablation (appendix B), not Table 4
    ours["distill_loss"] = ours["distill_loss"].replace("perceptual", "mse")
    ours.loc[len(ours)] = {"arch": "stylegan", "method": "ma-qat", "per_channel": True, "w_bits": 8, "a_bits": 8, "fid": 30.0,
                           "qfid": 7.0, "fid_std": 0.4, "qfid_std": 0.2, "feature_space": "inception-2048d", "distill_loss": "mse"}
    cmp = report.paper_comparison(ours)
    b = cmp[(cmp["table"] == "App. B") & (cmp["arch"] == "stylegan")].iloc[0]
    assert (b["paper_qfid"], b["ours_qfid"]) == (41.2, 7.0)
    assert cmp[(cmp["table"] == "Table 4") & (cmp["arch"] == "stylegan") & cmp["method"].isin(["ma-qat", "lsq-qat"])]["ours_qfid"].isna().all()
    assert cmp[(cmp["table"] == "App. B") & (cmp["arch"] == "sagan")]["ours_qfid"].isna().all()  # no SAGAN row of ours


def test_spearman_equals_scipys():
    from scipy.stats import spearmanr

    a, b = [3.0, 1.0, 2.0, 5.0, 5.0, 0.5], [30.0, 12.0, 11.0, 70.0, 40.0, 1.0]
    assert report.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert report.spearman(a[:2], b[:2]) != report.spearman(a[:2], b[:2])  # NaN: too few rows
    assert report.spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)


def _row(arch, method, pc, w, qfid, std, fid=None):
    return {"arch": arch, "method": method, "per_channel": pc, "w_bits": w, "a_bits": 8, "qfid": qfid, "qfid_std": std,
            "fid": qfid + 1 if fid is None else fid, "fid_std": std, "feature_space": "tinycnn"}


def test_a_finding_holds_only_beyond_the_combined_spread():
    df = pd.DataFrame([
        _row("sagan", "ptq-quantile", True, 4, 1.0, 0.1), _row("sagan", "ptq-minmax", True, 4, 1.5, 0.1),    # 0.5 > 2*0.141: held
        _row("sagan", "ptq-quantile", False, 4, 1.0, 0.2), _row("sagan", "ptq-minmax", False, 4, 1.3, 0.2),  # 0.3 < 2*0.283: within
        _row("sagan", "ptq-quantile", True, 8, 0.9, 0.01), _row("sagan", "ptq-minmax", True, 8, 0.1, 0.01),  # the opposite: against
    ])
    cells = report.finding_cells(df, report.FINDINGS[0]).set_index(["per_channel", "w_bits"])["verdict"]
    assert cells.to_dict() == {(True, 8): "against", (True, 4): "held", (False, 4): "within"}
    f = report.findings(df).set_index("finding").loc["quantile"]
    assert (f["cells"], f["held"], f["against"], f["within"], f["verdict"]) == (3, 1, 1, 1, "mixed")
    assert report.findings(df).set_index("finding").loc["lsq-vs-ma", "verdict"] == "not run"


def test_the_findings_compare_the_best_of_a_side_and_fixed_granularities():
    df = pd.DataFrame([
        _row("stylegan", "lsq-qat", False, 4, 0.10, 0.01),
        _row("stylegan", "ptq-quantile", False, 4, 0.50, 0.01), _row("stylegan", "ste-brecq", False, 4, 0.11, 0.01),
        _row("stylegan", "ma-qat", True, 4, 0.20, 0.01), _row("stylegan", "ma-qat", False, 4, 0.30, 0.01),
        _row("stylegan", "lsq-qat", True, 4, 0.11, 0.01),
        _row("stylegan", "ar-brecq", True, 4, 0.3, 0.01, fid=5.0), _row("stylegan", "ar-brecq", True, 8, 0.2, 0.01, fid=6.0),
    ])
    by = {f.key: f for f in report.FINDINGS}
    qat = report.finding_cells(df, by["qat-vs-ptq"])
    # per-channel: LSQ 0.11 vs AR-BRECQ 0.3; per-tensor: the best PTQ is STE-BRECQ's 0.11, not quantile PTQ's 0.50
    assert qat[["a", "b", "verdict"]].values.tolist() == [["lsq-qat", "ar-brecq", "held"], ["lsq-qat", "ste-brecq", "within"]]
    pc = report.finding_cells(df, by["per-channel"]).set_index("a")["verdict"].to_dict()
    assert pc == {"ma-qat": "against", "lsq-qat": "held"}  # MA per-channel 0.20 beats per-tensor 0.30; LSQ 0.11 vs 0.10
    ar = report.finding_cells(df, by["ar-4-vs-8"])
    assert ar[["a_value", "b_value", "verdict"]].values.tolist() == [[5.0, 6.0, "held"]]  # FID at w4 below FID at w8


def _bench(path, wall, cpu, rss):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                    f"{wall}\t0:00:{int(wall):02d}\t{rss}\t900.0\t100.0\t110.0\t0.1\t0.2\t50.0\t{cpu}\n")


def test_where_the_time_goes_sums_the_benchmark_files_and_the_logged_start_up(tmp_path):
    """Snakemake benchmark files (its column layout) and job logs with the CLI's start-up line,
    summarised per rule: totals, medians, peaks and start-up shares computed by hand."""
    from workflow_src.reporting.timing import job_times, per_rule, timing_md
    from workflow_src.workflow.stages import STARTUP_MARK, stage

    for job, wall, cpu, rss, start in [("stylegan/a", 10.0, 8.0, 300.0, 2.0), ("stylegan/b", 30.0, 20.0, 500.0, 3.0),
                                       ("sagan/a", 20.0, 15.0, 400.0, None)]:
        bench = tmp_path / stage("evaluate").benchmark.format(seed=0, arch=job.split("/")[0], variant=job.split("/")[1])
        _bench(bench, wall, cpu, rss)
        log = tmp_path / stage("evaluate").log.format(seed=0, arch=job.split("/")[0], variant=job.split("/")[1])
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("" if start is None else f"progress\n{STARTUP_MARK} {start:.2f} s after the process started\nmore\n")
    _bench(tmp_path / stage("report").benchmark, 5.0, 4.0, 200.0)
    (tmp_path / stage("report").log).write_text(f"{STARTUP_MARK} 1.00 s after the process started\n")
    jobs = job_times(tmp_path)
    assert sorted(jobs["job"]) == ["-", "s0/sagan/a", "s0/stylegan/a", "s0/stylegan/b"]  # a replicate's jobs: its seed first
    rules = per_rule(jobs).set_index("rule")
    assert list(rules.index) == ["evaluate", "report"]  # most time first
    ev = rules.loc["evaluate"]
    assert (ev["jobs"], ev["total_s"], ev["median_s"], ev["cpu_s"], ev["peak_mb"]) == (3, 60.0, 20.0, 43.0, 500.0)
    assert ev["startup_share"] == pytest.approx(5.0 / 40.0)  # the two jobs whose log records it
    assert rules.loc["report", "startup_share"] == pytest.approx(0.2)
    md = timing_md(tmp_path)
    assert "| evaluate | 3 | 60.0 | 20.0 | 43.0 | 500 | 12% |" in md and "4 jobs, 65 s of job wall time" in md
    assert "No benchmark files" in timing_md(tmp_path / "elsewhere")


def test_a_forked_jobs_own_cpu_and_memory_record_replaces_the_benchmarks(tmp_path):
    """A job forked by the warm process: Snakemake's benchmark measured only the waiting command
    (0.1 CPU s, 19 MB); the job's log line holds the child's own CPU time and peak memory."""
    from workflow_src.reporting.timing import job_times
    from workflow_src.workflow.stages import RESOURCES_MARK, STARTUP_MARK, stage

    for variant, record in [("a", True), ("b", False)]:
        _bench(tmp_path / stage("evaluate").benchmark.format(seed=0, arch="sagan", variant=variant), 12.0, 0.1, 19.0)
        log = tmp_path / stage("evaluate").log.format(seed=0, arch="sagan", variant=variant)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"{STARTUP_MARK} 0.31 s after the process started (forked by the warm process)\nwork\n"
                       + (f"{RESOURCES_MARK} cpu 17.25 s, peak rss 812.5 MB\n" if record else ""))
    jobs = job_times(tmp_path).set_index("job")
    assert (jobs.loc["s0/sagan/a", "cpu_s"], jobs.loc["s0/sagan/a", "max_rss_mb"], jobs.loc["s0/sagan/a", "startup_s"]) == (17.25, 812.5, 0.31)
    assert (jobs.loc["s0/sagan/b", "cpu_s"], jobs.loc["s0/sagan/b", "max_rss_mb"]) == (0.1, 19.0)  # a job that died before its record


def test_gpu_jobs_peak_memory_is_read_from_their_logs_and_checked(tmp_path):
    """A job that computed on a GPU ends its log with its peak CUDA memory; the timing table gains a
    peak-GPU column, and the GPU check passes such jobs and names those that allocated nothing there
    or whose record names another device."""
    import json

    from workflow_src.reporting import gpucheck
    from workflow_src.reporting.timing import job_times, timing_md
    from workflow_src.workflow.stages import RESOURCES_MARK, stage

    lines = {"a": f"{RESOURCES_MARK} cpu 3.50 s, peak rss 900.0 MB, peak gpu 1536.0 MB\n",
             "b": f"{RESOURCES_MARK} cpu 7.00 s, peak rss 950.0 MB\n"}
    for variant, line in lines.items():
        _bench(tmp_path / stage("evaluate").benchmark.format(seed=0, arch="sagan", variant=variant), 4.0, 0.1, 19.0)
        log = tmp_path / stage("evaluate").log.format(seed=0, arch="sagan", variant=variant)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("work\n" + line)
    jobs = job_times(tmp_path).set_index("job")
    assert jobs.loc["s0/sagan/a", "peak_gpu_mb"] == 1536.0 and pd.isna(jobs.loc["s0/sagan/b", "peak_gpu_mb"])
    assert "| peak GPU MB |" in timing_md(tmp_path) and "| 1536 |" in timing_md(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "a.json").write_text(json.dumps({"environment": {"device": "cuda:0"}}))
    (tmp_path / "metrics" / "b.json").write_text(json.dumps({"validation": [{"environment": {"device": "cpu"}}]}))
    table, problems = gpucheck.check(tmp_path, ["evaluate", "qat"])
    assert table.set_index("rule").loc["evaluate", ["jobs", "on_gpu", "peak_gpu_mb"]].tolist() == [2, 1, 1536.0]
    assert sorted(problems) == ["evaluate s0/sagan/b: allocated no GPU memory (log logs/evaluate/s0/sagan/b.log)",
                                "metrics/b.json: records device cpu",
                                f"rule qat: no job of it ran (no benchmark file under {tmp_path / 'logs' / 'benchmark' / 'qat'})"]


def test_results_and_tables_say_where_each_quantile_pair_came_from():
    from workflow_src.reporting import tables

    base = {"feature_space": "tinycnn", "fid": 1.0, "qfid": 0.1, "fid_std": 0.1, "qfid_std": 0.01, "a_bits": 8}
    df = pd.DataFrame([
        {**base, "arch": "sagan", "method": "fp", "per_channel": None, "w_bits": 32, "a_bits": 32, "quantiles": "", "quantiles_from": ""},
        {**base, "arch": "sagan", "method": "ptq-minmax", "per_channel": True, "w_bits": 8, "quantiles": "", "quantiles_from": ""},
        {**base, "arch": "sagan", "method": "ptq-quantile", "per_channel": True, "w_bits": 8, "quantiles": "a 1/0; w 1/0",
         "quantiles_from": "sweep w8 (validation)"},
        {**base, "arch": "sagan", "method": "ptq-quantile", "per_channel": True, "w_bits": 4, "quantiles": "a 0.99/0.01; w 1/0",
         "quantiles_from": "sweep w4 (validation)"},
        {**base, "arch": "sagan", "method": "ma-qat", "per_channel": True, "w_bits": 4, "quantiles": "a 0.999/0.001; w 1/0",
         "quantiles_from": "archs.sagan.qat.quantiles"},
    ])
    out = tables.results_csv_frame(df)
    assert list(out.columns) == tables.COLUMNS + ["quantiles", "quantiles_from"]  # added after the contract's columns
    note = tables.quantile_note(df).strip().splitlines()
    assert note[1:] == ["- SAGAN w8, vanilla PTQ (quantile): a 1/0; w 1/0 (sweep w8 (validation))",
                        "- SAGAN w4, vanilla PTQ (quantile): a 0.99/0.01; w 1/0 (sweep w4 (validation))",
                        "- SAGAN w4, MA-QAT: a 0.999/0.001; w 1/0 (archs.sagan.qat.quantiles)"]
    assert tables.quantile_note(df.drop(columns=["quantiles", "quantiles_from"])) == ""


def test_the_spread_note_names_each_archs_own_sample_count():
    from workflow_src.reporting import tables

    cfg = qcfg.load([ROOT / "params.yaml"])
    df = pd.DataFrame([{"arch": "cyclegan", "n_samples": 300}, {"arch": "sagan", "n_samples": 1000}, {"arch": "sagan", "n_samples": 1000}])
    note = tables.spread_note(cfg, df)
    assert "CycleGAN 300" in note and "SAGAN 1000" in note and "20 bootstrap" in note and "not across training seeds" in note


def test_the_selection_note_counts_the_cells_that_kept_their_ptq_start():
    from workflow_src.reporting.tables import selection_note

    df = pd.DataFrame({"arch": ["sagan"] * 4, "method": ["ma-qat", "ma-qat", "lsq-qat", "ptq-minmax"],
                       "selected_epoch": [-1, 5, 7, None],
                       "selected_on": ["validation qfid", "validation qfid", "last epoch", None]})
    note = selection_note(df)
    assert "- MA-QAT: the start in 1 of 2 cells; epochs kept [-1, 5] (validation qfid)" in note
    assert "- LSQ-QAT: the start in 0 of 1 cells; epochs kept [7] (last epoch)" in note
    assert "Min-max" not in note and selection_note(df.drop(columns=["selected_epoch"])) == ""


def test_the_page_names_the_best_method_per_width_and_what_the_spreads_cannot_tell_apart():
    from workflow_src.reporting import page

    df = pd.DataFrame([
        _row("sagan", "ptq-minmax", False, 4, 1.0, 0.1), _row("sagan", "ptq-quantile", False, 4, 1.2, 0.1),  # 0.2 < 2*0.141: tied
        _row("sagan", "lsq-qat", False, 4, 2.0, 0.1),                                                           # 1.0 apart
        _row("cyclegan", "ptq-minmax", True, 8, 0.02, 0.0), _row("cyclegan", "lsq-qat", True, 8, 0.01, 0.0),  # both below the floor
        _row("cyclegan", "ma-qat", True, 8, 0.5, 0.0),
    ])
    df["qfid_floor"] = df["arch"].map({"sagan": 0.5, "cyclegan": 0.05})
    best = page.best_by_width(df).set_index("arch")
    assert best.loc["sagan", "best"] == page.method_title("ptq-minmax") + " (per-tensor)"
    assert best.loc["sagan", "tied"] == [page._variant_label(df.iloc[1])] and bool(best.loc["sagan", "above_floor"])
    assert best.loc["cyclegan", "best"] == page.method_title("lsq-qat") + " (per-channel)"
    assert best.loc["cyclegan", "tied"] == [page._variant_label(df.iloc[3])] and not best.loc["cyclegan", "above_floor"]


def test_a_lower_fid_than_full_precision_is_a_gain_only_beyond_the_spread_and_the_floor():
    from workflow_src.reporting import page

    fp = {"arch": "sagan", "method": "fp", "variant": "fp", "per_channel": None, "w_bits": 32, "a_bits": 32, "fid": 0.81, "fid_std": 0.12,
          "qfid": 0.0, "qfid_std": 0.0, "feature_space": "tinycnn"}
    rows = [fp, {**_row("sagan", "ptq-minmax", False, 4, 0.3, 0.01, fid=0.62), "fid_std": 0.05, "variant": "a"},  # 0.19 < 2*0.13
            {**_row("sagan", "lsq-qat", False, 4, 0.3, 0.01, fid=0.2), "fid_std": 0.01, "variant": "b"},         # 0.61 > 2*0.12
            {**_row("sagan", "ma-qat", False, 4, 0.3, 0.01, fid=1.0), "variant": "c"}]                           # higher: not listed
    df = pd.DataFrame(rows)
    assert page.fid_against_fp(df).set_index("variant")["real"].to_dict() == {"a": False, "b": True}
    df["fid_floor"] = 0.7  # a difference of 0.61 is inside the real images' own FID
    assert page.fid_against_fp(df).set_index("variant")["real"].to_dict() == {"a": False, "b": False}


def _sized_rows():
    """Two archs' results with sizes: FP, uniform w8/w6/w4 (a8), w8a6, and a mixed-precision point."""
    rows = []
    for arch, scale, floor in (("sagan", 1.0, 0.02), ("cyclegan", 2.0, 0.005)):
        rows.append({"arch": arch, "variant": "fp", "method": "fp", "per_channel": None, "w_bits": 32, "a_bits": 32, "qfid": 0.0,
                     "qfid_std": 0.0, "avg_w_bits": 32.0, "size_bytes": 4000 * scale, "qfid_floor": floor})
        for m, w, a, q, size_ in [("ptq-quantile", 8, 8, 0.01, 1000), ("ptq-quantile", 6, 8, 0.05, 800), ("ptq-quantile", 4, 8, 0.5, 500),
                                  ("ptq-quantile", 8, 6, 0.2, 1000), ("ptq-minmax", 8, 8, 0.03, 1000), ("ptq-minmax", 4, 8, 0.9, 500),
                                  ("mp-quantile", 6, 8, 0.04, 760)]:
            rows.append({"arch": arch, "variant": f"{m}-tensor-w{w}a{a}", "method": m, "per_channel": False, "w_bits": w, "a_bits": a,
                         "qfid": q * scale, "qfid_std": 0.001, "avg_w_bits": float(w) if m != "mp-quantile" else 5.9,
                         "size_bytes": size_ * scale, "qfid_floor": floor})
    return pd.DataFrame(rows)


def test_pareto_front_by_hand():
    from workflow_src.reporting.front import pareto_mask

    assert pareto_mask([1, 2, 3, 4], [5, 3, 4, 1]) == [True, True, False, True]
    assert pareto_mask([1, 1, 2], [2, 2, 2]) == [True, True, False]  # equal points are both kept; a larger one as bad is not
    assert pareto_mask([1, 1], [3, 2]) == [False, True]


def test_the_front_table_and_figure(tmp_path):
    from workflow_src.reporting.front import front_md, write_front

    table = write_front(_sized_rows(), str(tmp_path / "front.csv"), str(tmp_path / "front.png"))
    assert (tmp_path / "front.png").stat().st_size > 0 and len(pd.read_csv(tmp_path / "front.csv")) == len(table) == 16
    s = table[table["arch"] == "sagan"].set_index("variant")
    # front by hand: w4 (500 B, 0.5), mixed (760, 0.04), w8 quantile (1000, 0.01), FP (4000, 0); w6 (800, 0.05) is beaten by mixed
    assert set(s.index[s["pareto"]]) == {"ptq-quantile-tensor-w4a8", "mp-quantile-tensor-w6a8", "ptq-quantile-tensor-w8a8", "fp"}
    assert s.loc["ptq-quantile-tensor-w8a8", "size_ratio"] == 0.25 and bool(s.loc["ptq-quantile-tensor-w8a8", "within_floor"])
    assert not s.loc["mp-quantile-tensor-w6a8", "within_floor"]  # 0.04 > floor 0.02
    md = front_md(table)
    assert "Smallest within the qFID noise floor (0.02): ptq-quantile-tensor-w8a8, 0.250 of FP's size." in md
    assert "No quantized variant is within the qFID noise floor." in md  # CycleGAN: its best, 0.02, above its floor 0.005


def test_the_falloff_figure_draws_methods_at_enough_widths(tmp_path):
    from workflow_src.reporting.falloff import falloff_series, write_falloff

    series = falloff_series(_sized_rows())
    # per arch: quantile PTQ over w8/w6/w4 at a8 and over a8/a6 at w8; min-max has two weight widths only; mixed precision is not a width
    assert [(a, m, which, list(r["w_bits" if which == "weights" else "a_bits"])) for a, m, _, which, r in series] == [
        ("cyclegan", "ptq-quantile", "weights", [8, 6, 4]), ("cyclegan", "ptq-quantile", "activations", [8, 6]),
        ("sagan", "ptq-quantile", "weights", [8, 6, 4]), ("sagan", "ptq-quantile", "activations", [8, 6])]
    assert write_falloff(_sized_rows(), str(tmp_path / "bits.png")) == 4 and (tmp_path / "bits.png").stat().st_size > 0


def _seed_rows(seed, q_pc, q_pt, fp_fid, boot=0.05):
    """One seed's results rows (FP and two variants), as load_results gives them."""
    rows = [{**_row("sagan", "fp", None, 32, 0.0, boot, fid=fp_fid), "a_bits": 32, "variant": "fp"},
            {**_row("sagan", "ptq-minmax", True, 4, q_pc, boot), "variant": "ptq-minmax-channel-w4a8"},
            {**_row("sagan", "ptq-minmax", False, 4, q_pt, boot), "variant": "ptq-minmax-tensor-w4a8"}]
    for r in rows:
        r.update(seed=seed, quantiles=f"pair of seed {seed}", n_samples=100)
    return rows


def test_one_seed_aggregates_to_its_own_table():
    """With one seed the across-seed table is that seed's table: every value and its bootstrap spread as they were."""
    from workflow_src.reporting import tables

    df = tables.sort_results(pd.DataFrame(_seed_rows(0, 1.0, 2.0, 5.0)))
    agg = tables.across_seeds(df)
    cols = ["arch", "method", "per_channel", "w_bits", "a_bits", "fid", "qfid", "fid_std", "qfid_std", "quantiles", "n_samples"]
    pd.testing.assert_frame_equal(agg[cols], df[cols], check_dtype=False)
    assert (agg["n_seeds"] == 1).all() and (agg["spread"] == "bootstrap").all() and "seed" not in agg.columns
    assert (agg["qfid_boot_std"] == df["qfid_std"]).all()
    out = tables.seeds_csv_frame(agg)
    assert list(out.columns) == tables.SEEDS_COLUMNS and out["qfid_seed_std"].isna().all()
    assert out["qfid_mean"].tolist() == df["qfid"].tolist() and out["per_channel"].tolist() == ["", "True", "False"]


def test_several_seeds_give_the_mean_and_the_spread_across_them():
    """Three seeds, values chosen so the mean and the sample standard deviation (ddof 1) are exact by hand."""
    from workflow_src.reporting import tables

    df = tables.sort_results(pd.DataFrame(_seed_rows(2000, 3.0, 2.0, 7.0) + _seed_rows(0, 1.0, 2.0, 5.0) + _seed_rows(1000, 2.0, 2.0, 6.0)))
    agg = tables.across_seeds(df).set_index("variant")
    pc, pt, fp = agg.loc["ptq-minmax-channel-w4a8"], agg.loc["ptq-minmax-tensor-w4a8"], agg.loc["fp"]
    assert (pc["qfid"], pc["qfid_std"], pc["fid"]) == (pytest.approx(2.0), pytest.approx(1.0), pytest.approx(3.0))  # 1, 2, 3
    assert (pt["qfid"], pt["qfid_std"]) == (pytest.approx(2.0), 0.0)  # the same at every seed: no spread across seeds
    assert (fp["fid"], fp["fid_std"], fp["per_channel"]) == (pytest.approx(6.0), pytest.approx(1.0), None)  # FP groups like any row
    assert (pc["qfid_boot_std"], pc["n_seeds"], pc["seeds"], pc["spread"]) == (pytest.approx(0.05), 3, "0 1000 2000", "seeds")
    assert pc["quantiles"] == "pair of seed 0"  # a choice, not a measurement: the first seed's
    cmp = tables.spread_comparison(agg.reset_index()).iloc[0]  # w4: the two variants' seed stds 1 and 0, bootstrap 0.05 each
    assert (cmp["variants"], cmp["seed_std"], cmp["boot_std"], cmp["ratio"]) == (2, pytest.approx(0.5), pytest.approx(0.05), pytest.approx(10.0))
    assert "| SAGAN | w4 | 2 |" in tables.spread_comparison_md(agg.reset_index())
    assert tables.spread_comparison_md(tables.across_seeds(pd.DataFrame(_seed_rows(0, 1.0, 2.0, 5.0)))) == ""
    note = tables.spread_note(qcfg.load([ROOT / "params.yaml"]), agg.reset_index())
    assert "mean over 3 seeds (0 1000 2000)" in note and "(n = 3)" in note and "bootstrap" in note
    one = tables.spread_note(qcfg.load([ROOT / "params.yaml"]), tables.across_seeds(pd.DataFrame(_seed_rows(0, 1.0, 2.0, 5.0))))
    assert "sampling noise only" in one and "configs/seeds3.yaml" in one


def test_a_finding_within_the_spread_across_seeds_is_not_resolved():
    """The same two seeds' gap judged by its spread across seeds: held when the gap is beyond it, not resolved within it."""
    from workflow_src.reporting import tables

    def run(gap_at_seed_2):
        rows = []
        for seed, gap in ((0, 0.5), (1, gap_at_seed_2)):
            rows += [{**_row("sagan", "ptq-quantile", True, 4, 1.0, 0.01), "seed": seed},
                     {**_row("sagan", "ptq-minmax", True, 4, 1.0 + gap, 0.01), "seed": seed}]
        return report.findings(tables.across_seeds(pd.DataFrame(rows))).set_index("finding").loc["quantile"]

    assert run(0.5)["verdict"] == "held"  # 0.5 both times: no spread across seeds
    f = run(-0.4)  # mean gap 0.05, spread across seeds 0.64: within
    assert (f["within"], f["verdict"]) == (1, "not resolved")
    md = report.paper_comparison_md(report.paper_comparison(tables.across_seeds(pd.DataFrame(_seed_rows(0, 1.0, 2.0, 5.0) + _seed_rows(1, 2.0, 2.0, 6.0)))),
                                    tables.across_seeds(pd.DataFrame(_seed_rows(0, 1.0, 2.0, 5.0) + _seed_rows(1, 2.0, 2.0, 6.0))))
    assert "(n = 2 seeds)" in md and "standard deviations across seeds (n = 2" in md


def test_the_paired_test_across_seeds_against_its_closed_form():
    """The t distribution with 2 degrees of freedom has a closed form: two-sided p = 1 - |t| / sqrt(2 + t^2)."""
    import math

    def closed(d):
        mean = sum(d) / 3
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
        t = mean / (sd / math.sqrt(3))
        return 1 - abs(t) / math.sqrt(2 + t * t)

    a = [1.0, 3.0, 5.0]
    for d in ([1.0, 2.0, 3.0], [0.1, 0.12, 0.08], [-0.5, 0.2, 0.1]):
        assert report.paired_p(a, [x + y for x, y in zip(a, d)]) == pytest.approx(closed(d), rel=1e-9)
    assert report.paired_p(a, [x + y for x, y in zip(a, [1.0, 2.0, 3.0])]) > report.PAIRED_ALPHA  # p 0.074
    assert report.paired_p(a, [x + 0.5 for x in a]) == 0.0 and report.paired_p(a, a) == 1.0  # no spread of the differences
    assert report.paired_p([1.0, 2.0], [2.0, 3.0]) is None  # below PAIRED_MIN_SEEDS
    with pytest.raises(ValueError, match="3 values on one side, 2"):
        report.paired_p(a, [1.0, 2.0])


def test_a_gap_within_the_spread_across_seeds_is_decided_by_the_paired_test():
    """Three seeds whose FP models differ a lot (1, 3, 5) while min-max stays 0.08-0.12 above quantile at
    each: the spread across seeds (std 2 per side) hides the gap, the paired test finds it (p 0.013)."""
    from workflow_src.reporting import tables

    rows = []
    for seed, base, gap in ((0, 1.0, 0.10), (1, 3.0, 0.12), (2, 5.0, 0.08)):
        rows += [{**_row("sagan", "ptq-quantile", True, 4, base, 0.01), "seed": seed},
                 {**_row("sagan", "ptq-minmax", True, 4, base + gap, 0.01), "seed": seed}]
    per_seed = pd.DataFrame(rows)
    agg = tables.across_seeds(per_seed)
    alone = report.finding_cells(agg, report.FINDINGS[0]).iloc[0]
    assert (alone["verdict"], alone["decided_by"], alone["p_paired"]) == ("within", "", None)
    cell = report.finding_cells(agg, report.FINDINGS[0], per_seed).iloc[0]
    assert (cell["verdict"], cell["decided_by"], cell["seeds_paired"]) == ("held", "paired test", 3)
    assert cell["p_paired"] == pytest.approx(1 - 8.660254 / (2 + 75.0) ** 0.5, rel=1e-5)
    f = report.findings(agg, per_seed).set_index("finding").loc["quantile"]
    assert (f["held"], f["paired"], f["verdict"]) == (1, 1, "held")
    md = report.paper_comparison_md(report.paper_comparison(agg), agg, per_seed=per_seed)
    assert "By paired test" in md and "paired t-test across its 3 seeds" in md
    # the opposite gap at one seed: no longer consistent, within again
    flipped = per_seed.copy()
    flipped.loc[(flipped["seed"] == 2) & (flipped["method"] == "ptq-minmax"), "qfid"] = 5.0 - 0.3
    cell = report.finding_cells(tables.across_seeds(flipped), report.FINDINGS[0], flipped).iloc[0]
    assert cell["verdict"] == "within" and cell["p_paired"] > report.PAIRED_ALPHA
