"""`make mlflow-server` for the tests that log through it (tests/test_tracking.py, tests/test_slurm.py)."""
import os
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def served_store(store: Path, timeout: float = 180) -> Iterator[str]:
    """Run `make mlflow-server` on a free local port with its store in ``store``; yields the
    tracking URI once the server answers /health, and stops it (its whole process group) after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["make", "-s", "-C", str(ROOT), "mlflow-server", f"MLFLOW_DIR={store}", f"MLFLOW_PORT={port}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise AssertionError(f"`make mlflow-server` did not come up on {uri}:\n"
                                     f"{server.stdout.read() if server.poll() is not None else '(still starting)'}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
