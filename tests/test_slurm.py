"""The workflow on a real SLURM cluster.

scripts/slurm-up.sh brings up a single-node slurmctld + slurmd (from apt, root only) whose node has
fake GPUs declared through gres; the micro workflow then runs through profiles/slurm and
snakemake-executor-plugin-slurm to the report.  The controller's own job records (kept for MinJobAge)
show what every job asked for.  While it runs, one training job and one QAT job are requeued by
SLURM (as preemption would) and must resume from their checkpoints.  A job that fails is reported
with its SLURM log (a second workflow, run beside the first).  scripts/slurm-down.sh always tears the cluster down again.
All of it runs in the background from the session's start (tests/slurm_run.py); these tests run
last and read what it recorded.

Skipped, with the reason, where the cluster cannot be brought up (not root, no apt, packages not
installable); CI runs it on a machine like the development one (root, apt).
"""
import re
from pathlib import Path

import pandas as pd
import pytest

from slurm_run import MICRO, job_records, rule_of
from workflow_src import config as qcfg

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]

# The split: these rules need a GPU, these run on CPUs only, these on the login node.
GPU_RULES = {"train_fp", "distill", "quantize", "qat", "evaluate", "evaluate_fp", "real_stats", "sensitivity",
             "train_features", "train_perceptual", "quantile_sweep", "noise_floor"}
CPU_RULES = {"eval_inputs", "fig1", "fig_sensitivity", "sample_figure", "report", "export_fp", "export"}
LOCAL_RULES = {"prepare_data", "fetch_inception", "fetch_vgg16"}


@pytest.fixture(scope="module")
def slurm_run(slurm_background):
    """What the background SLURM run (tests/slurm_run.py, started with the session) recorded, once it
    has ended; skipped with its reason where no cluster can be had here."""
    run = slurm_background
    info = run.result() if run.skip is None else None
    if run.skip is not None:
        pytest.skip(run.skip)
    return info


@pytest.fixture(scope="module")
def micro_on_slurm(slurm_run):
    print(f"micro workflow on SLURM: {slurm_run['micro']['elapsed']:.0f} s")
    return slurm_run["micro"]


@pytest.fixture(scope="module")
def tracking_server(slurm_run):
    return slurm_run["tracking"]


def test_micro_report_through_the_slurm_executor(micro_on_slurm):
    work = micro_on_slurm["work"]
    cfg = qcfg.load([ROOT / "params.yaml", MICRO, work / "longer.yaml"])
    archs, variants = cfg["matrix"]["archs"], [v.name for v in qcfg.variants(cfg)]
    df = pd.read_csv(work / "reports" / "results.csv")
    assert len(df) == len(archs) * (1 + len(variants))
    assert (work / "reports" / "index.html").stat().st_size > 0
    assert "SLURM run ID" in micro_on_slurm["log"]


def test_the_jobs_log_to_the_tracking_server(micro_on_slurm, tracking_server):
    """Every evaluation job of the run is an MLflow run on the server (`make mlflow-server`), tagged
    with this invocation's workflow id; the server's store holds them and the working directory
    has no sqlite store of its own."""
    from mlflow.tracking import MlflowClient

    work = micro_on_slurm["work"]
    client = MlflowClient(tracking_server["uri"])
    runs = client.search_runs([client.get_experiment_by_name("qgan-bench-micro").experiment_id], max_results=1000)
    evaluated = {(r.data.tags["arch"], r.data.tags.get("variant")) for r in runs if r.data.tags.get("stage") == "evaluate"}
    jobs = [j for j in micro_on_slurm["jobs"] if rule_of(j) in ("evaluate", "evaluate_fp")]
    assert len(evaluated) == len(jobs) > 0
    assert len({r.data.tags["workflow_id"] for r in runs}) == 1
    assert (tracking_server["store"] / "mlflow.db").stat().st_size > 0 and not (work / "mlflow.db").exists()


