"""The paper profile, run for real in miniature (issue 15.4): configs/paper.yaml with
configs/paper-smoke.yaml stacked over it, every paper model size and code path (rosinality StyleGAN
128 imported from a checkpoint in its published layout, heykeetae SAGAN 64, CycleGAN 256 with 9
blocks, pytorch-fid's Inception, torchvision's VGG16), the datasets read through the downloaders'
``path:`` option from archives in their real formats, all written here (tests/paper_inputs.py)."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from workflow_src import config as qcfg
from workflow_src.reporting import gpucheck
from workflow_src.reporting.timing import job_times
from workflow_src.workflow.dvc_yaml import snakemake_jobs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper(paper_run):
    """The run (started in the background when the session began: tests/conftest.py), its configs and
    the merged params."""
    work, configs = paper_run
    return work, configs, qcfg.load([ROOT / "params.yaml", *configs])


@pytest.mark.paper
def test_every_rule_method_and_arch_ran_at_paper_sizes(paper):
    work, configs, cfg = paper
    planned = {j["rule"] for j in snakemake_jobs(ROOT, [str(c) for c in configs])}
    ran = set(job_times(work)["rule"]) | {"report"}
    assert planned == ran, planned ^ ran
    # the paper's own inputs: a published checkpoint imported, weights fetched, real-format datasets prepared
    assert {"import_fp", "fetch_inception", "fetch_vgg16", "prepare_data", "train_fp", "qat", "quantile_sweep", "export"} <= ran
    df = pd.read_csv(work / "reports" / "results.csv")
    variants = [v.name for v in qcfg.variants(cfg)]
    assert len(df) == 3 * (1 + len(variants))
    assert set(df["method"]) == {"fp"} | set(cfg["matrix"]["methods"]) and set(df["arch"]) == {"stylegan", "sagan", "cyclegan"}
    assert df[["fid", "qfid"]].fillna(0).map(math.isfinite).all().all()
    # scored with the stand-in Inception, and named so: never read as the published network's FID
    assert df["feature_space"].str.fullmatch(r"inception-2048d-sha256-[0-9a-f]{12}").all()
    # paper sizes: 128, 64 and 256 pixels (the distillation sets hold the FP generators' outputs)
    for arch, res in (("stylegan", 128), ("sagan", 64), ("cyclegan", 256)):
        outputs = torch.load(work / "distill" / "s0" / f"{arch}.pt", weights_only=True)["outputs"]
        assert tuple(outputs.shape[-3:]) == (3, res, res), (arch, outputs.shape)


@pytest.mark.paper
def test_every_computing_job_records_the_configured_device(paper):
    """runtime.device is auto here, so the CPU: every JSON record says so, and the GPU check, which
    wants CUDA, fails on this run and names every GPU rule's jobs (it can fail: scripts/gpu-check.sh)."""
    work, configs, _ = paper
    records = gpucheck.recorded_devices(work)
    assert records and all(set(d) == {"cpu"} for d in records.values()), records
    assert any(p.startswith("metrics/") for p in records) and any(p.startswith("models/s0/q/") for p in records)
    rules = gpucheck.gpu_rules([str(c) for c in configs])
    assert {"train_fp", "distill", "real_stats", "quantize", "qat", "evaluate", "quantile_sweep"} <= set(rules)
    table, problems = gpucheck.check(work, rules)
    assert set(table["rule"]) == set(rules) and (table["on_gpu"] == 0).all()
    assert sum("allocated no GPU memory" in p for p in problems) == table["jobs"].sum()
    assert gpucheck.main([str(work), "--configfile", *map(str, configs)]) == 1


@pytest.mark.paper
def test_the_report_shows_where_the_time_and_memory_go(paper):
    work, _, _ = paper
    timing = (work / "reports" / "timing.md").read_text()
    jobs = job_times(work)
    assert (jobs["max_rss_mb"] > 0).all() and jobs["peak_gpu_mb"].isna().all()
    for rule in set(jobs["rule"]) - {"report"}:  # the report job writes the table before its own benchmark exists
        assert f"| {rule} |" in timing, rule
    assert "peak GPU MB" not in timing  # no job used a GPU here
    assert json.loads((work / "reports" / "summary.json").read_text())
