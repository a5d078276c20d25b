"""The workflow on a real SLURM cluster.

scripts/slurm-up.sh brings up a single-node slurmctld + slurmd (from apt, root only) whose node has
fake GPUs declared through gres; the micro workflow then runs through profiles/slurm and
snakemake-executor-plugin-slurm to the report.  The controller's own job records (kept for MinJobAge)
show what every job asked for.  While it runs, one training job and one QAT job are requeued by
SLURM (as preemption would) and must resume from their checkpoints.  A job that fails is reported
with its SLURM log (a second workflow, run beside the first).  scripts/slurm-down.sh always tears the cluster down again.

Skipped, with the reason, where the cluster cannot be brought up (not root, no apt, packages not
installable); CI runs it on a machine like the development one (root, apt).
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from slurm_plugins import plugin_env
from workflow_src import config as qcfg

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
MICRO = ROOT / "configs" / "micro.yaml"
SLURM_CONF = Path("/etc/slurm/slurm.conf")

# The split: these rules need a GPU, these run on CPUs only, these on the login node.
GPU_RULES = {"train_fp", "distill", "quantize", "qat", "evaluate", "evaluate_fp", "real_stats", "sensitivity",
             "train_features", "train_perceptual", "quantile_sweep", "noise_floor"}
CPU_RULES = {"eval_inputs", "fig1", "fig_sensitivity", "sample_figure", "report", "export_fp", "export"}
LOCAL_RULES = {"prepare_data", "fetch_inception", "fetch_vgg16"}

# What only this throwaway cluster needs: it has no accounting storage, so `sacct` cannot answer and
# the executor polls squeue (the controller keeps finished jobs for an hour); it polls every few
# seconds instead of every 40 s; SLURM logs of successful jobs are kept for the checks below.
LOCAL_CLUSTER = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "3",
                 "--slurm-keep-successful-logs"]

# The micro config cut to one arch and two variants, one per rule (min-max PTQ at w8, exported; MA-QAT
# at w4), so that every rule of the DAG runs through SLURM once; and longer training and QAT than the
# micro config, so that a checkpoint exists well before the job ends and the requeue below lands in
# the middle of it.
LONGER = """\
matrix:
  archs: [stylegan]
  methods: [ptq-minmax, ma-qat]
  exclude: [{method: ptq-minmax, w_bits: 4}, {method: ma-qat, w_bits: 8}]
archs:
  stylegan:
    train: {steps: 200}
    qat: {epochs: 12, ma_epochs: 6}
train: {checkpoint_every: 20}
"""


# The failure test does not track; the micro run logs to a `make mlflow-server` (the README's way
# on a cluster: one server on the login node, MLFLOW_TRACKING_URI exported to the jobs).
UNTRACKED = {**os.environ, "QGAN_TRACKING": "off"}


def snakemake(workdir: Path, *args: str) -> list:
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
            "--workflow-profile", str(ROOT / "profiles" / "slurm"), *LOCAL_CLUSTER, *args]


def job_records() -> list:
    """Every job the controller still knows (all of this cluster's: MinJobAge is an hour)."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=True).stdout
    jobs = []
    for line in out.splitlines():
        if line.startswith("JobId="):
            jobs.append(dict(m.groups() for m in re.finditer(r"(\w[\w/:]*)=(\S*)", line)))
    return jobs


def rule_of(job: dict) -> str:
    """The rule of a job the executor submitted (it sets --comment rule_<rule>[_wildcards_<w>])."""
    m = re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", job.get("Comment", ""))
    assert m, f"job {job['JobId']} has no executor comment: {job.get('Comment')!r}"
    return m.group(1)


@pytest.fixture(scope="module")
def cluster():
    """Brings the cluster up (and down); yields the environment of the Snakemake runs' plugins."""
    if os.geteuid() != 0:
        pytest.skip("needs root: scripts/slurm-up.sh installs and starts munge, slurmctld and slurmd")
    plugins = plugin_env()
    up = subprocess.run(["bash", str(SCRIPTS / "slurm-up.sh")], capture_output=True, text=True, timeout=900)
    try:
        if up.returncode == 3:
            pytest.skip((up.stderr.strip().splitlines() or ["slurm-up.sh: cannot host a cluster"])[-1])
        assert up.returncode == 0, f"slurm-up.sh failed ({up.returncode}):\n{up.stdout}\n{up.stderr}"
        yield plugins
    finally:
        down = subprocess.run(["bash", str(SCRIPTS / "slurm-down.sh")], capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not os.path.lexists(SLURM_CONF), "slurm-down.sh left /etc/slurm/slurm.conf behind"


def _requeue_when_checkpointed(workdir: Path, ckpt_glob: str, rule: str, proc, deadline: float) -> str:
    """Wait for a checkpoint matching ``ckpt_glob``, then requeue the running SLURM job of ``rule``
    that writes it (as a preemption with PreemptMode=REQUEUE would); returns the SLURM job id."""
    while time.time() < deadline and proc.poll() is None:
        for ckpt in workdir.glob(ckpt_glob):
            for job in job_records():
                if job["JobState"] == "RUNNING" and job.get("WorkDir") == str(workdir) and rule_of(job) == rule:
                    # the comment joins the job's wildcard values with "_" (seed, arch[, variant]); each
                    # is a part of the checkpoint's path (models/s0/fp/stylegan.ckpt.pt)
                    values = job["Comment"].split("_wildcards_")[-1].split("_")
                    if all(v in str(ckpt.relative_to(workdir)) for v in values):
                        subprocess.run(["scontrol", "requeue", job["JobId"]], check=True)
                        _start_now(job["JobId"])
                        return job["JobId"]
        time.sleep(0.2)
    out = (workdir / "snakemake.out").read_text()[-5000:]
    raise AssertionError(f"no running {rule} job with a checkpoint {ckpt_glob} before the workflow ended:\n{out}")


def _start_now(jobid: str) -> None:
    """SLURM holds a requeued job back for two minutes (BeginTime); let it start at once."""
    for _ in range(150):
        state = subprocess.run(["squeue", "-h", "-j", jobid, "--states=all", "-o", "%T"], capture_output=True, text=True).stdout.strip()
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"jobid={jobid}", "StartTime=now"], check=True)
            return
        time.sleep(0.2)
    raise AssertionError(f"requeued SLURM job {jobid} never became PENDING (state {state!r})")


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    from mlflow_server import served_store

    store = tmp_path_factory.mktemp("mlflow-server")
    with served_store(store) as uri:
        yield {"uri": uri, "store": store}


