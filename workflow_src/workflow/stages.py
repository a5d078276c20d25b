"""Every workflow stage, declared once: the rule it is, the command of ``python -m workflow_src``
that runs it, the artifacts it reads and writes (by name, with their paths), the params keys it
reads (a change reruns its jobs), and the function that runs it.

The rules (``rules/*.smk``) take their inputs, outputs, log, params and shell command from here
(``rules/common.smk``: ``stage_input`` ...), the CLI builds its parser from here
(:mod:`.cli`), DVC's stages get their ``params:`` from here (:mod:`.dvc_yaml`), and every stage
function takes its artifacts as keyword arguments named as here.  No torch: the Snakefile parses
this module, and the CLI reads it before it imports the one stage it runs.

A path is a pattern whose ``{wildcards}`` Snakemake fills, or a function ``(cfg, wildcards) ->
path or list of paths`` for what depends on the params (which dataset an arch trains on, which
feature network the profile uses, the variants of the matrix).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from .. import registry
from ..config import Variant, variants
from ..config.trace import plain
from ..datasets.kinds import is_two_domain

Path_ = Union[str, Callable[[Mapping[str, Any], Mapping[str, str]], Union[str, List[str]]]]


@dataclass(frozen=True)
class Artifact:
    """A file or directory a stage reads or writes."""

    path: Path_
    help: str
    many: bool = False  # a list of paths (the option takes several)
    optional: bool = False  # may be absent ([]): the option is left out (or, with many, given no paths)
    directory: bool = False  # an output directory
    implicit: bool = False  # an output the stage writes beside another; not an option of the command
    report: Optional[Mapping[str, str]] = None  # caption and category in `snakemake --report`


@dataclass(frozen=True)
class Stage:
    """One rule of the workflow = one command of ``python -m workflow_src`` = one function."""

    name: str  # the rule; the command is the same with dashes
    help: str
    run: str  # "module:function" under workflow_src (imported only when the command runs)
    wildcards: Tuple[str, ...] = ()  # in the order of the log path logs/<rule>/<w1>/<w2>.log
    inputs: Mapping[str, Artifact] = field(default_factory=dict)
    outputs: Mapping[str, Artifact] = field(default_factory=dict)
    extra: Mapping[str, Artifact] = field(default_factory=dict)  # paths given to the command that are neither
    # the params keys it reads, "{wildcard}" filled in: a tuple of keys and of functions (cfg, wildcards) -> keys,
    # or one such function; `runtime` (how a job runs, never what it computes) is read by many and declared by none
    params: Union[Tuple[Union[str, Callable[[Mapping[str, Any], Mapping[str, str]], List[str]]], ...],
                  Callable[[Mapping[str, Any], Mapping[str, str]], List[str]]] = ()
    threads: bool = True  # passes Snakemake's {threads} as --threads
    rule: bool = True  # False: a command without a rule (validate, dvc-yaml)

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    @property
    def log(self) -> str:
        if not self.wildcards:
            return f"logs/{self.name}.log"
        return f"logs/{self.name}/" + "/".join(SEED_DIR if w == "seed" else f"{{{w}}}" for w in self.wildcards) + ".log"

    @property
    def benchmark(self) -> str:
        """The rule's Snakemake ``benchmark:`` file (wall and CPU time, peak memory), beside its log."""
        return BENCHMARK_DIR + self.log[len("logs"):-len(".log")] + ".tsv"

    def arguments(self) -> Dict[str, Tuple[str, Optional[Artifact]]]:
        """Every option of the command: ``{name: (kind, artifact)}``, kind one of wildcard, input,
        output, extra (artifact None for wildcards), in command-line order."""
        args: Dict[str, Tuple[str, Optional[Artifact]]] = {w: ("wildcard", None) for w in self.wildcards}
        for kind, group in (("input", self.inputs), ("output", self.outputs), ("extra", self.extra)):
            args.update({name: (kind, a) for name, a in group.items() if not a.implicit})
        return args

    def function_arguments(self) -> List[str]:
        """The options the stage's function takes as keyword arguments: all but ``seed`` (a
        replicate's seed reaches it as the params' ``seed``: :func:`.cli.replicate`)."""
        return [name for name in self.arguments() if name != "seed"]

    def shell(self) -> str:
        """The rule's shell command (Snakemake placeholders), the same line DVC runs.  Every path is
        shell-quoted (``:q``): paths from the params (a checkpoint's ``path``) may hold spaces or
        shell metacharacters.  An optional input's ``params.opt_<name>`` is quoted where it is made."""
        parts = ["python -m workflow_src"] + (["--threads {threads}"] if self.threads else []) + [self.command]  # params: $QGAN_PARAMS
        where = {"wildcard": "wildcards", "input": "input", "output": "output", "extra": "params"}
        for name, (kind, a) in self.arguments().items():
            if a is not None and a.optional and not a.many:
                parts.append(f"{{params.{OPTIONAL_PREFIX}{name}}}")
            else:
                parts.append(f"{option(name)} {{{where[kind]}.{name}:q}}")
        return " ".join(parts) + " > {log:q} 2>&1"


BENCHMARK_DIR = "logs/benchmark"  # every job's benchmark file: logs/benchmark/<rule>/<wildcards>.tsv
STARTUP_MARK = "qgan-bench: work starts"  # the CLI logs "<mark> <seconds> s after the process started"
RESOURCES_MARK = "qgan-bench: job used"  # ... and at the end "<mark> cpu <s> s, peak rss <MB> MB"
OPTIONAL_PREFIX = "opt_"  # the rule's params entry that holds "--name path" or "" for an optional input

