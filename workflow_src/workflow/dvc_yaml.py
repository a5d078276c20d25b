"""The DVC pipeline, derived from the Snakemake DAG.

One source of truth: the stage declarations (:mod:`.stages`) give the rules their inputs, outputs,
commands and the params keys each job reads; :func:`dvc_stages` turns Snakemake's own plan of jobs
into ``dvc.yaml`` with the same commands, files and keys (under ``params:``).  Nothing is written
twice, and ``tests/test_dvc.py`` fails if the committed ``dvc.yaml`` is stale.

Each stage also depends on the code it runs (DVC's advice: a code change reruns the stages it
changes): the source files of its stage function's module, of the method and arch its wildcards
name (loaded through the registry), and of every package module they import, the same files whose
edits restart a resumed job (:func:`workflow_src.resume.source_digests`).  Snakemake's DAG has
no code edges; its own ``code`` rerun trigger covers the rule's command.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import yaml

from ..files import atomic_write_text
from .. import registry, resume
from ..config import FP, Variant, load
from .stages import param_keys, stage

ROOT = Path(__file__).resolve().parents[2]  # the checkout: Snakefile, rules/, params.yaml
# ------------------------------------------------------------------------------- DVC
_REDIRECT = re.compile(r"\s*>\s*\S+\s+2>&1\s*$")


def snakemake_jobs(root: Path, configfiles: List[str] = (), target: str = "report", workdir: str | Path | None = None) -> List[Dict[str, Any]]:
    """The jobs Snakemake plans for ``target``: a dry run (``-n -p``) in ``workdir`` (default: an empty
    directory, so every job of the DAG), parsed into rule, wildcards, inputs, outputs, log, priority, resources and shell command."""
    with tempfile.TemporaryDirectory() as empty:
        wd = str(workdir or empty)
        cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", wd, "-n", "-p", "--cores", "1", target]
        if configfiles:
            cmd += ["--configfile", *[str(Path(c).resolve()) for c in configfiles]]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    if out.returncode != 0:
        raise RuntimeError(f"snakemake dry run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    jobs: List[Dict[str, Any]] = []
    job: Dict[str, Any] | None = None
    for line in out.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            job = {"rule": m.group(1), "inputs": [], "outputs": [], "log": "", "wildcards": {}, "priority": 0,  # printed when not 0
                   "resources": {}}
            jobs.append(job)
        elif job is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            if key in ("input", "output"):
                job[key + "s"] = value.split(", ")
            elif key == "log":
                job["log"] = value.split(" ")[0]
            elif key == "wildcards":
                job["wildcards"] = dict(kv.split("=", 1) for kv in value.split(", "))
            elif key == "priority":
                job["priority"] = int(value)
            elif key == "resources":
                job["resources"] = dict(kv.split("=", 1) for kv in value.split(", "))
        elif job is not None and line.startswith("Shell command: "):
            job["cmd"] = line[len("Shell command: "):]
            job = None
    for job in jobs:
        pattern = stage(job["rule"]).log  # logs/<rule>/<w1>/<w2>.log (a seed as s<seed>)
        parts = Path(job["log"]).with_suffix("").parts[2:]
        if any(n not in job["wildcards"] for n in stage(job["rule"]).wildcards) or pattern.format(**job["wildcards"]) != job["log"]:
            raise ValueError(f"rule {job['rule']!r}: log {job['log']!r} must be {pattern}")
        job["name"] = ".".join((job["rule"], *parts))
    return sorted(jobs, key=lambda j: j["name"])


SUMMARY = "reports/summary.json"
_QUANTIZED_MODEL = re.compile(r"models/s\d+/q/[^/]+/([^/]+)\.pt$")


def code_deps(rule: str, wildcards: Dict[str, str], inputs: List[str] = ()) -> List[str]:
    """The package source files a job of ``rule`` runs (paths relative to the checkout): its stage
    module, the method of its ``variant`` and of every quantized model among its ``inputs`` (loading
    one imports its method's file), the arch of its ``arch``, and their imports."""
    variants = [wildcards["variant"]] if wildcards.get("variant", FP) != FP else []
    variants += [m.group(1) for i in inputs if (m := _QUANTIZED_MODEL.search(i))]
    entries = {f"{resume.PACKAGE}.{stage(rule).run.split(':')[0]}"}
    entries |= {registry.method(Variant.parse(v).method).module for v in variants}
    if "arch" in wildcards:
        entries.add(registry.arch(wildcards["arch"]).module)
    return list(resume.source_digests(tuple(sorted(entries))))


def dvc_stages(root: Path) -> Dict[str, Any]:
    """The content of ``dvc.yaml`` for the default params (params.yaml)."""
    stages, cfg = {}, load([root / "params.yaml"])
    for job in snakemake_jobs(root):
        cmd = _REDIRECT.sub("", job["cmd"]).replace("python -m workflow_src ", "python -m workflow_src --config params.yaml ", 1)
        outs = []
        for o in job["outputs"]:
            if o == SUMMARY:  # the one file `dvc metrics show` prints: every variant's FID and qFID
                outs.append(("metrics", {o: {"cache": False}}))
            elif o.startswith("metrics/") and o.endswith(".json"):  # each job's full record: in git, not a metrics file
                outs.append(("outs", {o: {"cache": False}}))
            elif o.endswith(".losses.csv"):
                outs.append(("plots", {o: {"x": "step"}}))  # cached: pushed with the model
            elif o.startswith("sweeps/") and o.endswith("quantile_sweep.csv"):  # one arch's sweep (the report's table mixes them)
                outs.append(("plots", {o: {"x": "act_upper", "y": "qfid"}}))
            else:
                outs.append(("outs", o))
        stage: Dict[str, Any] = {"cmd": cmd}
        stage["deps"] = sorted(job["inputs"]) + code_deps(job["rule"], job["wildcards"], job["inputs"])
        stage["params"] = param_keys(cfg, job["rule"], job["wildcards"])
        for kind in ("outs", "metrics", "plots"):
            items = [o for k, o in outs if k == kind]
            if items:
                stage[kind] = items
        stages[job["name"]] = stage
    return {"stages": stages}


def render_dvc_yaml(root: Path = ROOT) -> str:
    header = (
        "# GENERATED by `python -m workflow_src dvc-yaml` from the Snakemake DAG and workflow_src/workflow/stages.py:\n"
        "# do not edit by hand (tests/test_dvc.py fails when this file is stale).  `dvc repro` builds the\n"
        "# same artifacts as `snakemake --cores all report` with the params in params.yaml.\n"
    )
    return header + yaml.safe_dump(dvc_stages(root), sort_keys=False, width=1000)


def write_dvc_yaml(cfg: Dict[str, Any], *, out: str) -> None:
    """Write ``dvc.yaml`` (for the params in params.yaml beside the Snakefile, whatever ``cfg`` is)."""
    atomic_write_text(out, render_dvc_yaml(ROOT))
