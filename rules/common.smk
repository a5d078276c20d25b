# Config handling and path helpers shared by every rule file.  The experiment matrix comes from
# workflow_src.config.variants(), the same function the CLI and the report use.
import os
import sys
import uuid

sys.path.insert(0, workflow.basedir)

from workflow_src import config as qcfg
from workflow_src import dag
from workflow_src.methods import METHOD_PARAMS, QAT_METHODS

# The schema rejects bad params before any job starts; the CLI checks the same schema again.
validate(config, str(qcfg.SCHEMA_PATH))
try:
    qcfg.validate(config)
except qcfg.ConfigError as exc:
    raise WorkflowError(str(exc)) from None

# Every job reads the merged params (params.yaml + --configfile overrides) from one resolved file,
# rewritten only when its content changes.  Rules rerun on the params `section` they declare.
PARAMS = str(qcfg.dump_resolved(config, ".qgan/params.yaml"))
ENV = "../envs/qgan.yaml"

# MLflow: every job of this invocation is tagged with one workflow id; the store is created once
# before jobs start (concurrent first-time sqlite migrations race).
os.environ.setdefault("QGAN_WORKFLOW_ID", uuid.uuid4().hex[:12])


onstart:
    from workflow_src import tracking

    tracking.init_store(config["profile"])


ARCHS = config["matrix"]["archs"]
# FP networks: imported from a published checkpoint (rule import_fp) or trained (rule train_fp).
IMPORTED_ARCHS = qcfg.imported_archs(config)
TRAINED_ARCHS = [a for a in ARCHS if a not in IMPORTED_ARCHS]
for _arch in IMPORTED_ARCHS:
    _path = config["archs"][_arch]["fp_checkpoint"]["path"]
    if not os.path.exists(_path):
        raise WorkflowError(
            f"key 'archs.{_arch}.fp_checkpoint.path' = {_path!r}: no such file (relative to the working directory "
            f"{os.getcwd()!r}). Put the published checkpoint there (README: 'Published checkpoints'), or set "
            f"'archs.{_arch}.fp_checkpoint: null' to train {_arch} instead."
        )
VARIANTS = [v.name for v in qcfg.variants(config)]
EXPORT_VARIANTS = [v.name for v in qcfg.variants(config) if v.w_bits in config["export"]["w_bits"]]
FEATURE_KIND = config["features"]["kind"]
FEATURES = "resources/features/tinycnn.pt" if FEATURE_KIND == "tinycnn" else "resources/inception"
PERCEPTUAL = {"tinyvgg": "resources/perceptual/tinyvgg.pt", "vgg16": "resources/perceptual/vgg16.pth"}[config["perceptual"]["kind"]]
QAT_VARIANT = "(%s)-[a-z0-9-]+" % "|".join(QAT_METHODS)


wildcard_constraints:
    arch="|".join(ARCHS),
    dataset="[A-Za-z0-9_-]+",
    variant="[a-z0-9-]+",
    split="[A-Za-z]+",


def threads_of(rule):
    """The rule's threads: params `resources` (cpus), the same on a workstation and on SLURM."""
    return qcfg.rule_resources(config, rule)["cpus"]


def resources_of(rule):
    """What one job of the rule asks a cluster for besides GPUs (params `resources`)."""
    r = qcfg.rule_resources(config, rule)
    # cpus_per_task repeats threads for sbatch, and shows in a dry run (which caps threads at --cores)
    return {"cpus_per_task": r["cpus"], "mem_mb": r["mem_mb"], "runtime": r["runtime"]}


def arch_pattern(archs):
    """A wildcard constraint matching exactly ``archs`` (nothing when empty)."""
    return "|".join(archs) if archs else "(?!)"


def fp_checkpoint(wildcards):
    return config["archs"][wildcards.arch]["fp_checkpoint"]["path"]


def arch_dataset(arch):
    return config["archs"][arch]["dataset"]


def data_dir(wildcards):
    return f"data/{arch_dataset(wildcards.arch)}"


def real_split(arch):
    from workflow_src.data import is_two_domain

    split = config["eval"]["real_split"]
    return f"{split}B" if is_two_domain(config["datasets"][arch_dataset(arch)]["kind"]) else split


def real_stats(wildcards):
    return f"stats/{arch_dataset(wildcards.arch)}-{real_split(wildcards.arch)}.npz"


def used_datasets():
    return sorted({arch_dataset(a) for a in ARCHS})


# Jobs import workflow_src from this checkout, whatever the working directory (-d) is; progress
# bars in logs/ refresh every few seconds rather than every step.
shell.prefix(
    "export PYTHONPATH='%s':$PYTHONPATH; export TQDM_MININTERVAL=${{TQDM_MININTERVAL:-3}}; " % workflow.basedir
)


def sweep_best(wildcards):
    """The sweep's best pair, for methods that read quantiles when the arch asks for `sweep`."""
    reads = "archs.{arch}.quantiles" in METHOD_PARAMS[qcfg.Variant.parse(wildcards.variant).method]
    if reads and config["archs"][wildcards.arch]["quantiles"] == "sweep":
        return f"sweeps/{wildcards.arch}/best.json"
    return []


def perceptual_net(wildcards):
    """QAT's perceptual network, unless the arch's QAT uses the pixel MSE ablation."""
    from workflow_src.methods.qat import qat_params

    return PERCEPTUAL if qat_params(config, wildcards.arch)["distill_loss"] == "perceptual" else []


def figure_models(wildcards):
    """The models and metrics a sample figure shows (workflow_src.figures.figure_variants)."""
    from workflow_src.figures import figure_variants

    vs = [v.name for v in figure_variants(config)]
    return {
        "models": [f"models/q/{wildcards.arch}/{v}.pt" for v in vs],
        "metrics": [f"metrics/{wildcards.arch}/{v}.json" for v in ["fp"] + vs],
    }