WILDCARDS = {
    "seed": "the replicate's seed (one of seeds:)",
    "arch": "the GAN (matrix.archs)",
    "variant": "the quantized variant, METHOD-(channel|tensor)-wWaA",
    "dataset": "the dataset's key under datasets:",
    "split": "the dataset split (train, test, trainA, testB, ...)",
}


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------- replicates (params `seeds`)
SEED_DIR = "s{seed}"  # a seeded artifact's directory level: models/s0/fp/stylegan.pt


def seeded(path: str, seed: Union[int, str, None] = None) -> str:
    """``path`` of one replicate: ``s{seed}/`` after its first directory (``metrics/{arch}/x.json`` ->
    ``metrics/s{seed}/{arch}/x.json``); with ``seed``, that seed filled in."""
    top, rest = path.split("/", 1)
    level = SEED_DIR if seed is None else f"s{seed}"
    return f"{top}/{level}/{rest}"


def first_seed(cfg: Mapping[str, Any]) -> int:
    """The replicate that figures of one run (Figure 1, sensitivity, samples) and the exports show."""
    return cfg["seeds"][0]


# ---------------------------------------------------------------- paths that depend on the params
def arch_data(cfg: Mapping[str, Any], w: Mapping[str, str]) -> str:
    """The prepared dataset the arch trains on."""
    return f"data/{cfg['archs'][w['arch']]['dataset']}"


def used_data(cfg: Mapping[str, Any], w: Mapping[str, str] = None) -> List[str]:
    """Every prepared dataset some arch of the params uses, whether or not the matrix selects it: the
    tiny feature and perceptual networks (the metric, the distillation loss) are the profile's, so an
    arch scores the same in a run of it alone as in the whole matrix."""
    return [f"data/{d}" for d in sorted({a["dataset"] for a in cfg["archs"].values()})]


def feature_network(cfg: Mapping[str, Any], w: Mapping[str, str] = None) -> str:
    """The FID feature network: trained offline (tinycnn), or pytorch-fid's Inception weights."""
    return "resources/features/tinycnn.pt" if cfg["features"]["kind"] == "tinycnn" else "resources/inception"


def real_split(cfg: Mapping[str, Any], arch: str, split: str = "") -> str:
    """The split of real images FID compares with: ``datasets.<name>.fid_split``, default
    ``eval.real_split`` (two-domain datasets: of the target domain B); ``split`` names another."""
    ds = cfg["datasets"][cfg["archs"][arch]["dataset"]]
    split = split or ds.get("fid_split", cfg["eval"]["real_split"])
    return f"{split}B" if is_two_domain(ds["kind"]) else split


def real_statistics(cfg: Mapping[str, Any], w: Mapping[str, str]) -> str:
    return f"stats/{cfg['archs'][w['arch']]['dataset']}-{real_split(cfg, w['arch'])}.npz"


def split_statistics(split: str) -> Callable[[Mapping[str, Any], Mapping[str, str]], str]:
    """The real statistics of the arch's dataset's ``split`` (the noise floor's train and test)."""
    return lambda cfg, w: f"stats/{cfg['archs'][w['arch']]['dataset']}-{real_split(cfg, w['arch'], split)}.npz"


def _method(w: Mapping[str, str]) -> "registry.Method":
    """The method of a quantized variant's job."""
    return registry.method(Variant.parse(w["variant"]).method)


def _needs(cfg: Mapping[str, Any], w: Mapping[str, str], need: str) -> bool:
    """Whether the job's method needs ``need`` (registry NEEDS) for its arch under ``cfg``."""
    return need in _method(w).needs_for(cfg, w["arch"])


def sweep_best(cfg: Mapping[str, Any], w: Mapping[str, str]) -> Union[str, List[str]]:
    """The quantile sweep's best pair, for methods that need quantiles when the arch asks for `sweep`."""
    m = _method(w)
    if _needs(cfg, w, "quantiles") and cfg["archs"][w["arch"]]["quantiles"] == "sweep" \
            and registry.own_quantiles(cfg, w["arch"], m.name)[0] is None:
        return seeded(f"sweeps/{w['arch']}/best.json", w["seed"])
    return []


def sensitivity_quantiles(cfg: Mapping[str, Any], w: Mapping[str, str]) -> Union[str, List[str]]:
    """The quantile sweep's best pair, for the layer sensitivity (the swept method) when the arch asks for `sweep`."""
    if cfg["archs"][w["arch"]]["quantiles"] == "sweep" and registry.own_quantiles(cfg, w["arch"], registry.swept_method().name)[0] is None:
        return seeded(f"sweeps/{w['arch']}/best.json", w["seed"])
    return []


def sensitivity_table(cfg: Mapping[str, Any], w: Mapping[str, str]) -> Union[str, List[str]]:
    """The arch's layer sensitivity, for methods that allocate widths from it (mixed precision)."""
    return seeded(f"sensitivity/{w['arch']}.csv", w["seed"]) if _needs(cfg, w, "sensitivity") else []


def _swept_keys(cfg: Mapping[str, Any], w: Mapping[str, str]) -> List[str]:
    """What the swept method (vanilla quantile PTQ) reads for the arch."""
    return registry.swept_method().params_keys(cfg, w["arch"])


PERCEPTUAL_NETWORKS = {"tinyvgg": "resources/perceptual/tinyvgg.pt", "vgg16": "resources/perceptual/vgg16.pth"}


