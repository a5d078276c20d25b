"""The micro workflow run that the workflow and runner tests inspect (fixture ``micro_run``)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_src.config import trace

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
PARAM_READS = Path(".qgan") / "param-reads"  # each job's params reads (workflow_src/config/trace.py), in the run's directory


def run_micro(work: Path) -> Path:
    """The whole micro DAG (configs/micro.yaml) in ``work`` on two cores, each job recording its params reads."""
    proc = subprocess.run(SNAKEMAKE + ["-d", str(work), "--cores", "2", "report", "--configfile", str(ROOT / "configs" / "micro.yaml")],
                          capture_output=True, text=True, env={**os.environ, trace.TRACE_ENV: str(work / PARAM_READS)})
    if proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "logs").rglob("*.log")))
        pytest.fail(f"workflow failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n{logs}")
    return work
