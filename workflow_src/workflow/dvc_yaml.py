"""What each workflow stage reads from the params, and the DVC pipeline derived from the Snakemake DAG.

One source of truth: the Snakemake rules define the DAG (inputs, outputs, commands); this module
defines which params keys each stage reads.  Snakemake passes the values of those keys as the rule's
``params.section`` (so a changed key reruns exactly the jobs that read it), and :func:`dvc_stages`
turns Snakemake's own job list into ``dvc.yaml`` with the same keys under ``params:``.  Nothing is
written twice, and ``tests/test_dvc.py`` fails if the committed ``dvc.yaml`` is stale.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping

from .config import Variant

# rule -> (its wildcards, in the order they appear in the rule's log path logs/<rule>/<w1>/<w2>.log,
#          the dotted params keys it reads; "{name}" is filled from the wildcards)
STAGES: Dict[str, tuple] = {
    "prepare_data": (("dataset",), ["datasets.{dataset}"]),
    "train_features": ((), ["seed", "features.tinycnn"]),
    "fetch_inception": ((), ["features.inception"]),
    "real_stats": (("dataset", "split"), ["features", "eval.batch_size"]),
    "train_fp": (("arch",), ["seed", "train", "archs.{arch}.dataset", "archs.{arch}.resolution", "archs.{arch}.model", "archs.{arch}.train"]),
    "import_fp": (("arch",), ["seed", "archs.{arch}.fp_checkpoint", "archs.{arch}.model", "archs.{arch}.resolution"]),
    "distill": (("arch",), ["seed", "distill", "archs.{arch}.model", "archs.{arch}.resolution"]),
    "eval_inputs": (("arch",), ["seed", "eval.n_samples", "eval.real_split", "archs.{arch}.model", "archs.{arch}.resolution"]),
    "quantize": (("arch", "variant"), None),  # depends on the method: see methods.METHOD_PARAMS
    "qat": (("arch", "variant"), None),
    "train_perceptual": ((), ["seed", "perceptual.tinyvgg"]),
    "fetch_vgg16": ((), ["perceptual.vgg16"]),
    "evaluate_fp": (("arch",), ["seed", "eval"]),
    "evaluate": (("arch", "variant"), ["seed", "eval"]),
    "quantile_sweep": (("arch",), ["seed", "sweep", "calibration", "distill.batch_size", "eval", "archs.{arch}.model", "archs.{arch}.resolution"]),
    "fig1": ((), ["sweep"]),
    "export_fp": (("arch",), ["export.runtimes", "export.batch_sizes", "archs.{arch}.model", "archs.{arch}.resolution"]),
    "export": (("arch", "variant"), ["export", "eval.batch_size"]),
    "sample_figure": (("arch",), ["seed", "matrix", "figures"]),
    "report": ((), ["matrix", "eval.bootstrap", "eval.n_samples", "qat.distill_loss"]),
}


def param_keys(rule: str, wildcards: Mapping[str, str]) -> List[str]:
    """The params keys job ``rule`` with ``wildcards`` reads."""
    if rule not in STAGES:
        raise KeyError(f"rule {rule!r} has no entry in workflow_src.dag.STAGES")
    _, keys = STAGES[rule]
    if keys is None:  # quantize, qat: each method declares what it reads
        from .methods import METHOD_PARAMS

        keys = METHOD_PARAMS[Variant.parse(wildcards["variant"]).method]
    return [k.format(**dict(wildcards)) for k in keys]


def lookup(cfg: Mapping[str, Any], key: str) -> Any:
    cur: Any = cfg
    for part in key.split("."):
        cur = cur[part]
    return cur


def param_values(cfg: Mapping[str, Any], rule: str, wildcards: Mapping[str, str]) -> Dict[str, Any]:
    """``{key: value}`` of what the job reads (Snakemake's ``params.section``, a rerun trigger)."""
    return {k: lookup(cfg, k) for k in param_keys(rule, wildcards)}


# ------------------------------------------------------------------------------- DVC
_REDIRECT = re.compile(r"\s*>\s*\S+\s+2>&1\s*$")
_CONFIG = re.compile(r"--config\s+\S+")


def snakemake_jobs(root: Path, configfiles: List[str] = (), target: str = "report") -> List[Dict[str, Any]]:
    """Every job of the DAG for ``target`` as Snakemake plans it: a dry run (``-n -p``) in an empty
    working directory, parsed into rule, wildcards, inputs, outputs, log and shell command."""
    import tempfile

    with tempfile.TemporaryDirectory() as wd:
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
            job = {"rule": m.group(1), "inputs": [], "outputs": [], "log": "", "wildcards": {}}
            jobs.append(job)
        elif job is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            if key in ("input", "output"):
                job[key + "s"] = value.split(", ")
            elif key == "log":
                job["log"] = value.split(" ")[0]
            elif key == "wildcards":
                job["wildcards"] = dict(kv.split("=", 1) for kv in value.split(", "))
        elif job is not None and line.startswith("Shell command: "):
            job["cmd"] = line[len("Shell command: "):]
            job = None
    for job in jobs:
        names, _ = STAGES[job["rule"]]
        parts = Path(job["log"]).with_suffix("").parts[2:]  # logs/<rule>/<w1>/<w2>.log
        if tuple(job["wildcards"].get(n) for n in names) != tuple(parts):
            raise ValueError(f"rule {job['rule']!r}: log {job['log']!r} must be logs/{job['rule']}/" + "/".join(f"{{{n}}}" for n in names) + ".log")
        job["name"] = ".".join((job["rule"], *parts))
    return sorted(jobs, key=lambda j: j["name"])


def dvc_stages(root: Path) -> Dict[str, Any]:
    """The content of ``dvc.yaml`` for the default params (params.yaml)."""
    stages = {}
    for job in snakemake_jobs(root):
        cmd = _CONFIG.sub("--config params.yaml", _REDIRECT.sub("", job["cmd"]))
        outs = []
        for o in job["outputs"]:
            if o.startswith("metrics/") and o.endswith(".json"):
                outs.append(("metrics", {o: {"cache": False}}))
            elif o.endswith(".losses.csv"):
                outs.append(("plots", {o: {"x": "step"}}))  # cached: pushed with the model
            elif o.endswith("quantile_sweep.csv"):
                outs.append(("plots", {o: {"x": "act_upper", "y": "qfid"}}))
            else:
                outs.append(("outs", o))
        stage: Dict[str, Any] = {"cmd": cmd}
        if job["inputs"]:
            stage["deps"] = sorted(job["inputs"])
        stage["params"] = param_keys(job["rule"], job["wildcards"])
        for kind in ("outs", "metrics", "plots"):
            items = [o for k, o in outs if k == kind]
            if items:
                stage[kind] = items
        stages[job["name"]] = stage
    return {"stages": stages}


def render_dvc_yaml(root: Path) -> str:
    import yaml

    header = (
        "# GENERATED by `python -m workflow_src dvc-yaml` from the Snakemake DAG and workflow_src/dag.py:\n"
        "# do not edit by hand (tests/test_dvc.py fails when this file is stale).  `dvc repro` builds the\n"
        "# same artifacts as `snakemake --cores all report` with the params in params.yaml.\n"
    )
    return header + yaml.safe_dump(dvc_stages(root), sort_keys=False, width=1000)