def perceptual_network(cfg: Mapping[str, Any], w: Mapping[str, str]) -> Union[str, List[str]]:
    """The perceptual network, for methods that need it for this arch."""
    return PERCEPTUAL_NETWORKS[cfg["perceptual"]["kind"]] if _needs(cfg, w, "perceptual") else []


def validation_features(cfg: Mapping[str, Any], w: Mapping[str, str]) -> Union[str, List[str]]:
    """The FID feature network, for methods that select on a validation qFID (qat.select_on: qfid)."""
    return feature_network(cfg, w) if _needs(cfg, w, "validation") else []


def validation_data(cfg: Mapping[str, Any], w: Mapping[str, str]) -> Union[str, List[str]]:
    """The arch's prepared dataset, for methods that select on a validation qFID (image-to-image
    GANs hold their validation inputs out of its training split)."""
    return arch_data(cfg, w) if _needs(cfg, w, "validation") else []


def published_checkpoint(cfg: Mapping[str, Any], w: Mapping[str, str]) -> Union[str, List[str]]:
    """The published checkpoint file once it is there; before that nothing, so that the paper run
    can be planned (``snakemake -n``) on a fresh clone: rule import_fp then downloads it
    (``fp_checkpoint.url``) or fails saying where to put it."""
    path = cfg["archs"][w["arch"]]["fp_checkpoint"]["path"]
    return path if os.path.exists(path) else []


def figure_variants(cfg: Mapping[str, Any]) -> List[Variant]:
    """The variants a sample figure shows: every method x every weight width the matrix has (less
    `matrix.exclude`), a8 (per-tensor if the matrix has it, else per-channel)."""
    m = cfg["matrix"]
    pc = False if False in m["per_channel"] else True
    a = 8 if 8 in m["a_bits"] else max(m["a_bits"])
    have = set(variants(cfg))
    return [v for meth in m["methods"] for w in sorted(m["w_bits"], reverse=True) if (v := Variant(meth, pc, w, a)) in have]


def exported_variants(cfg: Mapping[str, Any]) -> List[Variant]:
    """The variants rule export turns into integer runtimes: weight widths in export.w_bits, and every
    mixed-precision variant (its exported size is what it is for), with 8-bit activations (the integer
    files hold activations as uint8 on their full grid: a narrower grid would need a clamp of its own)."""
    return [v for v in variants(cfg) if v.a_bits == 8 and (v.w_bits in cfg["export"]["w_bits"] or registry.method(v.method).mixed)]


def _every(pattern: str, which: Callable[[Mapping[str, Any]], List[str]], every_seed: bool = True) -> Callable:
    """``pattern`` (a seeded path) for every seed (``every_seed``, else the first), every arch of the
    matrix and every name ``which(cfg)`` lists."""
    def paths(cfg: Mapping[str, Any], w: Mapping[str, str] = None) -> List[str]:
        seeds = cfg["seeds"] if every_seed else [first_seed(cfg)]
        return [pattern.format(seed=s, arch=a, variant=v) for s in seeds for a in cfg["matrix"]["archs"] for v in which(cfg)]
    return paths


def _per_arch(pattern: str) -> Callable:
    """``pattern`` (a seeded path) for every arch of the matrix, of the first seed."""
    return lambda cfg, w=None: [pattern.format(seed=first_seed(cfg), arch=a) for a in cfg["matrix"]["archs"]]


def _quantize_keys(cfg: Mapping[str, Any], w: Mapping[str, str]) -> List[str]:
    """A quantized variant's job reads what its method reads there (registry), the profile (its MLflow
    run) and, where it holds training images out for a validation qFID, the arch's dataset."""
    held_out = _needs(cfg, w, "validation") and translates_images(cfg, w)
    return ["profile", *_method(w).params_keys(cfg, w["arch"]), *(_dataset_kind(cfg, w) if held_out else [])]


_ALL_VARIANTS = lambda cfg: ["fp"] + [v.name for v in variants(cfg)]  # noqa: E731
_ARCH = ("archs.{arch}.model", "archs.{arch}.resolution")
def _variant_matrix(cfg: Mapping[str, Any], w: Mapping[str, str] = None) -> Tuple[str, ...]:
    """The ``matrix`` keys the variant list reads (``config.variants``): not ``matrix.archs``, so that a
    sweep does not rerun when another arch joins the matrix."""
    return ("matrix.methods", "matrix.per_channel", "matrix.w_bits", "matrix.a_bits") + tuple(
        f"matrix.{k}" for k in ("exclude", "include") if k in cfg["matrix"]) + _mixed_keys(cfg, w) + _mixed_widths(cfg, w)


def _mixed_keys(cfg: Mapping[str, Any], w: Mapping[str, str] = None) -> Tuple[str, ...]:
    """The keys besides ``matrix`` that the variant list reads: a listed mixed-precision method's budgets."""
    return tuple(m.budgets for name in cfg["matrix"]["methods"] if (m := registry.method(name)).mixed)


def _mixed_widths(cfg: Mapping[str, Any], w: Mapping[str, str] = None) -> Tuple[str, ...]:
    """The widths a listed mixed-precision method gives its layers (the quantile sweep runs at each)."""
    return tuple(m.widths for name in cfg["matrix"]["methods"] if (m := registry.method(name)).mixed)


def translates_images(cfg: Mapping[str, Any], w: Mapping[str, str]) -> bool:
    """Whether the arch's generator takes source images (a two-domain dataset: CycleGAN) rather than latents."""
    return is_two_domain(cfg["datasets"][cfg["archs"][w["arch"]]["dataset"]]["kind"])


