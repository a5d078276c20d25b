"""A warm process for the jobs of one local Snakemake run: it imports torch and the stage modules
once, then forks a child per job, so a job pays a fork instead of 3-4 s of interpreter start-up and
imports.

Snakemake's ``onstart`` starts the server (:func:`start`) for local, non-dry runs and exports its
socket in ``QGAN_FORKSERVER``; every job's command is still ``python -m workflow_src ...`` (the line
DVC runs).  That command, seeing the variable, hands its arguments, working directory, environment
and its stdin/stdout/stderr (``SCM_RIGHTS``) to the server (:func:`delegate`), which forks; the
child takes those descriptors, directory and environment and runs the CLI.  The command stays the
job's process for Snakemake: it forwards the signals it gets (SIGTERM, SIGINT, ...) to the child and
exits with the child's status, and if the command dies, the server terminates the child.

The server refuses a request, and the command then runs the job itself in a fresh process, when:
the command's interpreter or ``workflow_src`` checkout is not the server's (``--use-conda``, another
checkout), or a watched source file changed after the server imported it (an edit during a run).
Snakemake's ``benchmark:`` files see only the command, not the forked child: the CLI writes the
child's own CPU time and peak memory in its log (:data:`~.stages.RESOURCES_MARK`), which the
report's timing reads.

Only the standard library is imported at module level: the command side must stay light.
"""
from __future__ import annotations

import atexit
import collections
import functools
import importlib
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

ENV = "QGAN_FORKSERVER"  # the socket of the run's warm process (set by Snakemake's onstart)
STARTED_ENV = "QGAN_JOB_STARTED"  # the command's process start time, for the job's start-up seconds
PACKAGE = Path(__file__).resolve().parents[1]  # workflow_src
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_HEADER = struct.Struct("!I")


# Variables that libraries read when they are imported or initialise (tqdm's TQDM_* defaults, thread
# pools, CUDA, hash seeds): a child of the warm process would run with the server's values, so a
# request whose values differ runs in a fresh process.
IMPORT_TIME_ENV = ("TQDM_", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "PYTORCH_", "TORCH", "CUDA_", "PYTHONHASHSEED", "MPL")


# ... except the thread counts Snakemake sets for every job ({threads}): a child applies them itself.
THREAD_ENV = {"OMP_NUM_THREADS": "openmp", "OPENBLAS_NUM_THREADS": "openblas", "MKL_NUM_THREADS": "mkl"}


def _import_time_env(env: Dict[str, str]) -> Dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV) and k not in THREAD_ENV}


def _apply_thread_env(env: Dict[str, str]) -> None:
    """In a child: the thread pools a fresh process would size from ``THREAD_ENV`` when loading them."""
    limits = {api: int(env[k]) for k, api in THREAD_ENV.items() if env.get(k, "").isdigit() and int(env[k]) > 0}
    if not limits:
        return
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        pass
    else:  # by internal API: threadpool_limits's dict keys are user APIs ("blas") or file prefixes, never "openblas"
        controller = ThreadpoolController()
        for api, n in limits.items():
            controller.select(internal_api=api).limit(limits=n)
    torch = sys.modules.get("torch")
    if torch is not None and "openmp" in limits:
        torch.set_num_threads(limits["openmp"])


def _identity() -> Dict[str, str]:
    """What must match between the command and the server for a fork to run the same code."""
    return {"prefix": sys.prefix, "executable": os.path.realpath(sys.executable), "version": sys.version, "package": str(PACKAGE)}


# -- the command's side --------------------------------------------------------------------------