@pytest.fixture(scope="module")
def failing_run(cluster, tmp_path_factory):
    """A workflow whose training job fails on SLURM (a corrupt checkpoint), started before the micro
    run and beside it in its own directory: the executor's polling leaves the cluster idle most of
    the time, and the two runs share no file.  Its test reads what it printed."""
    work = tmp_path_factory.mktemp("slurm-failure")
    (work / "models" / "s0" / "fp").mkdir(parents=True)
    (work / "models" / "s0" / "fp" / "stylegan.ckpt.pt").write_bytes(b"not a checkpoint")
    with open(work / "snakemake.out", "w") as out:
        proc = subprocess.Popen(snakemake(work, "models/s0/fp/stylegan.pt", "--retries", "0", "--configfile", str(MICRO)), env={**UNTRACKED, **cluster},
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        yield {"work": work, "proc": proc}
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)


@pytest.fixture(scope="module")
def micro_on_slurm(cluster, tracking_server, failing_run, tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm-micro")
    (work / "longer.yaml").write_text(LONGER)
    started = time.time()
    env = {**os.environ, **cluster, "MLFLOW_TRACKING_URI": tracking_server["uri"]}
    env.pop("QGAN_TRACKING", None)
    with open(work / "snakemake.out", "w") as out:
        proc = subprocess.Popen(snakemake(work, "report", "--configfile", str(MICRO), str(work / "longer.yaml")),
                                env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            requeued = {
                "train_fp": _requeue_when_checkpointed(work, "models/s0/fp/stylegan.ckpt.pt", "train_fp", proc, started + 1500),
                "qat": _requeue_when_checkpointed(work, "models/s0/q/stylegan/*-qat-*.pt.ckpt.pt", "qat", proc, started + 1500),
            }
            proc.wait(timeout=1800)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
    elapsed = time.time() - started
    log = (work / "snakemake.out").read_text()
    if proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in sorted((work / "logs").rglob("*.log")))
        pytest.fail(f"workflow on SLURM failed ({proc.returncode}):\n{log[-6000:]}\n{logs[-6000:]}")
    print(f"micro workflow on SLURM: {elapsed:.0f} s")
    return {"work": work, "log": log, "requeued": requeued,
            "jobs": [j for j in job_records() if j.get("WorkDir") == str(work)]}


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


def test_failing_job_is_reported_with_its_slurm_log(failing_run):
    """A corrupt training checkpoint makes the SLURM job fail; Snakemake names its SLURM log."""
    work, proc = failing_run["work"], failing_run["proc"]
    proc.wait(timeout=900)
    out = (work / "snakemake.out").read_text()
    assert proc.returncode != 0, out[-3000:]
    assert "Error in rule train_fp" in out, out[-3000:]
    m = re.search(r"log: logs/train_fp/s0/stylegan\.log, (\S+/\.snakemake/slurm_logs/rule_train_fp/0_stylegan/(\d+)\.log)", out)
    assert m, out[-3000:]
    slurm_log, jobid = Path(m.group(1)), m.group(2)
    assert slurm_log.is_file() and str(slurm_log).startswith(str(work))
    assert "Error in rule train_fp" in slurm_log.read_text()
    assert "cannot load checkpoint" in out  # show-failed-logs: the rule's own log, printed
    record = next(j for j in job_records() if j["JobId"] == jobid)
    assert record["JobState"] == "FAILED" and record.get("TresPerJob") == "gres:gpu:1", record