def _dataset_kind(cfg: Mapping[str, Any], w: Mapping[str, str]) -> List[str]:
    """The arch's dataset and its kind (one or two domains: which splits the job reads)."""
    return [f"archs.{w['arch']}.dataset", f"datasets.{cfg['archs'][w['arch']]['dataset']}.kind"]


_Keys = Callable[[Mapping[str, Any], Mapping[str, str]], List[str]]


def _if_images(*keys: Union[str, _Keys], otherwise: Tuple[Union[str, _Keys], ...] = ()) -> _Keys:
    """``keys`` (names, or functions of params and wildcards) for an arch that translates images,
    ``otherwise`` for one that samples latents."""
    def chosen(cfg: Mapping[str, Any], w: Mapping[str, str]) -> List[str]:
        return [x for k in (keys if translates_images(cfg, w) else otherwise) for x in (k(cfg, w) if callable(k) else [k])]
    return chosen


# An evaluation reads its batch size, grid and bootstrap count, the feature network's kind, the arch's
# networks and the profile (its MLflow run and metrics record: so do training, quantization, the sweep
# and the exports); the sample count comes with its inputs (rule eval_inputs), the real split with the
# real statistics.
_EVALUATE = ("seed", "profile", "eval.batch_size", "eval.grid", "eval.bootstrap", "features.kind", *_ARCH)

