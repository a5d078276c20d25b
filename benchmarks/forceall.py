"""The whole workflow, twice in one command with ``--forceall``: once with every job in a fresh
process (QGAN_WARM=off) and once with jobs forked by the run's warm process (the default for local
runs), in the same work directory, one after the other.  For each it prints the wall time, the
median job start-up (a job's process start to its first line of work, as its log records it), the
start-up share of all job wall time, and the parse time (``snakemake -n TARGET``, timed just before
the run) as a share of the run's wall time; then the warm/fresh ratio.

    python benchmarks/forceall.py [WORKDIR] [--configfile configs/micro.yaml] [--cores 2] [--order fresh,warm] [--target report]

The tiny profile (no --configfile) is the README's `make report`; configs/micro.yaml is the test
suite's run and takes minutes.  WORKDIR defaults to a scratch folder; its first run builds what a
--forceall run rebuilds anyway.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workflow_src.reporting.timing import job_times  # noqa: E402

MODES = {"fresh": {"QGAN_WARM": "off"}, "warm": {"QGAN_WARM": ""}}


def _snakemake(workdir: Path, args: list, env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path, nargs="?")
    ap.add_argument("--configfile", default=None)
    ap.add_argument("--cores", default="2")
    ap.add_argument("--order", default="fresh,warm", help="the modes, in the order they run")
    ap.add_argument("--target", default="report", help="what to build (default: the whole workflow)")
    args = ap.parse_args()
    scratch = None if args.workdir else tempfile.TemporaryDirectory(prefix="qgan-forceall-")
    workdir = (args.workdir or Path(scratch.name)).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = ["--configfile", str(Path(args.configfile).resolve())] if args.configfile else []
    rows = {}
    for mode in args.order.split(","):
        env = {**os.environ, **MODES[mode]}
        parse = _snakemake(workdir, ["-n", args.target, "--forceall", "--cores", args.cores, *cfg], env)
        wall = _snakemake(workdir, [args.target, "--forceall", "--cores", args.cores, *cfg], env)
        jobs = job_times(workdir)
        known = jobs.dropna(subset=["startup_s"])
        rows[mode] = {"wall": wall, "jobs": len(jobs), "startup_median": statistics.median(known["startup_s"]),
                      "startup_share": known["startup_s"].sum() / known["wall_s"].sum(), "cpu": jobs["cpu_s"].sum(), "parse": parse}
        print(f"{mode}: {wall:.1f} s wall, {rows[mode]['jobs']} jobs", flush=True)
    print(f"\n{'mode':6s} {'wall s':>8s} {'jobs':>5s} {'median start-up s':>18s} {'start-up share':>15s} {'job CPU s':>10s} {'parse s':>8s} {'parse share':>12s}")
    for mode, r in rows.items():
        print(f"{mode:6s} {r['wall']:8.1f} {r['jobs']:5d} {r['startup_median']:18.2f} {r['startup_share']:15.1%} {r['cpu']:10.0f} "
              f"{r['parse']:8.2f} {r['parse'] / r['wall']:12.1%}")
    if {"fresh", "warm"} <= rows.keys():
        print(f"\nwarm / fresh: wall {rows['warm']['wall'] / rows['fresh']['wall']:.2f}x, "
              f"median start-up {rows['warm']['startup_median'] / rows['fresh']['startup_median']:.2f}x")
    if scratch:
        scratch.cleanup()


if __name__ == "__main__":
    main()
