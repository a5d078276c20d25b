"""The warm process (workflow_src/workflow/forkserver.py): a job's command hands its arguments,
directory, environment and standard streams to a forked child and stands in for it (exit status,
signals); the server declines, and the command runs the job itself, when the sources changed or the
server cannot be reached.  The children here run tests/forkjobs.py instead of the CLI."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


def _serve(tmp_path: Path, target: str, watch: Path | None = None, parent: int | None = None) -> tuple[subprocess.Popen, str]:
    sock = str(tmp_path / "s")
    cmd = [sys.executable, "-m", "workflow_src.workflow.forkserver", "serve", sock, str(parent or os.getpid()), "--target", target]
    if watch is not None:
        cmd += ["--watch", str(watch)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while not os.path.exists(sock):
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()
        time.sleep(0.05)
    return proc, sock


@contextlib.contextmanager
def _served(tmp_path: Path, target: str, watch: Path | None = None):
    server, sock = _serve(tmp_path, target, watch)
    try:
        yield server, sock
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def echo_server(tmp_path):
    with _served(tmp_path, "forkjobs:echo") as served:
        yield served


def _command(sock: str, args, cwd, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workflow_src", *args], cwd=cwd, env=env or {**ENV, "QGAN_FORKSERVER": sock, "FORKTEST": "from the command"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_child_gets_the_commands_arguments_directory_environment_and_streams(echo_server, tmp_path):
    server, sock = echo_server
    seen = []
    for code in ("0", "3"):
        proc = _command(sock, [code, "--flag", "x y"], cwd=tmp_path)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == int(code), err
        seen.append(json.loads(out))
        assert err.strip() == "to stderr"
    for s in seen:
        assert s["cwd"] == str(tmp_path) and s["env"] == "from the command" and s["argv"][1:] == ["--flag", "x y"]
        assert s["ppid"] == server.pid  # forked by the server, not run by the command
    assert seen[0]["numpy"] != seen[1]["numpy"]  # numpy's global generator reseeded in every child
    assert (tmp_path / "server.log").read_text().count("exited") == 2


def _wait_for(path: Path, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.time() + 30
    while not path.exists():
        assert time.time() < deadline and (proc is None or proc.poll() is None), what or f"{path} never appeared"
        time.sleep(0.05)


def test_signals_reach_the_child_and_its_status_is_the_commands(tmp_path):
    with _served(tmp_path, "forkjobs:wait_term") as (server, sock):
        ready, got = tmp_path / "ready", tmp_path / "got"
        proc = _command(sock, [str(ready), str(got)], cwd=tmp_path)
        _wait_for(ready, proc)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 7 and got.read_text() == "term"


def test_a_killed_command_takes_its_child_with_it(tmp_path):
    with _served(tmp_path, "forkjobs:wait_term") as (server, sock):
        ready, got = tmp_path / "ready", tmp_path / "got"
        proc = _command(sock, [str(ready), str(got)], cwd=tmp_path)
        _wait_for(ready, proc)
        proc.kill()  # SIGKILL: nothing to forward; the server sees the connection close
        proc.wait()
        _wait_for(got, what="the orphaned child was not terminated")


@pytest.mark.parametrize("target, code, text", [("forkjobs:crash", 1, "RuntimeError: the job failed: a b"),
                                                ("forkjobs:die", 128 + signal.SIGKILL, "")])
def test_a_failing_or_killed_child_fails_the_command(tmp_path, target, code, text):
    with _served(tmp_path, target) as (server, sock):
        proc = _command(sock, ["a", "b"], cwd=tmp_path)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code and text in err


def test_changed_sources_or_no_server_mean_a_fresh_process(tmp_path):
    """The command then runs the real CLI itself (here: its --help, exit 0)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "m.py").write_text("x = 1\n")
    with _served(tmp_path, "forkjobs:echo", watch=src) as (server, sock):
        proc = _command(sock, ["0"], cwd=tmp_path)
        assert json.loads(proc.communicate(timeout=60)[0])["ppid"] == server.pid
        proc = _command(sock, ["--help"], cwd=tmp_path, env={**ENV, "QGAN_FORKSERVER": sock, "TQDM_MININTERVAL": "7"})
        out, err = proc.communicate(timeout=60)  # tqdm reads TQDM_* when imported: the warm process has other values
        assert proc.returncode == 0 and "usage: python -m workflow_src" in out and "environment differs: TQDM_MININTERVAL" in err
        (src / "m.py").write_text("x = 2\n")
        proc = _command(sock, ["--help"], cwd=tmp_path)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "usage: python -m workflow_src" in out
        assert "changed after the warm process imported them" in err and "running in a fresh process" in err
    proc = _command(str(tmp_path / "nothing-here"), ["--help"], cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "usage:" in out and "unreachable" in err


def test_the_server_stops_when_its_parent_is_gone(tmp_path):
    """A Snakemake killed with SIGKILL runs no onerror: its warm process notices and stops."""
    sock = tmp_path / "s"
    starter = ("import os, subprocess, sys, time\n"
               f"p = subprocess.Popen([sys.executable, '-m', 'workflow_src.workflow.forkserver', 'serve', {str(sock)!r}, str(os.getpid()),"
               " '--target', 'forkjobs:echo'], stdout=subprocess.DEVNULL)\n"
               f"while not os.path.exists({str(sock)!r}): time.sleep(0.05)\n"
               "print(p.pid, flush=True)\n")  # ... and exit, leaving the server behind
    out = subprocess.run([sys.executable, "-c", starter], env=ENV, capture_output=True, text=True, timeout=120)
    pid = int(out.stdout)
    deadline = time.time() + 30
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        assert time.time() < deadline, "the warm process outlived its parent"
        time.sleep(0.1)
    assert not sock.exists()


def test_the_jobs_thread_counts_are_applied_in_the_child(tmp_path):
    """Snakemake sets OMP/OPENBLAS/MKL_NUM_THREADS for every job; libraries read them when they load,
    which the warm process did before: the child resizes its pools to them."""
    with _served(tmp_path, "forkjobs:threads") as (server, sock):
        for n in ("1", "2"):
            env = {**ENV, "QGAN_FORKSERVER": sock, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n}
            proc = _command(sock, [], cwd=tmp_path, env=env)
            out, err = proc.communicate(timeout=60)
            seen = json.loads(out)
            # numpy's and scipy's OpenBLAS both (loaded by the warm process, which sized them to this machine's cores)
            assert len(seen.get("openblas", [])) == 2 and "openmp" in seen, (seen, err)
            assert all(v == int(n) for pools in seen.values() for v in pools), (seen, err)
        assert (tmp_path / "server.log").read_text().count("exited 0") == 2  # forked, not declined


_FIRST_USES = r"""
import sys, tempfile, threading, torch, tqdm
from pathlib import Path
from workflow_src.workflow import forkserver
torch.set_num_threads(2)
forkserver._preload(forkserver.DEFAULT_TARGET)
print("after preload: python threads", threading.active_count(), "torch threads", torch.get_num_threads(),
      "tqdm monitor", tqdm.tqdm.monitor_interval, file=sys.stderr)
before = set(sys.modules)
from workflow_src.config import params
from workflow_src.deploy import onnx_qdq, pt2
from workflow_src.quality import fid
import numpy as np
params.validate(params.load(["params.yaml"]))
m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
x = torch.randn(1, 3, 8, 8)
opt = torch.optim.Adam(m.parameters())
m(x).sum().backward()
opt.step()
out = Path(tempfile.mkdtemp())
pt2.export_program(m, x, out / "m.pt2")
pt2.load_lowered(out / "m.pt2", x)
onnx_qdq.export_float(m, x, out / "m.onnx")
f = np.random.default_rng(0).normal(size=(50, 4))
fid.frechet_distance(fid.statistics(f), fid.statistics(f + 1))
print("\n".join(sorted(set(sys.modules) - before)))
"""


@pytest.fixture(scope="module")
def first_uses():
    """One preloaded process that then does what the stages do on first use (shared by two tests)."""
    out = subprocess.run([sys.executable, "-c", _FIRST_USES], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_a_forked_job_finds_the_libraries_its_stage_imports_on_first_use_already_imported(first_uses):
    """The warm process imports what stages import inside their calls (the optimizers' torch._dynamo,
    torch.export, Inductor's freezing passes, torchao, onnx, scipy, jsonschema): a job forked from it
    that exports, lowers, steps an optimizer, computes a FID and checks params imports none of them."""
    out = first_uses
    heavy = ("torch._dynamo", "torch._inductor", "torch.export", "torch._export", "torchao", "onnx", "scipy", "jsonschema")
    late = [m for m in out.stdout.split() if m.startswith(heavy)]
    assert not late, f"imported by the job, not by the warm process ({len(late)}): {late[:20]}"


def test_the_warm_process_exports_and_lowers_once_and_leaves_no_thread_behind(first_uses):
    """The preload's export warm-up ran (it prints its seconds), on one thread: afterwards the process
    has no Python thread but its main one (torch.fx's progress bar would start tqdm's monitor thread,
    which a forked child lacks) and its torch thread count is back to what it was."""
    assert re.search(r"warm-up workflow_src\.deploy\.pt2:warm_up: \d+\.\d\d s", first_uses.stdout), first_uses.stdout[:2000]
    assert "after preload: python threads 1 torch threads 2 tqdm monitor 10" in first_uses.stderr, first_uses.stderr[-2000:]


def test_the_workflows_warm_process_serves_a_job_in_the_environment_it_was_started_in(tmp_path):
    """The workflow's own preload (stage modules and first-use libraries) may set variables for itself
    (importing torch._dynamo sets TORCHINDUCTOR_CACHE_DIR): a request from the environment the server
    started in is still forked, not declined as an environment that differs."""
    with _served(tmp_path, "workflow_src.workflow.cli:main") as (_server, sock):
        proc = _command(sock, ["--config", "params.yaml", "validate"], cwd=ROOT)
        out, err = proc.communicate(timeout=300)
        deadline = time.time() + 300
        while "prepared" not in (tmp_path / "server.log").read_text() and time.time() < deadline:
            time.sleep(0.2)
        proc = _command(sock, ["--config", "params.yaml", "validate"], cwd=ROOT)  # after the preparation steps
        out2, err2 = proc.communicate(timeout=300)
    log = (tmp_path / "server.log").read_text()
    assert proc.returncode == 0, err[-2000:] + err2[-2000:]
    assert "declined" not in log and "declined" not in err + err2, log[-2000:] + err[-2000:]
    assert log.count("exited 0") == 2, log[-2000:]
    # it served before its later steps (first-use imports, the export warm-up) and ran them while serving
    lines = log.splitlines()
    first = [next((i for i, line in enumerate(lines) if text in line), None) for text in (" serving ", "warm-up ", " prepared (")]
    assert None not in first and first == sorted(first), (first, log[-2000:])