# ------------------------------------------------------------------------------ the stages
_STAGES = [
    # datasets, the FID feature space, real-image statistics (rules/data.smk)
    Stage("prepare_data", "download (sha256-checked) or generate a dataset", "workflow.data:prepare_data",
          wildcards=("dataset",), outputs={"out": Artifact("data/{dataset}", "the prepared dataset", directory=True)},
          extra={"downloads": Artifact("downloads", "where downloads are kept (and their sha256 lock)")},
          params=("datasets.{dataset}",), threads=False),
    Stage("train_features", "train the tiny profile's FID feature network", "workflow.networks:train_features",
          inputs={"data": Artifact(used_data, "the prepared datasets (their training splits)", many=True)},
          outputs={"out": Artifact("resources/features/tinycnn.pt", "the feature network")}, params=("seed", "profile", "features.tinycnn")),
    Stage("fetch_inception", "download pytorch-fid's FID Inception weights (sha256-verified)", "workflow.networks:fetch_inception",
          outputs={"out": Artifact("resources/inception", "the weights, in torch hub's layout", directory=True)},
          params=("features.inception",), threads=False),
    Stage("real_stats", "feature statistics of real images", "workflow.data:real_stats", wildcards=("dataset", "split"),
          inputs={"data": Artifact("data/{dataset}", "the prepared dataset"), "features": Artifact(feature_network, "the FID feature network")},
          outputs={"out": Artifact("stats/{dataset}-{split}.npz", "mean and covariance of the split's features (all: every split)")},
          params=("features", "eval.batch_size", "datasets.{dataset}")),
    # full-precision GANs (rules/train.smk)
    Stage("train_fp", "train a full-precision GAN (resumes from --ckpt)", "workflow.fp:train_fp", wildcards=("seed", "arch"),
          inputs={"data": Artifact(arch_data, "the prepared dataset")},
          outputs={"model": Artifact(seeded("models/fp/{arch}.pt"), "every network of the trained GAN"),
                   "losses": Artifact(seeded("models/fp/{arch}.losses.csv"), "per-step losses (written beside the model)", implicit=True)},
          extra={"ckpt": Artifact(seeded("models/fp/{arch}.ckpt.pt"), "the resumable checkpoint (deleted at the end)")},
          params=("seed", "profile", "train", _dataset_kind, *_ARCH, "archs.{arch}.train")),
    Stage("import_fp", "import the FP networks from a published checkpoint (archs.<arch>.fp_checkpoint)",
          "workflow.fp:import_fp", wildcards=("seed", "arch"),
          inputs={"checkpoint": Artifact(published_checkpoint, "the published checkpoint file (absent: fetched from "
                                                               "fp_checkpoint.url, or an error says where to put it)", optional=True)},
          outputs={"model": Artifact(seeded("models/fp/{arch}.pt"), "the networks, in the format training writes")},
          params=("seed", "archs.{arch}.fp_checkpoint", *_ARCH)),
    # the distillation set and the evaluation inputs (rules/distill.smk)
    Stage("distill", "generate the distillation set", "workflow.distill:distill", wildcards=("seed", "arch"),
          inputs={"data": Artifact(arch_data, "the prepared dataset (CycleGAN: the source images)"),
                  "fp": Artifact(seeded("models/fp/{arch}.pt"), "the FP networks")},
          outputs={"out": Artifact(seeded("distill/{arch}.pt"), "inputs and the FP generator's outputs")}, params=("seed", "distill", _if_images("sweep.validation_samples"), _dataset_kind, *_ARCH)),
    Stage("eval_inputs", "draw the seeded evaluation inputs", "workflow.distill:eval_inputs", wildcards=("seed", "arch"),
          inputs={"data": Artifact(arch_data, "the prepared dataset (CycleGAN: the source images)")},
          outputs={"out": Artifact(seeded("eval/{arch}/inputs.pt"), "latents or source images, and per-sample extras")},
          params=("seed", "eval.n_samples", _if_images("eval.real_split"), _dataset_kind, *_ARCH), threads=False),
    # quantization (rules/quantize.smk, rules/qat.smk): the method's own file says what it reads
    Stage("quantize", "quantize a generator with one method/variant", "workflow.quantize:quantize", wildcards=("seed", "arch", "variant"),
          inputs={"fp": Artifact(seeded("models/fp/{arch}.pt"), "the FP networks"), "distill": Artifact(seeded("distill/{arch}.pt"), "the distillation set"),
                  "quantiles": Artifact(sweep_best, "the quantile sweep's best.json (archs.<arch>.quantiles: sweep)", optional=True),
                  "sensitivity": Artifact(sensitivity_table, "the arch's layer sensitivity (mixed precision allocates from it)", optional=True)},
          outputs={"model": Artifact(seeded("models/q/{arch}/{variant}.pt"), "the quantized generator"),
                   "info": Artifact(seeded("models/q/{arch}/{variant}.json"), "calibration size, time, per-block losses, mixed-precision widths")},
          params=_quantize_keys),
    Stage("qat", "quantization-aware training of one variant", "workflow.quantize:quantize", wildcards=("seed", "arch", "variant"),
          inputs={"fp": Artifact(seeded("models/fp/{arch}.pt"), "the FP networks (generator and discriminator)"),
                  "distill": Artifact(seeded("distill/{arch}.pt"), "the distillation set"),
                  "quantiles": Artifact(sweep_best, "the quantile sweep's best.json (archs.<arch>.quantiles: sweep)", optional=True),
                  "perceptual": Artifact(perceptual_network, "the perceptual network (perceptual.kind)", optional=True),
                  "features": Artifact(validation_features, "the FID feature network (qat.select_on: qfid)", optional=True),
                  "data": Artifact(validation_data, "the prepared dataset, for its validation inputs (qat.select_on: qfid)", optional=True)},
          outputs={"model": Artifact(seeded("models/q/{arch}/{variant}.pt"), "the quantized generator"),
                   "info": Artifact(seeded("models/q/{arch}/{variant}.json"), "calibration and training record"),
                   "losses": Artifact(seeded("models/q/{arch}/{variant}.losses.csv"), "per-step losses")},
          params=_quantize_keys),
    Stage("train_perceptual", "train the tiny profile's perceptual network (QAT's distillation loss)", "workflow.networks:train_perceptual",
          inputs={"data": Artifact(used_data, "the prepared datasets (their training splits)", many=True)},
          outputs={"out": Artifact(PERCEPTUAL_NETWORKS["tinyvgg"], "the perceptual network")}, params=("seed", "profile", "perceptual.tinyvgg")),
    Stage("fetch_vgg16", "download torchvision's VGG16 weights for the perceptual loss (sha256-verified)", "workflow.networks:fetch_vgg16",
          outputs={"out": Artifact(PERCEPTUAL_NETWORKS["vgg16"], "the weights")}, params=("perceptual.vgg16",), threads=False),
    # FID and qFID (rules/evaluate.smk)
    Stage("evaluate_fp", "FID of the FP generator; its feature statistics for qFID", "workflow.evaluate:evaluate_fp", wildcards=("seed", "arch"),
          inputs={"model": Artifact(seeded("models/fp/{arch}.pt"), "the FP networks"), "inputs": Artifact(seeded("eval/{arch}/inputs.pt"), "the evaluation inputs"),
                  "features": Artifact(feature_network, "the FID feature network"), "real_stats": Artifact(real_statistics, "the real images' statistics")},
          outputs={"metrics": Artifact(seeded("metrics/{arch}/fp.json"), "FID and its bootstrap spread"),
                   "stats": Artifact(seeded("eval/{arch}/fp_stats.npz"), "the FP generator's feature statistics"),
                   "samples": Artifact(seeded("samples/{arch}/fp.png"), "a row of samples")},
          params=_EVALUATE),
    Stage("evaluate", "FID and qFID of one quantized variant", "workflow.evaluate:evaluate", wildcards=("seed", "arch", "variant"),
          inputs={"model": Artifact(seeded("models/q/{arch}/{variant}.pt"), "the quantized generator"),
                  "inputs": Artifact(seeded("eval/{arch}/inputs.pt"), "the evaluation inputs"),
                  "features": Artifact(feature_network, "the FID feature network"), "real_stats": Artifact(real_statistics, "the real images' statistics"),
                  "fp_stats": Artifact(seeded("eval/{arch}/fp_stats.npz"), "the FP generator's feature statistics")},
          outputs={"metrics": Artifact(seeded("metrics/{arch}/{variant}.json"), "FID, qFID and their bootstrap spreads"),
                   "samples": Artifact(seeded("samples/{arch}/{variant}.png"), "a row of samples")},
          params=_EVALUATE),
    Stage("noise_floor", "the feature space's noise floor: FP vs FP on other inputs, real split vs split",
          "workflow.evaluate:noise_floor", wildcards=("seed", "arch"),
          inputs={"model": Artifact(seeded("models/fp/{arch}.pt"), "the FP networks"),
                  "fp_stats": Artifact(seeded("eval/{arch}/fp_stats.npz"), "the FP generator's feature statistics on the evaluation inputs"),
                  "data": Artifact(arch_data, "the prepared dataset (CycleGAN: the held-out training images)"),
                  "features": Artifact(feature_network, "the FID feature network"),
                  "real_test": Artifact(split_statistics("test"), "the real test images' statistics"),
                  "real_train": Artifact(split_statistics("train"), "the real training images' statistics")},
          outputs={"out": Artifact(seeded("metrics/{arch}/noise_floor.json"), "qfid_floor and fid_floor")},
          params=("seed", "eval.batch_size", "features.kind", *_ARCH,
                  _if_images("sweep.validation_samples", _dataset_kind, otherwise=("eval.n_samples",)))),
    # the quantile sweep, paper Figure 1 (rules/sweep.smk)
    Stage("quantile_sweep", "qFID over activation/weight quantile pairs (Figure 1)", "workflow.sweep:run_sweep", wildcards=("seed", "arch"),
          inputs={"fp": Artifact(seeded("models/fp/{arch}.pt"), "the FP networks"), "distill": Artifact(seeded("distill/{arch}.pt"), "the distillation set"),
                  "data": Artifact(arch_data, "the prepared dataset (CycleGAN: validation images outside the distillation set)"),
                  "features": Artifact(feature_network, "the FID feature network")},
          outputs={"csv": Artifact(seeded("sweeps/{arch}/quantile_sweep.csv"), "validation qFID per pair and weight width"),
                   "best": Artifact(seeded("sweeps/{arch}/best.json"), "the best pair per weight width")},
          params=("seed", "profile", "sweep", _variant_matrix, "sensitivity.w_bits", "calibration", "distill", "eval.batch_size", "features.kind", *_ARCH,
                  _if_images(_dataset_kind))),
    Stage("fig1", "the quantile-sweep figure and table", "workflow.sweep:figure",
          inputs={"sweeps": Artifact(_per_arch(seeded("sweeps/{arch}/quantile_sweep.csv")), "every arch's sweep (the first seed's)", many=True)},
          outputs={"png": Artifact("reports/fig1_quantile_sweep.png", "Figure 1", report={"caption": "captions/fig1.rst", "category": "Figures"}),
                   "csv": Artifact("reports/quantile_sweep.csv", "every sweep in one table")},
          threads=False),
    # layer sensitivity, beyond the paper (rules/sensitivity.smk)
    Stage("sensitivity", "qFID when only one layer or operation is quantized, every one in turn", "workflow.sensitivity:run_sensitivity",
          wildcards=("seed", "arch"),
          inputs={"fp": Artifact(seeded("models/fp/{arch}.pt"), "the FP networks"), "distill": Artifact(seeded("distill/{arch}.pt"), "the distillation set (calibration)"),
                  "data": Artifact(arch_data, "the prepared dataset (CycleGAN: validation images outside the distillation set)"),
                  "features": Artifact(feature_network, "the FID feature network"),
                  "quantiles": Artifact(sensitivity_quantiles, "the quantile sweep's best.json (archs.<arch>.quantiles: sweep)", optional=True)},
          outputs={"csv": Artifact(seeded("sensitivity/{arch}.csv"), "validation qFID per layer (weight, input, both) and operation")},
          params=("seed", "profile", "sensitivity", "sweep.validation_samples", "eval.batch_size", "eval.bootstrap", "features.kind",
                  _swept_keys, _if_images(_dataset_kind))),
    Stage("fig_sensitivity", "the layer-sensitivity figure and table", "workflow.sensitivity:figure",
          inputs={"tables": Artifact(_per_arch(seeded("sensitivity/{arch}.csv")), "every arch's layer sensitivity (the first seed's)", many=True)},
          outputs={"png": Artifact("reports/fig_sensitivity.png", "layers ranked by their damage alone",
                                   report={"caption": "captions/fig_sensitivity.rst", "category": "Figures"}),
                   "csv": Artifact("reports/sensitivity.csv", "every arch's layer sensitivity in one table")},
          params=("sensitivity.top",), threads=False),
    # integer exports (rules/export.smk)
    Stage("export_fp", "FP32 exports of a generator (the baselines of rule export)", "workflow.export:export_fp", wildcards=("seed", "arch"),
          inputs={"model": Artifact(seeded("models/fp/{arch}.pt"), "the FP networks"), "inputs": Artifact(seeded("eval/{arch}/inputs.pt"), "the evaluation inputs")},
          outputs={"out": Artifact(seeded("exports/{arch}/fp"), "one file per runtime and batch size", directory=True)},
          params=("export.runtimes", "export.batch_sizes", *_ARCH)),
    Stage("export", "integer exports of one variant, checked and timed against FP32", "workflow.export:export_variant",
          wildcards=("seed", "arch", "variant"),
          inputs={"model": Artifact(seeded("models/q/{arch}/{variant}.pt"), "the quantized generator"),
                  "fp": Artifact(seeded("exports/{arch}/fp"), "the FP32 exports"), "inputs": Artifact(seeded("eval/{arch}/inputs.pt"), "the evaluation inputs"),
                  "features": Artifact(feature_network, "the FID feature network"),
                  "distill": Artifact(seeded("distill/{arch}.pt"), "the distillation set (the deployable scheme's calibration)")},
          outputs={"files": Artifact(seeded("exports/{arch}/{variant}"), "one file per runtime and batch size (deployable/: that scheme's)", directory=True),
                   "summary": Artifact(seeded("metrics/{arch}/{variant}.export.json"), "sizes, latencies, agreement with the fake-quant model")},
          params=("profile", "export", "eval.batch_size", "features.kind", "calibration.images", "distill.batch_size", *_ARCH)),
    # tables, figures, the HTML page (rules/report.smk)
    Stage("sample_figure", "samples by method at w8/w4 with FID captions (paper Figures 2-4)", "reporting.samples:sample_figure",
          wildcards=("arch",),
          inputs={"models": Artifact(lambda cfg, w: [seeded(f"models/q/{w['arch']}/{v.name}.pt", first_seed(cfg)) for v in figure_variants(cfg)],
                                     "the variants shown (the first seed's)", many=True),
                  "metrics": Artifact(lambda cfg, w: [seeded(f"metrics/{w['arch']}/{v}.json", first_seed(cfg)) for v in ["fp"] + [v.name for v in figure_variants(cfg)]],
                                      "their metrics (FP first)", many=True),
                  "fp": Artifact(lambda cfg, w: seeded(f"models/fp/{w['arch']}.pt", first_seed(cfg)), "the FP networks"),
                  "inputs": Artifact(lambda cfg, w: seeded(f"eval/{w['arch']}/inputs.pt", first_seed(cfg)), "the evaluation inputs")},
          outputs={"out": Artifact("reports/fig_samples_{arch}.png", "the figure",
                                   report={"caption": "captions/fig_samples.rst", "category": "Figures", "subcategory": "Samples"})},
          params=("matrix", _mixed_keys, "figures", *_ARCH, _if_images(otherwise=("seed",)))),
    Stage("report", "tables, figures and the HTML report", "reporting.report:report",
          inputs={"metrics": Artifact(_every(seeded("metrics/{arch}/{variant}.json"), _ALL_VARIANTS), "every seed's variants' metrics", many=True),
                  "samples": Artifact(_every(seeded("samples/{arch}/{variant}.png"), _ALL_VARIANTS, every_seed=False),
                                      "every variant's samples (the first seed's)", many=True),
                  "fig1": Artifact("reports/fig1_quantile_sweep.png", "Figure 1"),
                  "sensitivity": Artifact("reports/fig_sensitivity.png", "the layer-sensitivity figure (its table beside it)"),
                  "figures": Artifact(lambda cfg, w=None: [f"reports/fig_samples_{a}.png" for a in cfg["matrix"]["archs"]], "the sample figures", many=True),
                  "exports": Artifact(_every(seeded("metrics/{arch}/{variant}.export.json"), lambda cfg: [v.name for v in exported_variants(cfg)],
                                             every_seed=False), "the export summaries (rule export; the first seed's)", many=True, optional=True),
                  "floors": Artifact(_every(seeded("metrics/{arch}/noise_floor.json"), lambda cfg: [""]),
                                     "each seed's and arch's noise floor (rule noise_floor)", many=True)},
          outputs={"results": Artifact("reports/results.csv", "one row per variant and seed", report={"caption": "captions/results.rst", "category": "Tables"}),
                   "seeds": Artifact("reports/seeds.csv", "per variant: mean FID and qFID over seeds, the spread across seeds beside the bootstrap spread",
                                     report={"caption": "captions/seeds.rst", "category": "Tables"}),
                   "table4": Artifact("reports/table4.md", "Table 4 layout", report={"caption": "captions/table4.rst", "category": "Tables"}),
                   "table3": Artifact("reports/table3.md", "Table 3 layout", report={"caption": "captions/table3.rst", "category": "Tables"}),
                   "paper": Artifact("reports/paper_comparison.md", "the paper's numbers beside ours",
                                     report={"caption": "captions/paper_comparison.rst", "category": "Tables"}),
                   "export": Artifact("reports/export.md", "integer exports", report={"caption": "captions/export.rst", "category": "Tables"}),
                   "timing": Artifact("reports/timing.md", "where the time goes: per rule, jobs, wall/CPU seconds, peak memory, "
                                      "start-up share (the jobs' benchmark files and logs)"),
                   "fig_bits": Artifact("reports/fig_bits.png", "qFID against weight and activation width per arch",
                                        report={"caption": "captions/fig_bits.rst", "category": "Figures"}),
                   "front": Artifact("reports/front.csv", "size against qFID per variant, the Pareto-optimal ones marked"),
                   "fig_front": Artifact("reports/fig_front.png", "the size-quality front per arch",
                                         report={"caption": "captions/fig_front.rst", "category": "Figures"}),
                   "html": Artifact("reports/index.html", "the results page"),
                   "summary": Artifact("reports/summary.json", "every variant's FID and qFID by arch: DVC's one metrics file")},
          params=("profile", "matrix", _mixed_keys, "eval.bootstrap", "eval.n_samples"), threads=False),
    # commands without a rule
    Stage("validate", "validate the params and print the experiment matrix", "workflow.cli:validate", rule=False, threads=False),
    Stage("track", "log the jobs' pending MLflow records (Snakemake does it when a run ends, the report stage too)",
          "workflow.tracking:flush_command", rule=False, threads=False),
    Stage("dvc_yaml", "regenerate dvc.yaml from the Snakemake DAG", "workflow.dvc_yaml:write_dvc_yaml",
          outputs={"out": Artifact("dvc.yaml", "the file to write")}, rule=False, threads=False),
]
STAGES: Dict[str, Stage] = {s.name: s for s in _STAGES if s.rule}
COMMANDS: Dict[str, Stage] = {s.command: s for s in _STAGES}


