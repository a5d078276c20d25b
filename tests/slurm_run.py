"""The SLURM integration run of tests/test_slurm.py, started in the background when the session begins.

One thread brings a local cluster up (scripts/slurm-up.sh), starts a tracking server (`make
mlflow-server`), a workflow whose training job must fail and the micro workflow through
profiles/slurm, requeues one training and one QAT job of the latter as soon as each has a
checkpoint, and waits for both workflows.  Most of that time the executor waits for its next
status poll, so the rest of the suite computes meanwhile; the SLURM tests run last and read what
the thread recorded (:meth:`SlurmRun.result`).  :meth:`SlurmRun.close` stops what is left and
tears the cluster down (scripts/slurm-down.sh).
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import slurm_plugins

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
MICRO = ROOT / "configs" / "micro.yaml"
SLURM_CONF = Path("/etc/slurm/slurm.conf")

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


class SlurmRun:
    """The background run; ``result()`` waits for it (see the module's text)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.skip: Optional[str] = None  # why the cluster cannot be had here
        self.error: Optional[BaseException] = None
        self.cluster_up = False
        self.info: Dict[str, Any] = {}
        self._procs: list = []
        self._stack = contextlib.ExitStack()
        self._thread = threading.Thread(target=self._run, name="slurm-run", daemon=True)

    def start(self) -> "SlurmRun":
        self._thread.start()
        return self

    def result(self) -> Dict[str, Any]:
        """What the run recorded, once it has ended; raises what went wrong in it."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.info

    def _run(self) -> None:
        try:
            self._setup_and_run()
        except BaseException as e:  # reported to the tests that read the result
            self.error = e

    def _setup_and_run(self) -> None:
        if os.geteuid() != 0:
            self.skip = "needs root: scripts/slurm-up.sh installs and starts munge, slurmctld and slurmd"
            return
        plugins = slurm_plugins.find()
        if plugins is None:
            self.skip = slurm_plugins.NOT_INSTALLED
            return
        up = subprocess.run(["bash", str(SCRIPTS / "slurm-up.sh")], capture_output=True, text=True, timeout=900)
        self.cluster_up = True  # slurm-down.sh after any attempt: it removes whatever part came up
        if up.returncode == 3:
            self.skip = (up.stderr.strip().splitlines() or ["slurm-up.sh: cannot host a cluster"])[-1]
            return
        assert up.returncode == 0, f"slurm-up.sh failed ({up.returncode}):\n{up.stdout}\n{up.stderr}"

        from mlflow_server import served_store

        store = self.tmp / "mlflow-server"
        store.mkdir()
        uri = self._stack.enter_context(served_store(store))
        self.info["tracking"] = {"uri": uri, "store": store}

        # the failing workflow first (it does not track): a corrupt training checkpoint; its own directory
        fail = self.tmp / "slurm-failure"
        (fail / "models" / "s0" / "fp").mkdir(parents=True)
        (fail / "models" / "s0" / "fp" / "stylegan.ckpt.pt").write_bytes(b"not a checkpoint")
        with open(fail / "snakemake.out", "w") as out:
            failing = subprocess.Popen(snakemake(fail, "models/s0/fp/stylegan.pt", "--retries", "0", "--configfile", str(MICRO)),
                                       env={**os.environ, **plugins, "QGAN_TRACKING": "off"}, stdout=out, stderr=subprocess.STDOUT, text=True)
        self._procs.append(failing)

        # the micro workflow logs to the tracking server (the README's way on a cluster)
        work = self.tmp / "slurm-micro"
        work.mkdir()
        (work / "longer.yaml").write_text(LONGER)
        started = time.time()
        env = {**os.environ, **plugins, "MLFLOW_TRACKING_URI": uri}
        env.pop("QGAN_TRACKING", None)
        with open(work / "snakemake.out", "w") as out:
            proc = subprocess.Popen(snakemake(work, "report", "--configfile", str(MICRO), str(work / "longer.yaml")),
                                    env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        self._procs.append(proc)
        requeued = {
            "train_fp": _requeue_when_checkpointed(work, "models/s0/fp/stylegan.ckpt.pt", "train_fp", proc, started + 1500),
            "qat": _requeue_when_checkpointed(work, "models/s0/q/stylegan/*-qat-*.pt.ckpt.pt", "qat", proc, started + 1500),
        }
        proc.wait(timeout=1800)
        elapsed = time.time() - started
        failing.wait(timeout=900)
        self.info["failing"] = {"work": fail, "returncode": failing.returncode}
        log = (work / "snakemake.out").read_text()
        if proc.returncode != 0:
            logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in sorted((work / "logs").rglob("*.log")))
            raise AssertionError(f"workflow on SLURM failed ({proc.returncode}):\n{log[-6000:]}\n{logs[-6000:]}")
        self.info["micro"] = {"work": work, "log": log, "requeued": requeued, "elapsed": elapsed,
                              "jobs": [j for j in job_records() if j.get("WorkDir") == str(work)]}

    def close(self) -> Optional[str]:
        """Stop what still runs, the tracking server, and the cluster; returns what went wrong in
        tearing it down (None: nothing)."""
        for p in self._procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
        self._thread.join(timeout=120)
        self._stack.close()
        if not self.cluster_up:
            return None
        down = subprocess.run(["bash", str(SCRIPTS / "slurm-down.sh")], capture_output=True, text=True, timeout=300)
        if down.returncode != 0:
            return f"slurm-down.sh failed ({down.returncode}):\n{down.stdout}\n{down.stderr}"
        if os.path.lexists(SLURM_CONF):
            return "slurm-down.sh left /etc/slurm/slurm.conf behind"
        return None
