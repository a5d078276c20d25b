"""Did every GPU rule compute on the GPU?  Reads a finished run: the jobs Snakemake plans for its
configs (rules that request ``gpu=1``), each job's log (the CLI's last line records the peak CUDA
memory, ``torch.cuda.max_memory_allocated``, of a job that initialised CUDA) and benchmark file, and
the ``environment`` record of every JSON the run wrote (the device a stage resolved).  Prints, per
rule, the devices, wall time and peak GPU memory; exits 1 when a GPU job allocated nothing on a GPU
or recorded a device other than CUDA.  scripts/gpu-check.sh runs it after the paper-smoke DAG:

    python -m workflow_src.reporting.gpucheck RUN_DIR --configfile configs/paper.yaml ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pandas as pd

from ..workflow.dvc_yaml import snakemake_jobs
from .timing import job_times

ROOT = Path(__file__).resolve().parents[2]


def gpu_rules(configfiles: List[str]) -> List[str]:
    """The rules whose jobs request a GPU (``resources: gpu=1``) in the DAG of these configs."""
    return sorted({j["rule"] for j in snakemake_jobs(ROOT, configfiles) if int(j["resources"].get("gpu", 0)) > 0})


def recorded_devices(run: Path) -> Dict[str, List[str]]:
    """Each JSON under ``run`` that records where it computed: its path -> the recorded devices
    (``environment.device`` wherever it sits in the record)."""
    found: Dict[str, List[str]] = {}

    def walk(obj, out: List[str]) -> None:
        if isinstance(obj, dict):
            env = obj.get("environment")
            if isinstance(env, dict) and "device" in env:
                out.append(str(env["device"]))
            for v in obj.values():
                walk(v, out)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, out)

    for p in sorted(run.rglob("*.json")):
        if any(part.startswith(".") for part in p.relative_to(run).parts):
            continue
        try:
            obj = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        devices: List[str] = []
        walk(obj, devices)
        if devices:
            found[p.relative_to(run).as_posix()] = devices
    return found


def check(run: str | Path, rules: List[str]) -> Tuple[pd.DataFrame, List[str]]:
    """Per GPU rule: jobs, wall seconds (total, largest), peak GPU MB and the jobs that ran on the CPU;
    and the problems found (empty: every GPU job computed on a GPU)."""
    run = Path(run)
    jobs = job_times(run)
    problems: List[str] = []
    rows = []
    for rule in rules:
        g = jobs[jobs["rule"] == rule]
        if g.empty:
            problems.append(f"rule {rule}: no job of it ran (no benchmark file under {run / 'logs' / 'benchmark' / rule})")
            continue
        on_cpu = [j for j, mb in zip(g["job"], g["peak_gpu_mb"]) if mb is None or pd.isna(mb) or mb <= 0]
        problems += [f"{rule} {j}: allocated no GPU memory (log logs/{rule}/{j}.log)" for j in on_cpu]
        rows.append({"rule": rule, "jobs": len(g), "on_gpu": len(g) - len(on_cpu), "wall_s": g["wall_s"].sum(),
                     "max_wall_s": g["wall_s"].max(), "peak_gpu_mb": pd.to_numeric(g["peak_gpu_mb"]).max(),
                     "max_rss_mb": g["max_rss_mb"].max()})
    for path, devices in recorded_devices(run).items():
        problems += [f"{path}: records device {d}" for d in devices if not d.startswith("cuda")]
    return pd.DataFrame(rows, columns=["rule", "jobs", "on_gpu", "wall_s", "max_wall_s", "peak_gpu_mb", "max_rss_mb"]), problems


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check that every GPU rule of a finished run computed on a GPU")
    parser.add_argument("run", help="the run's working directory")
    parser.add_argument("--configfile", nargs="*", default=[], help="the configs the run was started with")
    args = parser.parse_args(argv)
    rules = gpu_rules(args.configfile)
    table, problems = check(args.run, rules)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    for p in problems:
        print("FAIL", p)
    print(f"{len(problems)} problem(s); GPU rules: {', '.join(rules)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