def stage(rule: str) -> Stage:
    try:
        return STAGES[rule]
    except KeyError:
        raise KeyError(f"rule {rule!r} is not declared in workflow_src/workflow/stages.py (rules: {sorted(STAGES)})") from None


def param_keys(cfg: Mapping[str, Any], rule: str, wildcards: Mapping[str, str]) -> List[str]:
    """The params keys job ``rule`` with ``wildcards`` reads under ``cfg``.  Deciding them is no read
    of the params by the job (a job's record of its reads, :mod:`..config.trace`, leaves them out)."""
    st, cfg = stage(rule), plain(cfg)
    keys: List[str] = []
    for k in ([st.params] if callable(st.params) else st.params):
        keys += k(cfg, wildcards) if callable(k) else [k]
    if "seed" in st.wildcards:  # a replicate's job: its seed is its wildcard (the CLI's --seed), no params read
        keys = [k for k in keys if k != "seed"]
    return list(dict.fromkeys(k.format(**dict(wildcards)) for k in keys))


def lookup(cfg: Mapping[str, Any], key: str) -> Any:
    cur: Any = cfg
    for part in key.split("."):
        cur = cur[part]
    return cur


def param_values(cfg: Mapping[str, Any], rule: str, wildcards: Mapping[str, str]) -> Dict[str, Any]:
    """``{key: value}`` of what the job reads (Snakemake's ``params.section``, a rerun trigger; a job's
    MLflow params and resume fingerprint), taken unrecorded: the stage's own reads are what it computes with."""
    cfg = plain(cfg)
    return {k: lookup(cfg, k) for k in param_keys(cfg, rule, wildcards)}


