"""What a short job costs before and after its work: one evaluate job of a finished workflow, run
again with MLflow tracking off, recorded (the default for every stage but training: the run is
written to .qgan/mlflow-pending and logged later, MLflow never imported) and live (QGAN_TRACKING=live:
MLflow imported, the store opened, the run logged while the job runs).

The three are interleaved (off, recorded, live, off, ...) so that machine noise hits them alike; the
medians are printed with their ratios to "off".  The job's own outputs go to a scratch folder, so the
workflow's files are left as they were; the records the "recorded" runs leave are flushed into a
scratch store at the end, and the time of that flush (one process for all of them) is printed too.

    python benchmarks/job_startup.py WORKDIR [--configfile configs/micro.yaml] [--repeats 5]

WORKDIR is a directory where `snakemake report` has finished with that config (e.g. after `make report`:
the repository itself, no --configfile).
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def evaluate_command(workdir: Path, configfiles: list) -> list:
    """The shell command Snakemake would run for the first evaluate job of ``workdir``."""
    cfg = ["--configfile", *configfiles] if configfiles else []
    plan = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "-n", "-p",
                           "--cores", "1", "--forcerun", "evaluate", *cfg], capture_output=True, text=True, check=True).stdout
    for line in plan.splitlines():
        if "python -m workflow_src" in line and " evaluate " in line and "--variant" in line:
            return shlex.split(line.split("Shell command:", 1)[-1].split(" > ")[0].strip())
    raise SystemExit(f"no evaluate job planned in {workdir} (has the workflow finished there?)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--configfile", nargs="*", default=[])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    workdir = args.workdir.resolve()
    cmd = evaluate_command(workdir, [str(Path(c).resolve()) for c in args.configfile])
    params = sorted((workdir / ".qgan").glob("params-*.yaml"), key=os.path.getmtime)[-1]
    if list((workdir / ".qgan" / "mlflow-pending").glob("*.json")):
        raise SystemExit(f"{workdir} has MLflow records pending: log them first (python -m workflow_src track), "
                         "or this benchmark would flush them into its scratch store")
    with tempfile.TemporaryDirectory() as scratch:
        # outputs to the scratch folder; inputs stay the workflow's
        for opt in ("--metrics", "--samples"):
            i = cmd.index(opt)
            cmd[i + 1] = str(Path(scratch) / Path(cmd[i + 1]).name)
        base = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}", "QGAN_PARAMS": str(params),
                "MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/mlflow.db"}
        modes = {"off": {"QGAN_TRACKING": "off"}, "recorded": {"QGAN_TRACKING": ""}, "live": {"QGAN_TRACKING": "live"}}
        times: dict = {m: [] for m in modes}
        for _ in range(args.repeats):
            for mode, env in modes.items():
                t = time.perf_counter()
                subprocess.run(cmd, cwd=workdir, env={**base, **env}, check=True, capture_output=True)
                times[mode].append(time.perf_counter() - t)
        pending = sorted((workdir / ".qgan" / "mlflow-pending").glob("*.json"))
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "workflow_src", "--config", str(params), "track"], cwd=workdir, env=base, check=True,
                       capture_output=True)
        flush = time.perf_counter() - t
    off = statistics.median(times["off"])
    print(f"one evaluate job ({' '.join(cmd[cmd.index('--arch'):cmd.index('--arch') + 4])}), median of {args.repeats}, interleaved:")
    for mode, ts in times.items():
        med = statistics.median(ts)
        print(f"  {mode:9s} {med:6.2f} s   {med / off:4.2f}x off   (min {min(ts):.2f}, max {max(ts):.2f})")
    print(f"  flushing the {len(pending)} recorded runs in one process: {flush:.2f} s")


if __name__ == "__main__":
    main()