def test_gpu_rules_ask_slurm_for_a_gpu_and_cpu_rules_do_not(micro_on_slurm):
    """The controller's record of every job: GPU rules carry a gres/gpu request, CPU rules none,
    local rules never reach SLURM; cpus, memory and wall time are the params' `resources`."""
    work, jobs = micro_on_slurm["work"], micro_on_slurm["jobs"]
    cfg = qcfg.load([ROOT / "params.yaml", MICRO, work / "longer.yaml"])
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(rule_of(job), []).append(job)
    # every rule of the micro DAG that is not local went through SLURM, and nothing else did
    assert set(by_rule) == (GPU_RULES | CPU_RULES), sorted(by_rule)
    # one SLURM job per Snakemake job: 3 archs x (fp + variants) evaluations, ...
    assert len(by_rule["evaluate"]) == len(cfg["matrix"]["archs"]) * len(qcfg.variants(cfg))
    for rule, rjobs in by_rule.items():
        want = qcfg.rule_resources(cfg, rule)
        for job in rjobs:
            what = f"{rule} (SLURM job {job['JobId']}: {job.get('TresPerJob')!r})"
            if rule in GPU_RULES:
                assert job.get("TresPerJob") == "gres:gpu:1", what
            else:
                assert "gpu" not in job.get("TresPerJob", "") and "gpu" not in job.get("TRES", ""), what
            assert job["Partition"] == "gpu" and job["JobState"] == "COMPLETED", what
            assert job["MinMemoryNode"] == f"{want['mem_mb']}M", what
            assert int(job["NumCPUs"]) == want["cpus"], what
            h, m, s = map(int, job["TimeLimit"].split(":"))
            assert h * 60 + m == want["runtime"] and s == 0, what


def test_requeued_training_and_qat_resume_from_their_checkpoints(micro_on_slurm):
    work, jobs = micro_on_slurm["work"], {j["JobId"]: j for j in micro_on_slurm["jobs"]}
    for rule, jobid in micro_on_slurm["requeued"].items():
        assert jobs[jobid]["Restarts"] == "1" and jobs[jobid]["JobState"] == "COMPLETED", jobs[jobid]
    assert re.search(r"resuming stylegan from models/s0/fp/stylegan.ckpt.pt at step [1-9]", (work / "logs" / "train_fp" / "s0" / "stylegan.log").read_text())
    qat_logs = [p.read_text() for p in (work / "logs" / "qat").rglob("*.log")]
    assert sum(bool(re.search(r"resuming (ma|lsq)-qat at epoch [1-9]", t)) for t in qat_logs) == 1
    # the loss logs survive the requeue: every step once, in order
    losses = pd.read_csv(work / "models" / "s0" / "fp" / "stylegan.losses.csv")
    assert list(losses["step"]) == list(range(200))
    for path in (work / "models" / "s0" / "q").glob("*/*-qat-*.losses.csv"):
        steps = list(pd.read_csv(path)["step"])
        assert steps == list(range(len(steps))) and steps, path


def test_failing_job_is_reported_with_its_slurm_log(slurm_run):
    """A corrupt training checkpoint makes the SLURM job fail; Snakemake names its SLURM log."""
    work, returncode = slurm_run["failing"]["work"], slurm_run["failing"]["returncode"]
    out = (work / "snakemake.out").read_text()
    assert returncode != 0, out[-3000:]
    assert "Error in rule train_fp" in out, out[-3000:]
    m = re.search(r"log: logs/train_fp/s0/stylegan\.log, (\S+/\.snakemake/slurm_logs/rule_train_fp/0_stylegan/(\d+)\.log)", out)
    assert m, out[-3000:]
    slurm_log, jobid = Path(m.group(1)), m.group(2)
    assert slurm_log.is_file() and str(slurm_log).startswith(str(work))
    assert "Error in rule train_fp" in slurm_log.read_text()
    assert "cannot load checkpoint" in out  # show-failed-logs: the rule's own log, printed
    record = next(j for j in job_records() if j["JobId"] == jobid)
    assert record["JobState"] == "FAILED" and record.get("TresPerJob") == "gres:gpu:1", record
