"""`make report`'s runner (scripts/run-workflow.sh), run for real on one cheap target in a copy of
the checkout: one run at a time per directory, and after a kill -9 the next run just works."""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TARGET = "data/digits"  # rule prepare_data: a few seconds, offline


@pytest.fixture
def checkout(tmp_path):
    wd = tmp_path / "checkout"
    wd.mkdir()
    for name in ("Snakefile", "rules", "envs", "workflow_src", "params.yaml", "configs", "profiles", "scripts"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, wd / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, wd / name)
    return wd


def _env():
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "QGAN_TRACKING": "off"}


def _run(wd, *args, **kwargs):
    return subprocess.run(["bash", "scripts/run-workflow.sh", "--cores", "1", *args], cwd=wd, env=_env(),
                          capture_output=True, text=True, **kwargs)


def test_a_second_run_in_the_same_directory_says_one_is_running(checkout):
    lock = checkout / ".qgan" / "workflow.lock"
    lock.parent.mkdir()
    with open(lock, "a") as held:  # a run in progress holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = _run(checkout, TARGET)
    assert proc.returncode == 75, proc.stderr
    assert "another workflow run is active" in proc.stderr and ".qgan/workflow.lock" in proc.stderr
    assert not (checkout / TARGET).exists()


def test_after_kill_9_the_next_run_just_works(checkout):
    run = subprocess.Popen(["bash", "scripts/run-workflow.sh", "--cores", "1", TARGET], cwd=checkout, env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = checkout / "logs" / "prepare_data" / "digits.log"
    deadline = time.time() + 120
    while not (log.exists() and list((checkout / ".snakemake" / "locks").glob("*"))) and time.time() < deadline:
        time.sleep(0.1)
    assert run.poll() is None, "the run ended before it could be killed"
    os.killpg(run.pid, signal.SIGKILL)  # Snakemake and its job, mid-job
    run.wait()
    assert list((checkout / ".snakemake" / "locks").glob("*")), "a killed run leaves Snakemake's lock"
    plain = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", TARGET], cwd=checkout, env=_env(),
                           capture_output=True, text=True)
    assert plain.returncode != 0 and "locked" in plain.stdout + plain.stderr  # what a user met before
    proc = _run(checkout, TARGET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "clearing the Snakemake lock of a killed run" in proc.stderr
    assert (checkout / TARGET / "manifest.json").exists()
    assert not list((checkout / ".snakemake" / "locks").glob("*"))


def test_a_dry_run_of_another_config_does_not_change_what_a_running_invocation_reads(checkout, tmp_path):
    """Invocation A runs prepare_data then eval_inputs; paused between them, a dry run of another
    config (another seed) parses in the same directory; A's eval inputs are still those of A's
    params (before, both shared .qgan/params.yaml, which the dry run rewrote)."""
    from workflow_src import config as qcfg
    from workflow_src.utils import torch_load
    from workflow_src.workflow.distill import eval_inputs

    target = "eval/stylegan/inputs.pt"
    other = tmp_path / "other.yaml"
    other.write_text("seed: 7\n")
    with open(tmp_path / "a.out", "w") as out:
        run = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", target], cwd=checkout, env=_env(),
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while not (checkout / "logs" / "prepare_data" / "digits.log").exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGSTOP)  # Snakemake waits: its next job, eval_inputs, starts after the dry run
        try:
            dry = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", target, "--configfile", str(other)],
                                 cwd=checkout, env=_env(), capture_output=True, text=True)
        finally:
            os.kill(run.pid, signal.SIGCONT)
        assert run.wait(timeout=300) == 0, (tmp_path / "a.out").read_text()[-3000:]
    assert dry.returncode == 0, dry.stderr[-2000:]
    cfg = qcfg.load([checkout / "params.yaml"])
    eval_inputs(cfg, arch="stylegan", data=str(checkout / "data" / "digits"), out=str(tmp_path / "alone.pt"))
    got, alone = torch_load(checkout / target), torch_load(tmp_path / "alone.pt")
    assert torch.equal(got["inputs"], alone["inputs"]) and torch.equal(got["extras"]["noise_seed"], alone["extras"]["noise_seed"])
    assert len(list((checkout / ".qgan").glob("params-*.yaml"))) == 2  # one per config, each written once
