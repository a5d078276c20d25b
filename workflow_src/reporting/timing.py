"""Where the time goes: every job's Snakemake ``benchmark:`` file (wall and CPU seconds, peak
memory) and the start-up time each job's log records (the CLI's ``STARTUP_MARK`` line: seconds
from the process's start to its first line of work, i.e. interpreter start-up and imports),
summarised per rule for the report."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pandas as pd

from ..workflow.stages import BENCHMARK_DIR, RESOURCES_MARK, STARTUP_MARK

_STARTUP = re.compile(re.escape(STARTUP_MARK) + r" ([0-9.]+) s after the process started")
_RESOURCES = re.compile(re.escape(RESOURCES_MARK) + r" cpu ([0-9.]+) s, peak rss ([0-9.]+) MB")
_GPU = re.compile(re.escape(RESOURCES_MARK) + r" .*, peak gpu ([0-9.]+) MB")


def _read(log: Path) -> str:
    try:
        return log.read_text(errors="replace")
    except OSError:
        return ""


def startup_seconds(log: Path) -> Optional[float]:
    """The start-up time a job's log records (None: the job wrote no such line)."""
    m = _STARTUP.search(_read(log))
    return float(m.group(1)) if m else None


def job_resources(log: Path) -> Optional[Tuple[float, float]]:
    """(CPU seconds, peak RSS in MB) that a finished job's log records: its own measure, which a job
    forked by the warm process needs (Snakemake's benchmark sees only the command that waits for it)."""
    m = _RESOURCES.search(_read(log))
    return (float(m.group(1)), float(m.group(2))) if m else None


def peak_gpu_mb(log: Path) -> Optional[float]:
    """The peak GPU memory (``torch.cuda.max_memory_allocated``, MB) a finished job's log records;
    None for a job that never initialised CUDA."""
    m = _GPU.search(_read(log))
    return float(m.group(1)) if m else None


def job_times(root: str | Path = ".") -> pd.DataFrame:
    """One row per job that left a benchmark file under ``root``: rule, job (its wildcards), wall and
    CPU seconds, peak resident memory (MB) and start-up seconds.  Wall time is the benchmark's; CPU
    and memory are the job's own record in its log when there, else the benchmark's."""
    root = Path(root)
    rows: List[Dict] = []
    for tsv in sorted((root / BENCHMARK_DIR).rglob("*.tsv")):
        rel = tsv.relative_to(root / BENCHMARK_DIR)
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem  # logs/benchmark/<rule>.tsv: a rule without wildcards
        bench = pd.read_csv(tsv, sep="\t")
        if bench.empty:
            continue
        last = bench.iloc[-1]  # a file holds one line per repeat; the workflow runs each job once
        log = root / "logs" / rel.with_suffix(".log")
        cpu, rss = job_resources(log) or (float(last["cpu_time"]), float(last["max_rss"]))
        rows.append({"rule": rule, "job": rel.with_suffix("").as_posix()[len(rule) + 1:] if len(rel.parts) > 1 else "-",
                     "wall_s": float(last["s"]), "cpu_s": cpu, "max_rss_mb": rss, "startup_s": startup_seconds(log),
                     "peak_gpu_mb": peak_gpu_mb(log)})
    return pd.DataFrame(rows, columns=["rule", "job", "wall_s", "cpu_s", "max_rss_mb", "startup_s", "peak_gpu_mb"])


def per_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, total and median wall seconds, total CPU seconds, peak memory, and the share
    of the wall time of its jobs spent before their first line of work (jobs whose log records it)."""
    out = []
    for rule, g in jobs.groupby("rule", sort=False):
        known = g.dropna(subset=["startup_s"])
        out.append({"rule": rule, "jobs": len(g), "total_s": g["wall_s"].sum(), "median_s": g["wall_s"].median(),
                    "cpu_s": g["cpu_s"].sum(), "peak_mb": g["max_rss_mb"].max(),
                    "startup_share": known["startup_s"].sum() / known["wall_s"].sum() if len(known) and known["wall_s"].sum() > 0 else float("nan"),
                    "peak_gpu_mb": g["peak_gpu_mb"].max()})
    df = pd.DataFrame(out, columns=["rule", "jobs", "total_s", "median_s", "cpu_s", "peak_mb", "startup_share", "peak_gpu_mb"])
    return df.sort_values("total_s", ascending=False).reset_index(drop=True)


def timing_md(root: str | Path = ".") -> str:
    """The report's "where the time goes" section (Markdown)."""
    jobs = job_times(root)
    if jobs.empty:
        return ("# Where the time goes\n\nNo benchmark files: this run did not go through Snakemake's `benchmark:` "
                f"(e.g. `dvc repro`); they are written under `{BENCHMARK_DIR}/` by `snakemake`.\n")
    rules = per_rule(jobs)
    known = jobs.dropna(subset=["startup_s"])
    lines = ["# Where the time goes", "",
             f"{len(jobs)} jobs, {jobs['wall_s'].sum():.0f} s of job wall time, {jobs['cpu_s'].sum():.0f} CPU seconds "
             "(wall time: Snakemake `benchmark:` files; CPU and peak memory: the job's own record in its log, else the "
             "benchmark's; the report job itself is not included). Start-up: time from a job's process "
             "start to its first line of work (interpreter, imports and params validation; for a job forked by the "
             "warm process, the command's start-up and the fork), as its log records it"
             + (f"; {known['startup_s'].sum() / known['wall_s'].sum():.0%} of the wall time of the {len(known)} jobs that record it."
                if len(known) and known["wall_s"].sum() > 0 else "."),
             "", "| rule | jobs | total s | median s | CPU s | peak MB | start-up share |", "|---|---:|---:|---:|---:|---:|---:|"]
    gpu = rules["peak_gpu_mb"].notna().any()  # a run that used a GPU: its peak there too (torch.cuda.max_memory_allocated)
    if gpu:
        lines[-2:] = [lines[-2] + " peak GPU MB |", lines[-1] + "---:|"]
    for r in rules.itertuples():
        share = "–" if pd.isna(r.startup_share) else f"{r.startup_share:.0%}"
        lines.append(f"| {r.rule} | {r.jobs} | {r.total_s:.1f} | {r.median_s:.1f} | {r.cpu_s:.1f} | {r.peak_mb:.0f} | {share} |"
                     + ((" – |" if pd.isna(r.peak_gpu_mb) else f" {r.peak_gpu_mb:.0f} |") if gpu else ""))
    return "\n".join(lines) + "\n"
