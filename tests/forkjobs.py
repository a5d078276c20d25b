"""Targets for tests/test_forkserver.py: what a warm process's child runs instead of the CLI."""
import json
import os
import signal
import sys
import time
from pathlib import Path

# Loaded by the warm process itself, as the real preload does: their BLAS pools are sized before the fork.
import numpy  # noqa: F401
import scipy.linalg  # noqa: F401


def echo(argv):
    """Print what the child sees; exit with the code given as the first argument."""
    import numpy as np

    print(json.dumps({"argv": argv, "cwd": os.getcwd(), "env": os.environ.get("FORKTEST"), "pid": os.getpid(),
                      "ppid": os.getppid(), "numpy": float(np.random.rand())}), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    return int(argv[0])


def wait_term(argv):
    """Write argv[0] (a file) when ready, then wait; on SIGTERM write 'term' to argv[1] and exit 7."""
    def on_term(signum, _frame):
        Path(argv[1]).write_text("term")
        os._exit(7)

    signal.signal(signal.SIGTERM, on_term)
    Path(argv[0]).write_text(str(os.getpid()))
    time.sleep(60)
    return 0


def crash(argv):
    raise RuntimeError("the job failed: " + " ".join(argv))


def die(argv):
    os.kill(os.getpid(), signal.SIGKILL)


def threads(argv):
    """Print the thread pools' sizes the child runs with."""
    import torch
    from threadpoolctl import threadpool_info

    seen = {"torch": [torch.get_num_threads()]}
    for pool in threadpool_info():
        seen.setdefault(pool["internal_api"], []).append(pool["num_threads"])
    print(json.dumps(seen), flush=True)
    return 0