def process_start() -> float:
    """When this process started, in seconds on the boot clock (``/proc/self/stat``'s start time:
    exact to a clock tick, where wall-clock start times derived from it are off by up to a second)."""
    with open("/proc/self/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def seconds_since_start() -> float:
    """Seconds since this job's process started; for a job forked by the warm process, since its
    command's process started (which it passes as ``QGAN_JOB_STARTED``)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) - float(os.environ.get(STARTED_ENV) or process_start())


def _recv_line(sock: socket.socket, buf: bytearray) -> Optional[str]:
    while b"\n" not in buf:
        try:
            chunk = sock.recv(4096)
        except InterruptedError:
            continue
        if not chunk:
            return None
        buf.extend(chunk)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode()


def delegate(path: str, argv: List[str]) -> Optional[int]:
    """Run ``python -m workflow_src argv`` as a child of the server at ``path``; its exit code, or
    None when the server cannot take it (then the caller runs it itself: nothing was started)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        print(f"qgan-bench: warm process at {path} unreachable ({exc.strerror or exc}); running in a fresh process", file=sys.stderr, flush=True)
        sock.close()
        return None
    env = dict(os.environ)
    env.pop(ENV, None)  # the child runs the job itself; its own commands (if any) start fresh
    env[STARTED_ENV] = repr(process_start())
    body = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": env, **_identity()}).encode()
    data = _HEADER.pack(len(body)) + body
    buf = bytearray()
    try:
        sent = socket.send_fds(sock, [data], [0, 1, 2])
        if sent < len(data):
            sock.sendall(data[sent:])
        reply = _recv_line(sock, buf)
    except OSError as exc:  # it read the request and declined at once, or went away
        reply = f"no ({exc.strerror or exc})"
    if reply is None or not reply.startswith("pid "):
        print(f"qgan-bench: warm process declined ({(reply or 'no answer')[3:]}); running in a fresh process", file=sys.stderr, flush=True)
        sock.close()
        return None
    child = int(reply.split()[1])

    def forward(signum, _frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for s in FORWARDED:
        signal.signal(s, forward)
    reply = _recv_line(sock, buf)
    if reply is None or not reply.startswith("exit "):
        print(f"qgan-bench: the warm process ended before job {child} reported its exit status", file=sys.stderr, flush=True)
        return 1
    code = int(reply.split()[1])
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128+N


# -- the server's side ---------------------------------------------------------------------------


def _sources(roots: List[Path]) -> Dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for r in roots for p in sorted(r.rglob("*")) if p.suffix in (".py", ".yaml") and p.is_file()}


# What the stages import on first use, inside a call, rather than with their modules: without these a
# forked job still imported them itself (measured after the stage modules' preload, one tiny job each:
# export 1,988 more modules in 3.5 s of its 9.8 s, through torch.export, Inductor's freezing passes,
# torchao's x86 patterns and onnx; QAT and BRECQ 1.3 s, torch._dynamo through the optimizers' first
# step; evaluate 0.13 s, scipy's sqrtm; every job the params schema's jsonschema).  None of them starts
# a thread that a fork would lose mid-work or initialises CUDA (serve checks the latter).
FIRST_USE = ("jsonschema", "scipy.linalg", "torch._dynamo", "torch.export._trace", "torch._export.passes.replace_set_grad_with_hop_pass",
             "torch._export.passes.replace_autocast_with_hop_pass", "torch._export.passes._node_metadata_hook",
             "torch._inductor.constant_folding", "torch._inductor.freezing", "torch._inductor.fx_passes.binary_folding",
             "torch._inductor.fx_passes.freezing_patterns", "torch._inductor.compiler_bisector",
             "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer", "onnx")


def _preload(target: str) -> None:
    """Everything the warm process imports and prepares: :func:`_import_stages`, then each of
    :func:`_later_steps` (``serve`` runs those between requests instead)."""
    _import_stages(target)
    for step in _later_steps(target):
        step()


def _import_stages(target: str) -> None:
    """Import what the jobs import: the CLI's target and every stage's module (before the server
    accepts its first request)."""
    importlib.import_module(target.split(":")[0])
    if target == DEFAULT_TARGET:
        from .stages import COMMANDS  # here, not at the top: the command's side imports only the standard library

        for module in sorted({st.run.split(":")[0] for st in COMMANDS.values()}):
            _import_quietly(f"{PACKAGE.name}.{module}")


def _import_quietly(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # the job itself then imports it, and fails with its own message
        print(f"preload {module}: {type(exc).__name__}: {exc}", flush=True)


def _read_sources() -> None:
    from .. import resume

    resume.read_sources()  # the resume fingerprints' source digests (0.1 s of a job otherwise)


def _build_schema() -> None:
    from ..config import ConfigError, validate

    try:  # the params schema, built from the registry, and jsonschema's checkers (0.09 s of a job otherwise)
        validate({})
    except ConfigError:
        pass


def _later_steps(target: str) -> List[Callable[[], None]]:
    """What the warm process prepares once it serves, a step at a time between requests: each of
    :data:`FIRST_USE`, the package's sources read for the resume fingerprints, the params schema,
    and one export and lowering of a small model (measured in forked export jobs of the tiny SAGAN:
    3.6-3.9 CPU s of export and lowering without it, 2.6-2.8 s with it; the same file bytes).  All
    of it took 6.5 s of the preload's 10 s: a run whose first jobs waited for it started that much
    later (the test suite's small workflows, dozens of runs); a job forked before a step imports
    what it needs itself."""
    if target != DEFAULT_TARGET:
        return []
    return [*(functools.partial(_import_quietly, m) for m in FIRST_USE), _read_sources, _build_schema,
            functools.partial(_warm_up, f"{PACKAGE.name}.deploy.pt2:warm_up")]


def _warm_up(name: str) -> None:
    """Call ``module:function`` once (one-time set-up the jobs then skip), on one thread and without
    tqdm's monitor thread (torch.fx's interpreter opens a progress bar): what this process runs must
    leave no thread behind that a forked child would lack.  A failure is printed, not raised: the
    jobs then pay the set-up themselves."""
    import torch
    import tqdm

    threads, interval = torch.get_num_threads(), tqdm.tqdm.monitor_interval
    torch.set_num_threads(1)
    tqdm.tqdm.monitor_interval = 0
    try:
        module, function = name.split(":")
        print(f"warm-up {name}: {getattr(importlib.import_module(module), function)():.2f} s", flush=True)
    except Exception as exc:
        print(f"warm-up {name}: {type(exc).__name__}: {exc}", flush=True)
    finally:
        torch.set_num_threads(threads)
        tqdm.tqdm.monitor_interval = interval


DEFAULT_TARGET = f"{PACKAGE.name}.workflow.cli:main"


def _child(request: dict, fds: List[int], target: str, keep: List[socket.socket]) -> None:
    """In the forked child: become the job, run it, exit with its status (never returns)."""
    code = 1
    try:
        for s in keep:
            s.close()
        for s in FORWARDED + (signal.SIGCHLD,):
            signal.signal(s, signal.SIG_DFL)
        for i, fd in enumerate(fds[:3]):
            os.dup2(fd, i)
        for fd in fds:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _apply_thread_env(request["env"])
        sys.argv = ["python -m workflow_src", *request["argv"]]
        if "numpy" in sys.modules:  # Python's `random` reseeds itself after a fork; numpy's global state does not
            sys.modules["numpy"].random.seed()
        module, function = target.split(":")
        try:
            code = getattr(importlib.import_module(module), function)(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        code = 0 if code is None else int(code)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class _Job:
    def __init__(self, conn: socket.socket, pid: int):
        self.conn, self.pid, self.pidfd = conn, pid, os.pidfd_open(pid)


def _read_request(conn: socket.socket):
    conn.settimeout(10)
    msg, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    if len(msg) < _HEADER.size:
        raise ValueError("short request")
    (size,) = _HEADER.unpack(msg[:_HEADER.size])
    body = bytearray(msg[_HEADER.size:])
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("truncated request")
        body.extend(chunk)
    conn.settimeout(None)
    return json.loads(body), fds


def _check_no_cuda() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # a forked child could not use CUDA
        raise SystemExit("the warm process initialised CUDA while importing: not serving (jobs start afresh)")


def serve(path: str, parent: int, target: str = DEFAULT_TARGET, watch: Optional[List[Path]] = None) -> None:
    """Listen on ``path`` until SIGTERM or until ``parent`` is gone; fork a child per request."""
    # What the requests' environments are compared with: the one this process started in.  The preload
    # may set variables for itself (importing torch._dynamo sets TORCHINDUCTOR_CACHE_DIR to its default),
    # which a fresh job's process sets the same way when it imports them; a child runs in its request's
    # environment anyway.
    started_env = _import_time_env(dict(os.environ))
    _import_stages(target)
    _check_no_cuda()
    roots = watch if watch is not None else [PACKAGE]
    sources = _sources(roots)
    identity = _identity()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{path}.{os.getpid()}"
    listener.bind(tmp)
    listener.listen(64)
    os.replace(tmp, path)  # the socket appears only once it accepts
    print(f"warm process {os.getpid()} serving {path} ({len(sys.modules)} modules imported)", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    jobs: Dict[int, _Job] = {}
    later = collections.deque(_later_steps(target))
    try:
        while not stop and os.getppid() == parent:
            events = sel.select(timeout=0 if later else 1.0)
            if not events and later:  # idle: the next preparation step (a request waits for one step at most)
                later.popleft()()
                _check_no_cuda()
                if not later:
                    print(f"warm process {os.getpid()} prepared ({len(sys.modules)} modules imported)", flush=True)
                continue
            for key, _ in events:
                if key.data == "accept":
                    conn, _ = listener.accept()
                    job = _start(conn, identity, started_env, roots, sources, target, [listener])
                    if job is not None:
                        jobs[job.pid] = job
                        sel.register(job.pidfd, selectors.EVENT_READ, ("exit", job.pid))
                        sel.register(job.conn, selectors.EVENT_READ, ("hangup", job.pid))
                    continue
                kind, pid = key.data
                job = jobs.get(pid)
                if job is None:
                    continue
                if kind == "hangup":  # the command died (or wrote, which it never does): stop its job
                    sel.unregister(job.conn)
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                    continue
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
                print(f"job {pid} exited {code}", flush=True)
                sel.unregister(job.pidfd)
                os.close(job.pidfd)
                try:
                    sel.unregister(job.conn)
                except KeyError:
                    pass
                try:
                    job.conn.sendall(f"exit {code}\n".encode())
                except OSError:
                    pass
                job.conn.close()
                del jobs[pid]
    finally:
        for pid in jobs:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        listener.close()
        try:
            os.unlink(path)
        except OSError:
            pass
        print(f"warm process {os.getpid()} stopped", flush=True)


def _start(conn: socket.socket, identity: Dict[str, str], env: Dict[str, str], roots: List[Path], sources: Dict[str, int],
           target: str, keep: List[socket.socket]) -> Optional[_Job]:
    fds: List[int] = []
    try:
        request, fds = _read_request(conn)
        reason = next((f"{k} {request.get(k)!r} is not the warm process's {v!r}" for k, v in identity.items() if request.get(k) != v), None)
        if reason is None and _import_time_env(request["env"]) != env:
            mine, theirs = env, _import_time_env(request["env"])
            reason = "environment differs: " + ", ".join(sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)))
        if reason is None and _sources(roots) != sources:
            reason = f"sources under {', '.join(map(str, roots))} changed after the warm process imported them"
        if reason is not None or len(fds) != 3:
            print(f"declined: {reason or 'expected 3 descriptors'}", flush=True)
            conn.sendall(f"no {reason or 'expected 3 descriptors'}\n".encode())
            conn.close()
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, fds, target, keep + [conn])
        print(f"job {pid}: {' '.join(request['argv'][:3])} ...", flush=True)
        conn.sendall(f"pid {pid}\n".encode())
        return _Job(conn, pid)
    except (OSError, ValueError) as exc:
        print(f"request failed: {type(exc).__name__}: {exc}", flush=True)
        conn.close()
        return None
    finally:
        for fd in fds:
            os.close(fd)


# -- Snakemake's side ----------------------------------------------------------------------------

OFF_ENV = "QGAN_WARM"  # "off": every job starts its own process


def wanted(workflow) -> bool:
    """A warm process serves a Snakemake run that executes its jobs here, in this environment: not a
    dry run, not a cluster executor or one of its jobs, not --use-conda/--sdm apptainer, not --touch."""
    if os.environ.get(OFF_ENV) == "off":
        return False
    try:
        methods = {str(getattr(m, "name", m)).lower() for m in workflow.deployment_settings.deployment_method}
    except AttributeError:
        methods = set()
    return (workflow.local_exec and not workflow.dryrun and not workflow.touch and not workflow.remote_exec
            and not workflow.subprocess_exec and not methods & {"conda", "apptainer"})


_running: Dict[str, "subprocess.Popen"] = {}  # socket -> the warm process this (Snakemake) process started


def start(workdir: str | Path, log: str | Path, timeout: float = 120.0) -> Optional[str]:
    """Start a warm process for this (Snakemake) process and wait until it accepts; its socket, or
    None (with a warning) when it did not come up: jobs then start afresh."""
    sockdir = tempfile.mkdtemp(prefix="qgan-fork-")  # a short path: a unix socket's is limited to 107 bytes
    path = os.path.join(sockdir, "s")
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    with open(log, "ab") as out:
        # the interpreter the jobs' `python -m workflow_src` finds on PATH (Snakemake's own may differ)
        python = shutil.which("python") or sys.executable
        proc = subprocess.Popen([python, "-m", f"{PACKAGE.name}.workflow.forkserver", "serve", path, str(os.getpid())],
                                cwd=str(workdir), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # Ctrl-C reaches the jobs' commands, which forward it
    _running[path] = proc
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            code = proc.poll()
            stop(path)
            print(f"qgan-bench: the warm process did not start (exit {code}; see {log}): every job starts its own process", file=sys.stderr)
            return None
        time.sleep(0.05)
    return path


def stop(path: Optional[str], timeout: float = 30.0) -> None:
    """Stop the warm process at ``path`` that :func:`start` started (its running jobs get SIGTERM)
    and remove its folder."""
    proc = _running.pop(path, None) if path else None
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def run(command: List[str], log: str | Path = ".qgan/forkserver.log") -> int:
    """Run ``command`` (e.g. ``dvc repro``) with a warm process for the ``python -m workflow_src``
    commands it starts; its exit code."""
    if not command:
        raise SystemExit("run: give the command to run, e.g. `run -- dvc repro`")
    path = start(os.getcwd(), log)
    try:
        return subprocess.run(command, env={**os.environ, **({ENV: path} if path else {})}).returncode
    finally:
        stop(path)


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog=f"python -m {PACKAGE.name}.workflow.forkserver", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="run a command (e.g. `-- dvc repro`) whose workflow_src jobs fork from a warm process")
    r.add_argument("command", nargs=argparse.REMAINDER)
    sv = sub.add_parser("serve", help="be the warm process (Snakemake's onstart starts it)")
    sv.add_argument("socket")
    sv.add_argument("parent", type=int, help="stop when this process is gone")
    sv.add_argument("--target", default=DEFAULT_TARGET, help="module:function each child calls with its argv")
    sv.add_argument("--watch", action="append", type=Path, default=None, help="decline requests once a .py/.yaml under here changes")
    a = p.parse_args(argv)
    if a.what == "run":
        return run(a.command[1:] if a.command[:1] == ["--"] else a.command)
    serve(a.socket, a.parent, a.target, a.watch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
