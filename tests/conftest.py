import os
import sys
from pathlib import Path

# Workflow jobs (Snakemake shell commands, DVC stage commands) call `python`: make it this interpreter.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("MPLBACKEND", "Agg")

# The tests' tensors and models are tiny: one intra-op thread is fastest, and leaves the other core
# to the workflow jobs some tests start.
import torch  # noqa: E402

torch.set_num_threads(1)
