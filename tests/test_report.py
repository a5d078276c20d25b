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


def test_comparison_puts_ours_beside_the_paper_with_the_difference():
    cfg = qcfg.load([ROOT / "params.yaml"])
    ours = pd.DataFrame([
        {"arch": "stylegan", "method": "lsq-qat", "per_channel": False, "w_bits": 4, "a_bits": 8, "fid": 30.0, "qfid": 12.5,
         "fid_std": 0.4, "qfid_std": 0.2, "feature_space": "inception-2048d"},
        {"arch": "stylegan", "method": "fp", "per_channel": None, "w_bits": 32, "a_bits": 32, "fid": 25.0, "qfid": 0.0,
         "fid_std": 0.3, "qfid_std": 0.0, "feature_space": "inception-2048d"},
    ])
    cmp = report.paper_comparison(ours, cfg)
    lsq = cmp[(cmp["method"] == "lsq-qat") & (cmp["arch"] == "stylegan") & (cmp["bits"] == "w4a8")].iloc[0]
    assert lsq["paper_qfid"] == 11.0 and lsq["ours_qfid"] == 12.5 and lsq["diff_qfid"] == pytest.approx(1.5)
    assert lsq["diff_fid"] == pytest.approx(30.0 - 33.1)
    missing = cmp[(cmp["method"] == "ma-qat") & (cmp["arch"] == "sagan")]
    assert missing["ours_fid"].isna().all()
    md = report.paper_comparison_md(cmp)
    assert "| Table 4 | StyleGAN | LSQ-QAT | ✗ | w4a8 | 33.10 | 30.00 ± 0.40 | -3.10 | 11.00 | 12.50 ± 0.20 | 1.50 |" in md
    appendix_b = cmp[cmp["table"] == "App. B"]
    assert len(appendix_b) == 2 and appendix_b["ours_qfid"].isna().all()  # our QAT used the perceptual loss


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
        bench = tmp_path / stage("evaluate").benchmark.format(arch=job.split("/")[0], variant=job.split("/")[1])
        _bench(bench, wall, cpu, rss)
        log = tmp_path / stage("evaluate").log.format(arch=job.split("/")[0], variant=job.split("/")[1])
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("" if start is None else f"progress\n{STARTUP_MARK} {start:.2f} s after the process started\nmore\n")
    _bench(tmp_path / stage("report").benchmark, 5.0, 4.0, 200.0)
    (tmp_path / stage("report").log).write_text(f"{STARTUP_MARK} 1.00 s after the process started\n")
    jobs = job_times(tmp_path)
    assert sorted(jobs["job"]) == ["-", "sagan/a", "stylegan/a", "stylegan/b"]
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
        _bench(tmp_path / stage("evaluate").benchmark.format(arch="sagan", variant=variant), 12.0, 0.1, 19.0)
        log = tmp_path / stage("evaluate").log.format(arch="sagan", variant=variant)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"{STARTUP_MARK} 0.31 s after the process started (forked by the warm process)\nwork\n"
                       + (f"{RESOURCES_MARK} cpu 17.25 s, peak rss 812.5 MB\n" if record else ""))
    jobs = job_times(tmp_path).set_index("job")
    assert (jobs.loc["sagan/a", "cpu_s"], jobs.loc["sagan/a", "max_rss_mb"], jobs.loc["sagan/a", "startup_s"]) == (17.25, 812.5, 0.31)
    assert (jobs.loc["sagan/b", "cpu_s"], jobs.loc["sagan/b", "max_rss_mb"]) == (0.1, 19.0)  # a job that died before its record
