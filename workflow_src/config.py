"""Loading, merging and validating the params, and expanding the experiment matrix.

``params.yaml`` is the single source of truth.  Other files (``configs/paper.yaml``) are merged over
it key by key, exactly like Snakemake's ``--configfile``.  Every config is checked against one JSON
schema (``schema/params.schema.yaml``) plus the semantic rules a schema cannot state; every error
names the offending key and value.  The experiment matrix (which variants exist) is computed here
and nowhere else: the Snakefile, the CLI and the report all call :func:`variants`.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List

import yaml

SCHEMA_PATH = Path(__file__).parent / "schema" / "params.schema.yaml"


class ConfigError(ValueError):
    """A params file is invalid; the message names the key and the value."""


def deep_merge(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    """Recursive dict update (lists and scalars in ``override`` replace those in ``base``)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path) -> Dict[str, Any]:
    path = Path(path)
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def load(paths: Iterable[str | Path]) -> Dict[str, Any]:
    """Merge the given YAML files in order and validate the result."""
    cfg: Dict[str, Any] = {}
    for p in paths:
        cfg = deep_merge(cfg, load_yaml(p))
    validate(cfg)
    return cfg


def _schema() -> Dict[str, Any]:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def _key(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate(cfg: Dict[str, Any]) -> None:
    """Raise :class:`ConfigError` listing every problem, each with its key and value."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    problems: List[str] = []
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        while err.context:  # oneOf/anyOf: report the alternative that got furthest into the value
            err = max(err.context, key=lambda e: len(e.absolute_path))
        key = _key(err.absolute_path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            extra = [e for e in extra if not any(__import__("re").match(p, e) for p in err.schema.get("patternProperties", {}))]
            problems.append(f"unknown key(s) {', '.join(repr(e) for e in extra)} under {key!r}")
        elif err.validator == "required":
            problems.append(f"{key!r}: {err.message}")
        else:
            problems.append(f"key {key!r} = {json.dumps(err.instance, default=str)}: {err.message}")
    if not problems:
        problems = _semantic_problems(cfg)
    if problems:
        raise ConfigError("invalid params:\n  - " + "\n  - ".join(problems))


def _semantic_problems(cfg: Dict[str, Any]) -> List[str]:
    problems: List[str] = []
    for arch in cfg["matrix"]["archs"]:
        if arch not in cfg["archs"]:
            problems.append(f"key 'matrix.archs' names {arch!r} but 'archs.{arch}' is not configured")
    for arch, acfg in cfg["archs"].items():
        ds = acfg["dataset"]
        if ds not in cfg["datasets"]:
            problems.append(f"key 'archs.{arch}.dataset' = {ds!r}: no such entry under 'datasets' (known: {sorted(cfg['datasets'])})")
        for which, pair in (acfg["quantiles"].items() if isinstance(acfg["quantiles"], dict) else ()):
            if pair["lower"] >= pair["upper"]:
                problems.append(
                    f"key 'archs.{arch}.quantiles.{which}': lower = {pair['lower']} must be < upper = {pair['upper']}"
                )
        res = acfg["resolution"]
        if res & (res - 1):
            problems.append(f"key 'archs.{arch}.resolution' = {res}: must be a power of two")
        ch = acfg["model"].get("channels")
        top = {"stylegan": res, "sagan": res // 2}.get(arch)  # sagan's last layer makes the full-resolution RGB image
        if top and ch is not None and len(ch) != top.bit_length() - 2:
            problems.append(
                f"key 'archs.{arch}.model.channels' has {len(ch)} entries; resolution {res} needs {top.bit_length() - 2} (one per level 4..{top})"
            )
    problems += _checkpoint_problems(cfg)
    for which in ("activation", "weight"):
        for i, (upper, lower) in enumerate(cfg["sweep"][which]):
            if lower >= upper:
                problems.append(f"key 'sweep.{which}.{i}' = [{upper}, {lower}]: lower must be < upper")
    brecq_methods = [m for m in cfg["matrix"]["methods"] if m.endswith("-brecq")]
    if brecq_methods:
        need = ["calib_images", "batch_size", "lr_weights", "lr_qparams"] + (["ar_steps"] if "ar-brecq" in brecq_methods else []) + (["ste_steps"] if "ste-brecq" in brecq_methods else [])
        missing = [k for k in need if k not in cfg.get("brecq", {})]
        if missing:
            problems.append(f"key 'matrix.methods' lists {brecq_methods} but 'brecq' lacks {missing}")
        elif cfg["brecq"]["calib_images"] > cfg["distill"]["size"]:
            problems.append(f"key 'brecq.calib_images' = {cfg['brecq']['calib_images']} exceeds 'distill.size' = {cfg['distill']['size']}")
    problems += _qat_problems(cfg)
    from .dag import STAGES

    for rule in sorted((cfg["resources"].get("rules") or {}).keys() - STAGES.keys()):
        problems.append(f"key 'resources.rules.{rule}': no such rule (rules: {sorted(STAGES)})")
    if cfg["eval"]["n_samples"] < cfg["eval"]["grid"]:
        problems.append(f"key 'eval.grid' = {cfg['eval']['grid']} exceeds 'eval.n_samples' = {cfg['eval']['n_samples']}")
    ex = cfg["export"]
    if ex["check_samples"] < max(ex["batch_sizes"]) or ex["check_samples"] > cfg["eval"]["n_samples"]:
        problems.append(f"key 'export.check_samples' = {ex['check_samples']}: must lie between the largest 'export.batch_sizes' "
                        f"({max(ex['batch_sizes'])}) and 'eval.n_samples' ({cfg['eval']['n_samples']})")
    if cfg["calibration"]["images"] > cfg["distill"]["size"]:
        problems.append(
            f"key 'calibration.images' = {cfg['calibration']['images']} exceeds 'distill.size' = {cfg['distill']['size']} (calibration draws from the distillation set)"
        )
    return problems


# Each arch's model layouts, its default first (archs.<arch>.model.layout).
LAYOUTS = {"stylegan": ("default", "rosinality"), "sagan": ("heykeetae",), "cyclegan": ("default",)}


def _checkpoint_problems(cfg: Dict[str, Any]) -> List[str]:
    """Published checkpoints (``archs.<arch>.fp_checkpoint``) and the layouts they need."""
    from .models.importers import UNSUPPORTED

    problems: List[str] = []
    qat = [m for m in cfg["matrix"]["methods"] if m.endswith("-qat")]
    for arch, acfg in cfg["archs"].items():
        layout = acfg["model"].get("layout", LAYOUTS.get(arch, ("default",))[0])
        if layout not in LAYOUTS.get(arch, ("default",)):
            problems.append(f"key 'archs.{arch}.model.layout' = {layout!r}: {arch}'s layouts are {list(LAYOUTS.get(arch, ('default',)))}")
        ck = acfg.get("fp_checkpoint")
        if not ck:
            continue
        key = f"archs.{arch}.fp_checkpoint"
        if ck["format"] in UNSUPPORTED:
            problems.append(f"key '{key}.format' = {ck['format']!r}: cannot be imported. " + UNSUPPORTED[ck["format"]])
            continue
        if arch != "stylegan" or layout != "rosinality":
            problems.append(f"key '{key}.format' = {ck['format']!r} needs arch stylegan with 'archs.{arch}.model.layout: rosinality' "
                            f"(got arch {arch!r}, layout {layout!r})")
        if ck.get("discriminator") is None and qat and arch in cfg["matrix"]["archs"]:
            problems.append(f"key '{key}.discriminator' is null but 'matrix.methods' lists {qat}: QAT's adversarial loss starts "
                            "from the FP discriminator; import a checkpoint that holds one (rosinality's 'Model & Optimizer' "
                            "files: discriminator: discriminator) or drop the QAT methods")
    return problems


def imported_archs(cfg: Dict[str, Any]) -> List[str]:
    """Archs of the matrix whose FP networks come from a published checkpoint (rule import_fp)."""
    return [a for a in cfg["matrix"]["archs"] if cfg["archs"][a].get("fp_checkpoint")]


def _qat_problems(cfg: Dict[str, Any]) -> List[str]:
    problems: List[str] = []
    for arch in cfg["archs"]:
        q = deep_merge(cfg["qat"], cfg["archs"][arch].get("qat") or {})
        where = f"archs.{arch}.qat" if cfg["archs"][arch].get("qat") else "qat"
        if q.get("lsq_epochs", 0) > q["epochs"]:
            problems.append(f"key '{where}.lsq_epochs' = {q['lsq_epochs']} exceeds the epochs ({q['epochs']})")
        if q["batch_size"] > cfg["distill"]["size"]:
            problems.append(f"key '{where}.batch_size' = {q['batch_size']} exceeds 'distill.size' = {cfg['distill']['size']} (QAT trains on the distillation set)")
    from .metrics.perceptual import VGG16_CFG, layer_names

    p = cfg["perceptual"]
    if p["kind"] == "tinyvgg" and "layers" not in p.get("tinyvgg", {}):
        problems.append("'perceptual.tinyvgg' lacks 'layers' (perceptual.kind is 'tinyvgg')")
        return problems
    names = layer_names(VGG16_CFG if p["kind"] == "vgg16" else p["tinyvgg"]["layers"])
    for key, layer in [("content_layer", p["content_layer"])] + [(f"style_layers.{i}", l) for i, l in enumerate(p["style_layers"])]:
        if layer not in names:
            problems.append(f"key 'perceptual.{key}' = {layer!r}: the {p['kind']} network has {sorted(names)}")
    return problems


def rule_resources(cfg: Dict[str, Any], rule: str) -> Dict[str, int]:
    """What one job of ``rule`` asks a cluster for: ``cpus`` (the rule's threads), ``mem_mb`` and
    ``runtime`` (minutes); ``resources.default`` overridden key by key by ``resources.rules.<rule>``."""
    res = cfg["resources"]
    return {**res["default"], **(res.get("rules") or {}).get(rule, {})}


# ---------------------------------------------------------------- the experiment matrix
@dataclass(frozen=True)
class Variant:
    """One quantized configuration of one generator."""

    method: str
    per_channel: bool
    w_bits: int
    a_bits: int

    @property
    def granularity(self) -> str:
        return "channel" if self.per_channel else "tensor"

    @property
    def name(self) -> str:
        return f"{self.method}-{self.granularity}-w{self.w_bits}a{self.a_bits}"

    @classmethod
    def parse(cls, name: str) -> "Variant":
        """Inverse of :attr:`name`; raises ``ConfigError`` naming the bad value."""
        try:
            method, gran, bits = name.rsplit("-", 2)
            w, a = bits[1:].split("a")
            if gran not in ("channel", "tensor") or not bits.startswith("w"):
                raise ValueError
            return cls(method, gran == "channel", int(w), int(a))
        except ValueError:
            raise ConfigError(f"variant {name!r} is not of the form METHOD-(channel|tensor)-wWaA") from None


FP = "fp"


def variants(cfg: Dict[str, Any]) -> List[Variant]:
    m = cfg["matrix"]
    return [
        Variant(method, pc, w, a)
        for method in m["methods"]
        for pc in m["per_channel"]
        for w in m["w_bits"]
        for a in m["a_bits"]
    ]


def arch_dataset(cfg: Dict[str, Any], arch: str) -> Dict[str, Any]:
    return cfg["datasets"][cfg["archs"][arch]["dataset"]]


def dump_resolved(cfg: Dict[str, Any], path: str | Path) -> Path:
    """Write the merged ``cfg`` to ``path`` (atomically, and only if its content changed)."""
    from .utils import atomic_write_text

    path = Path(path)
    text = yaml.safe_dump(cfg, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)
    return path
