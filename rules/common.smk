# Config handling and the stage declarations every rule file uses.  What each rule reads and
# writes, its params keys and its command are declared once, in workflow_src/workflow/stages.py;
# the rules add what only Snakemake knows: threads, resources, GPUs, local rules, rule order.
import os
import shlex
import sys
import uuid

sys.path.insert(0, workflow.basedir)

from workflow_src import config as qcfg
from workflow_src import registry
from workflow_src.workflow import forkserver
from workflow_src.workflow import stages as S
from workflow_src.workflow import tracking

# Bad params are rejected before any job starts (the CLI checks them again).
try:
    qcfg.validate(config, extra_checks=[S.resources_problems])
except qcfg.ConfigError as exc:
    raise WorkflowError(str(exc)) from None

# Every job reads the merged params (params.yaml + --configfile overrides) from this invocation's
# own resolved file, named by its content and never rewritten (QGAN_PARAMS, exported to every job
# below): another invocation in this directory, a dry run of another config, cannot change what a
# running job reads.  Rules rerun on the params `section` they declare.
PARAMS = str(qcfg.dump_resolved(config, ".qgan"))
ENV = "../envs/qgan.yaml"

# MLflow: every job of this invocation is tagged with one workflow id; the store is created once
# before jobs start (concurrent first-time sqlite migrations race).
os.environ.setdefault("QGAN_WORKFLOW_ID", uuid.uuid4().hex[:12])


# A local run's jobs fork from one warm process that has imported torch and the stages
# (workflow_src/workflow/forkserver.py; QGAN_WARM=off to start each job afresh).
onstart:
    tracking.init_store(config["profile"])
    warm = forkserver.start(os.getcwd(), ".qgan/forkserver.log") if forkserver.wanted(workflow) else None
    if warm:
        os.environ[forkserver.ENV] = warm


# Jobs other than training record their MLflow runs; the store gets them when the run ends, however it ends.
onsuccess:
    forkserver.stop(os.environ.pop(forkserver.ENV, None))
    tracking.flush()


onerror:
    forkserver.stop(os.environ.pop(forkserver.ENV, None))
    tracking.flush()


ARCHS = config["matrix"]["archs"]
# FP networks: imported from a published checkpoint (rule import_fp) or trained (rule train_fp).
IMPORTED_ARCHS = qcfg.imported_archs(config)
TRAINED_ARCHS = [a for a in ARCHS if a not in IMPORTED_ARCHS]
# A missing published checkpoint is no error here: the plan shows rule import_fp, which downloads
# it (fp_checkpoint.url) or says where to put it when it runs.
# Variants built by rule qat (methods that train against the FP generator); the others by quantize.
QAT_VARIANT = "(%s)-[a-z0-9-]+" % "|".join(registry.trained_methods())


wildcard_constraints:
    seed="|".join(str(s) for s in config["seeds"]),
    arch="|".join(ARCHS),
    dataset="[A-Za-z0-9_-]+",
    variant="[a-z0-9-]+",
    split="[A-Za-z]+",


def threads_of(rule):
    """The rule's threads: params `resources` (cpus), the same on a workstation and on SLURM."""
    return qcfg.rule_resources(config, rule)["cpus"]


# Upstream rules first: a rule's priority is its height in the rule graph (stages.rule_priorities).
PRIORITIES = S.rule_priorities(config)


def priority_of(rule):
    """The rule's Snakemake priority: ready jobs of rules with longer chains below them start first."""
    return PRIORITIES[rule]


def resources_of(rule):
    """What one job of the rule asks a cluster for besides GPUs (params `resources`)."""
    r = qcfg.rule_resources(config, rule)
    # cpus_per_task repeats threads for sbatch, and shows in a dry run (which caps threads at --cores)
    return {"cpus_per_task": r["cpus"], "mem_mb": r["mem_mb"], "runtime": r["runtime"]}


def arch_pattern(archs):
    """A wildcard constraint matching exactly ``archs`` (nothing when empty)."""
    return "|".join(archs) if archs else "(?!)"


def _with_config(path):
    """A declared path: a pattern as it is, a function of (params, wildcards) as an input function."""
    return (lambda wildcards: path(config, wildcards)) if callable(path) else path


def stage_input(rule):
    return {name: _with_config(a.path) for name, a in S.stage(rule).inputs.items()}


def stage_output(rule):
    out = {}
    for name, a in S.stage(rule).outputs.items():
        path = directory(a.path) if a.directory else a.path
        out[name] = report(path, **a.report) if a.report else path
    return out


def _optional_option(name):
    """``--name path`` when the optional input is there, else nothing."""
    return lambda wildcards, input: f"{S.option(name)} {shlex.quote(str(input[name]))}" if input[name] else ""


def stage_params(rule):
    st = S.stage(rule)
    params = {"section": lambda wildcards: S.param_values(config, rule, wildcards)}
    params.update({name: a.path for name, a in st.extra.items()})
    params.update({S.OPTIONAL_PREFIX + name: _optional_option(name) for name, a in st.inputs.items() if a.optional and not a.many})
    return params


def stage_log(rule):
    return S.stage(rule).log


def stage_benchmark(rule):
    """Every job's wall and CPU time and peak memory (the report's "where the time goes")."""
    return S.stage(rule).benchmark


def stage_shell(rule):
    return S.stage(rule).shell()


# Jobs import workflow_src from this checkout, whatever the working directory (-d) is; progress
# bars in logs/ refresh every few seconds rather than every step (set here, not in the prefix: tqdm
# reads it when imported, so the warm process needs it too).
os.environ.setdefault("TQDM_MININTERVAL", "3")
shell.prefix("export PYTHONPATH=%s:$PYTHONPATH; export QGAN_PARAMS=%s; " % (shlex.quote(workflow.basedir), shlex.quote(PARAMS)))
