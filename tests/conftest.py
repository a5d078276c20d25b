import os
import sys
from pathlib import Path

# Workflow jobs (Snakemake shell commands, DVC stage commands) call `python`: make it this interpreter.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("MPLBACKEND", "Agg")