def job_values(cfg: Mapping[str, Any], rule: str, wildcards: Mapping[str, str]) -> Dict[str, Any]:
    """What a running job of ``rule`` computes with, for its resume fingerprint and MLflow params:
    :func:`param_values` and, for a replicate's job, its ``seed`` (the CLI set it from --seed).  Not a
    rerun trigger: the seed is already in the job's paths."""
    values = param_values(cfg, rule, wildcards)
    if "seed" in stage(rule).wildcards:
        values["seed"] = plain(cfg)["seed"]
    return values


def resources_problems(cfg: Mapping[str, Any]) -> List[str]:
    """``resources.rules`` may name only rules (a check config validation cannot make: it sits below)."""
    return [f"key 'resources.rules.{rule}': no such rule (rules: {sorted(STAGES)})"
            for rule in sorted((cfg["resources"].get("rules") or {}).keys() - STAGES.keys())]


# ------------------------------------------------------------------------------ scheduling order
def _concrete(a: Artifact, cfg: Mapping[str, Any], samples: List[Dict[str, str]]) -> List[str]:
    """The paths an input can name under ``cfg``: a pattern as it is, a function called with each
    sample of wildcards (every arch with a variant of every method, its dataset and split).  A
    function that does not apply to a sample (KeyError: the published checkpoint of an arch that
    is trained) names nothing for it, as Snakemake never calls it for such a job.  A function whose
    wildcards argument has a default (``lambda cfg, w=None: ...``) does not read it: called once."""
    if not callable(a.path):
        return [a.path]
    import inspect

    params = list(inspect.signature(a.path).parameters.values())
    if len(params) > 1 and params[1].default is not inspect.Parameter.empty:
        samples = samples[:1]
    out: List[str] = []
    for w in samples:
        try:
            p = a.path(cfg, w)
        except KeyError:
            continue
        out += p if isinstance(p, list) else [p]
    return out


