"""`make report`'s runner (scripts/run-workflow.sh), run for real on one cheap target in a copy of
the checkout: one run at a time per directory, and after a kill -9 the next run just works."""
from __future__ import annotations

import fcntl
import json
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
CHECKOUT = ("Snakefile", "rules", "envs", "workflow_src", "params.yaml", "configs", "profiles", "scripts", "Makefile")


def _copy_checkout(wd: Path) -> Path:
    wd.mkdir()
    for name in CHECKOUT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, wd / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, wd / name)
    return wd


@pytest.fixture
def checkout(tmp_path):
    return _copy_checkout(tmp_path / "checkout")


def _env():
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "QGAN_TRACKING": "off"}


def _run(wd, *args, cores="1", **kwargs):
    return subprocess.run(["bash", "scripts/run-workflow.sh", "--cores", cores, *args], cwd=wd, env=_env(),
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
    config (another evaluation sample count) parses in the same directory; A's eval inputs are still those of A's
    params (before, both shared .qgan/params.yaml, which the dry run rewrote)."""
    from workflow_src import config as qcfg
    from workflow_src.utils import torch_load
    from workflow_src.workflow.distill import eval_inputs

    target = "eval/s0/stylegan/inputs.pt"
    other = tmp_path / "other.yaml"
    other.write_text(f"eval: {{n_samples: {qcfg.load([checkout / 'params.yaml'])['eval']['n_samples'] + 8}}}\n")
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


# Kill moments of the whole-report test, in the order they first come true: mid-parse, inside each
# resumable kind of job (FP training, a BRECQ block, a QAT epoch, the sweep), an evaluation, the report.
KILL_WHEN = ["started", "models/s0/fp/cyclegan.ckpt.pt", "metrics/s0/cyclegan/*.ckpt.pt", "sweeps/s0/cyclegan/*.ckpt.pt",
             "models/s0/q/cyclegan/*-brecq-*.pt.ckpt.pt", "models/s0/q/cyclegan/*-qat-*.pt.ckpt.pt",
             "logs/evaluate/s0/cyclegan/*.log", "logs/report.log"]
# What a result row holds that a wall clock decides: the integer export's latencies, and the columns of the
# runtime that was faster (each runtime's own numbers are compared in its export record, timings aside).
TIMED = ["runtime", "size_ratio", "latency_ratio", "latency_ratio_b1", "export_within_step", "export_qfid",
         "onnxruntime_latency_ratio", "pt2e_latency_ratio", "deployable_latency_ratio"]
TIMED_EXPORT = {"fp_latency_ms", "latency_ms", "latency_ratio", "profile", "profile_share", "seconds"}


@pytest.mark.workflow
def test_make_report_killed_with_kill_9_again_and_again_ends_with_the_results_of_an_uninterrupted_run(tmp_path, micro_run):
    """Issue 16: `make report`'s runner on the micro matrix of one arch (CycleGAN: its QAT keeps the epoch
    the validation qFID ranks best, the most state a resume must carry), killed with SIGKILL (Snakemake,
    its jobs' commands, the warm process's children left to their fate) at every moment of KILL_WHEN that
    comes, rerun after each kill: its rows of results.csv and its export records equal those of the
    uninterrupted run of the whole micro matrix (`micro_run`; an arch scores the same alone as in the
    matrix, and the kill moments are files, not times, so no result depends on the machine's load)."""
    import pandas as pd

    config = ["--configfile", "configs/micro.yaml", "one-arch.yaml"]
    wd = _copy_checkout(tmp_path / "killed")
    (wd / "one-arch.yaml").write_text("matrix: {archs: [cyclegan]}\n")
    pending, kills = list(KILL_WHEN), []
    env = {k: v for k, v in _env().items() if k != "QGAN_TRACKING"}  # tracked in MLflow, as `make report` is
    for attempt in range(len(KILL_WHEN) + 2):
        started = time.time()
        run = subprocess.Popen(["bash", "scripts/run-workflow.sh", "--cores", "2", "report", *config], cwd=wd, env=env,
                               stdout=subprocess.DEVNULL, stderr=open(wd / f"attempt{attempt}.err", "w"), start_new_session=True)
        fired = None
        while run.poll() is None and fired is None and time.time() < started + 600:
            for when in pending:  # a file this attempt wrote: its job is running (or has just finished)
                if (when == "started" and time.time() > started + 1.5) or \
                        (when != "started" and any(p.stat().st_mtime > started for p in wd.glob(when))):
                    fired = when
                    break
            time.sleep(0.05)
        if fired is None:
            break
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        pending.remove(fired)
        kills.append(fired)
    assert run.wait(timeout=600) == 0, (wd / f"attempt{attempt}.err").read_text()[-3000:]
    # the moments that always come: the parse, FP training's first checkpoint, the sweep's first variant,
    # a QAT epoch, an evaluation's start, the report
    assert set(kills) >= set(KILL_WHEN) - {"metrics/s0/cyclegan/*.ckpt.pt", "models/s0/q/cyclegan/*-brecq-*.pt.ckpt.pt"}, kills
    # each kill after Snakemake took its lock (all but one that came while it parsed) left it for the runner to clear
    cleared = sum("clearing the Snakemake lock of a killed run" in p.read_text() for p in wd.glob("attempt*.err"))
    assert cleared >= len(kills) - 1, (cleared, kills)

    got = pd.read_csv(wd / "reports" / "results.csv").drop(columns=TIMED)
    want = pd.read_csv(micro_run / "reports" / "results.csv").drop(columns=TIMED)
    assert set(got["arch"]) == {"cyclegan"}
    want = want[want["arch"] == "cyclegan"].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    exports = sorted(p.relative_to(wd) for p in wd.glob("metrics/s*/*/*.export.json"))
    assert exports
    drop = lambda rec: {k: v for k, v in rec.items() if k not in TIMED_EXPORT}  # noqa: E731
    for path in exports:
        got, want = (json.loads((d / path).read_text()) for d in (wd, micro_run))
        assert got["runtimes"].keys() == want["runtimes"].keys(), path
        for runtime in got["runtimes"]:
            assert drop(got["runtimes"][runtime]) == drop(want["runtimes"][runtime]), (path, runtime)
        # the deployable scheme's record: its calibration, convs and quality cost, its file's numbers
        dep = [{**drop(r["schemes"]["deployable"]), "onnxruntime": drop(r["schemes"]["deployable"]["onnxruntime"])} for r in (got, want)]
        assert dep[0] == dep[1], path

    # `make clean` removes everything the runs wrote, the MLflow store included, and nothing else
    assert (wd / "mlflow.db").exists() and (wd / "sweeps").exists() and (wd / "sensitivity").exists()
    subprocess.run(["make", "clean"], cwd=wd, check=True, capture_output=True)
    assert sorted(p.name for p in wd.iterdir() if not p.name.startswith("attempt")) == sorted([*CHECKOUT, "one-arch.yaml"])