def rule_priorities(cfg: Mapping[str, Any]) -> Dict[str, int]:
    """Each rule's Snakemake ``priority``: its height in the rule graph, the longest chain of rules
    from it to a rule nothing reads (the report).  Snakemake's schedulers order ready jobs by
    priority and then by input size, never by what waits downstream: without this, a local run of
    the tiny profile started SAGAN's training 8.5 minutes in, behind a hundred short evaluation
    and export jobs, and ran its whole subtree on one core at the end.  Upstream first keeps the
    long chains going while the leaves (evaluations, exports) fill the cores.  Edges come from the
    declared artifacts: an input of one rule that matches an output pattern of another."""
    import re

    cfg = plain(cfg)
    samples: List[Dict[str, str]] = []
    one_per_method = list({v.method: v.name for v in variants(cfg)}.values())
    for arch in cfg["matrix"]["archs"]:
        dataset = cfg["archs"][arch]["dataset"]
        samples += [{"seed": str(first_seed(cfg)), "arch": arch, "variant": name, "dataset": dataset, "split": real_split(cfg, arch)}
                    for name in one_per_method]
    outputs = {}
    for name, st in STAGES.items():
        pats = []
        for a in st.outputs.values():
            parts = re.split(r"\{(\w+)\}", a.path)
            pats.append(re.compile("".join(re.escape(p) if i % 2 == 0 else "[^/]+" for i, p in enumerate(parts)) + ("(/.*)?" if a.directory else "")))
        outputs[name] = pats
    readers: Dict[str, set] = {name: set() for name in STAGES}  # rule -> the rules that read its outputs
    for name, st in STAGES.items():
        paths = {p for a in st.inputs.values() for p in _concrete(a, cfg, samples)}
        for producer, pats in outputs.items():
            if producer != name and any(pat.fullmatch(p) for p in paths for pat in pats):
                readers[producer].add(name)
    heights: Dict[str, int] = {}

    def height(rule: str, seen: Tuple[str, ...] = ()) -> int:
        if rule in seen:
            raise ValueError(f"the declared stages form a cycle: {' -> '.join(seen + (rule,))}")
        if rule not in heights:
            heights[rule] = 1 + max((height(r, seen + (rule,)) for r in readers[rule]), default=-1)
        return heights[rule]

    for name in STAGES:
        height(name)
    return heights
