"""The semantic checks a JSON schema cannot state; each problem names the key and the value.

Method- and arch-specific checks come from the registry (each method file's ``requires`` and
``at_most``, each arch's ``per_level`` keys and checkpoint formats), so nothing here names a
method or an arch."""
from __future__ import annotations

import math
from typing import Any, Dict, List

from .. import registry
from .vgg import VGG16_CFG, layer_names


def problems(cfg: Dict[str, Any]) -> List[str]:
    """Every semantic problem of a schema-valid ``cfg``."""
    found: List[str] = []
    for check in (_finite, _archs, _exclude, _checkpoints, _sweep, _methods, _perceptual, _counts):
        found += check(cfg)
    return list(dict.fromkeys(found))


def _finite(cfg: Any, key: str = "") -> List[str]:
    """Every number is finite: a NaN passes every bound of a JSON schema (each comparison is false)."""
    if isinstance(cfg, dict):
        return [p for k, v in cfg.items() for p in _finite(v, f"{key}.{k}" if key else str(k))]
    if isinstance(cfg, list):
        return [p for i, v in enumerate(cfg) for p in _finite(v, f"{key}.{i}")]
    if isinstance(cfg, float) and not math.isfinite(cfg):
        return [f"key '{key}' = {cfg}: must be a finite number"]
    return []


def _quantile_pairs(cfg: Dict[str, Any]) -> List[str]:
    """Every quantile pair the params set: the archs' (archs.<arch>.quantiles), and the methods' own
    (a method section's ``quantiles``, top-level and per arch), lower below upper."""
    files = registry.method_files()
    places = [(f"{sec}.quantiles", (cfg.get(sec) or {}).get("quantiles")) for f in files for sec in f.sections]
    for arch, acfg in cfg["archs"].items():
        places.append((f"archs.{arch}.quantiles", acfg["quantiles"]))
        places += [(f"archs.{arch}.{sec}.quantiles", (acfg.get(sec) or {}).get("quantiles")) for f in files for sec in f.per_arch]
    return [f"key '{where}.{which}': lower = {pair['lower']} must be < upper = {pair['upper']}"
            for where, pairs in places for which, pair in (pairs.items() if isinstance(pairs, dict) else ())
            if pair["lower"] >= pair["upper"]]


def _archs(cfg: Dict[str, Any]) -> List[str]:
    found: List[str] = _quantile_pairs(cfg)
    for arch in cfg["matrix"]["archs"]:
        if arch not in cfg["archs"]:
            found.append(f"key 'matrix.archs' names {arch!r} but 'archs.{arch}' is not configured")
    for arch, acfg in cfg["archs"].items():
        ds = acfg["dataset"]
        if ds not in cfg["datasets"]:
            found.append(f"key 'archs.{arch}.dataset' = {ds!r}: no such entry under 'datasets' (known: {sorted(cfg['datasets'])})")
        res = acfg["resolution"]
        ds_res = (cfg["datasets"].get(ds) or {}).get("resolution")
        if ds_res is not None and ds_res != res:
            found.append(f"key 'archs.{arch}.resolution' = {res}: its dataset {ds!r} is prepared at 'datasets.{ds}.resolution' = "
                         f"{ds_res} (FID compares images of one size; set both alike)")
        if res & (res - 1):
            found.append(f"key 'archs.{arch}.resolution' = {res}: must be a power of two")
        top = res >> registry.arch(arch).levels_above  # the last level with a width of its own
        for key in registry.arch(arch).per_level:
            widths = acfg["model"].get(key)
            if widths is not None and len(widths) != top.bit_length() - 2:
                found.append(f"key 'archs.{arch}.model.{key}' has {len(widths)} entries; resolution {res} needs "
                             f"{top.bit_length() - 2} (one per level 4..{top})")
    return found


def _checkpoints(cfg: Dict[str, Any]) -> List[str]:
    """Published checkpoints (``archs.<arch>.fp_checkpoint``): the format must be one the arch
    imports into its configured layout, and methods that need the FP discriminator need one."""
    found: List[str] = []
    need_d = [m for m in cfg["matrix"]["methods"] if registry.method(m).may_need("discriminator")]
    for arch, acfg in cfg["archs"].items():
        ck = acfg.get("fp_checkpoint")
        if not ck:
            continue
        key, fmt = f"archs.{arch}.fp_checkpoint", ck["format"]
        if ck.get("url") and not ck.get("sha256"):
            found.append(f"key '{key}.url' is set but '{key}.sha256' is null: a downloaded checkpoint is checked against "
                         "its sha256 (set it, or download the file by hand to the path)")
        how = registry.arch(arch).checkpoint_formats[fmt]
        if "refused" in how:
            found.append(f"key '{key}.format' = {fmt!r}: cannot be imported. " + how["refused"])
            continue
        layout = acfg["model"].get("layout", "default")
        if layout != how["layout"]:
            found.append(f"key '{key}.format' = {fmt!r} needs arch {arch} with 'archs.{arch}.model.layout: {how['layout']}' "
                         f"(got arch {arch!r}, layout {layout!r})")
        if ck.get("discriminator") is None and need_d and arch in cfg["matrix"]["archs"]:
            found.append(f"key '{key}.discriminator' is null but 'matrix.methods' lists {need_d}, which start from the FP "
                         "discriminator; import a checkpoint that holds one (rosinality's 'Model & Optimizer' files: "
                         "discriminator: discriminator) or drop those methods")
    return found


def _exclude(cfg: Dict[str, Any]) -> List[str]:
    """An exclude entry that matches no variant of the cross product is a typo, not a no-op."""
    from .matrix import cross_product, excluded, included

    m = cfg["matrix"]
    full = cross_product(cfg)
    found = [f"key 'matrix.exclude.{i}' = {entry}: matches no variant of the matrix's methods, per_channel, w_bits and a_bits"
             for i, entry in enumerate(m.get("exclude") or []) if not any(excluded(v, entry) for v in full)]
    kept = [v for v in full if not any(excluded(v, e) for e in m.get("exclude") or [])]
    for i, (entry, adds) in enumerate(zip(m.get("include") or [], included(cfg))):
        if adds and not set(adds) - set(kept):  # an entry whose methods the matrix does not list adds nothing, by design
            found.append(f"key 'matrix.include.{i}' = {entry}: adds no variant the matrix does not already have")
    return found


def _sweep(cfg: Dict[str, Any]) -> List[str]:
    return [f"key 'sweep.{which}.{i}' = [{upper}, {lower}]: lower must be < upper"
            for which in ("activation", "weight") for i, (upper, lower) in enumerate(cfg["sweep"][which]) if lower >= upper]


def _methods(cfg: Dict[str, Any]) -> List[str]:
    """Each method file's own checks, for the files whose methods the matrix lists."""
    found: List[str] = []
    listed = cfg["matrix"]["methods"]
    for f in registry.method_files():
        used = [m for m in listed if m in f.methods]
        if not used:
            continue
        missing: Dict[str, List[str]] = {}
        for m in used:
            for key in f.requires + registry.method(m).requires:
                if registry.lookup(cfg, key) is None:
                    missing.setdefault(key, []).append(m)
        found += [f"key 'matrix.methods' lists {ms} but {key!r} is not set" for key, ms in missing.items()]
        for m in used:  # a mixed-precision method's budgets lie within its widths
            meth = registry.method(m)
            widths, budgets = registry.lookup(cfg, meth.widths), registry.lookup(cfg, meth.budgets)
            if meth.mixed and widths and budgets:
                found += [f"key '{meth.budgets}.{i}' = {b}: outside the widths of '{meth.widths}' ({min(widths)}..{max(widths)} bits per weight)"
                          for i, b in enumerate(budgets) if not min(widths) <= b <= max(widths)]
        for key, bound, why in f.at_most:
            section = key.split(".")[0]
            for arch in (cfg["archs"] if section in f.per_arch else [None]):
                value = registry.section_value(cfg, arch, key, f.per_arch) if arch else registry.lookup(cfg, key)
                limit = registry.section_value(cfg, arch, bound, f.per_arch) if arch else registry.lookup(cfg, bound)
                if value is None or limit is None or value <= limit:
                    continue
                overridden = arch and registry.lookup(cfg["archs"][arch], key) is not None
                where = f"archs.{arch}.{key}" if overridden else key
                found.append(f"key {where!r} = {value} exceeds {bound!r} = {limit}" + (f" ({why})" if why else ""))
    return found


def _perceptual(cfg: Dict[str, Any]) -> List[str]:
    p = cfg["perceptual"]
    if p["kind"] == "tinyvgg" and "layers" not in p.get("tinyvgg", {}):
        return ["'perceptual.tinyvgg' lacks 'layers' (perceptual.kind is 'tinyvgg')"]
    names = layer_names(VGG16_CFG if p["kind"] == "vgg16" else p["tinyvgg"]["layers"])
    return [f"key 'perceptual.{key}' = {layer!r}: the {p['kind']} network has {sorted(names)}"
            for key, layer in [("content_layer", p["content_layer"])] + [(f"style_layers.{i}", l) for i, l in enumerate(p["style_layers"])]
            if layer not in names]


def _counts(cfg: Dict[str, Any]) -> List[str]:
    found: List[str] = []
    if cfg["eval"]["n_samples"] < cfg["eval"]["grid"]:
        found.append(f"key 'eval.grid' = {cfg['eval']['grid']} exceeds 'eval.n_samples' = {cfg['eval']['n_samples']}")
    ex = cfg["export"]
    if ex["check_samples"] < max(ex["batch_sizes"]) or ex["check_samples"] > cfg["eval"]["n_samples"]:
        found.append(f"key 'export.check_samples' = {ex['check_samples']}: must lie between the largest 'export.batch_sizes' "
                     f"({max(ex['batch_sizes'])}) and 'eval.n_samples' ({cfg['eval']['n_samples']})")
    missing = [r for r in ex["deployable_runtimes"] if r not in ex["runtimes"]]
    if missing and "deployable" in ex["schemes"]:
        found.append(f"key 'export.deployable_runtimes' = {ex['deployable_runtimes']}: {missing} not in 'export.runtimes' = {ex['runtimes']} "
                     "(the FP32 files it is timed against are those runtimes')")
    if cfg["calibration"]["images"] > cfg["distill"]["size"]:
        found.append(f"key 'calibration.images' = {cfg['calibration']['images']} exceeds 'distill.size' = {cfg['distill']['size']} "
                     "(calibration draws from the distillation set)")
    for f in registry.method_files():  # a method's validation split: the last samples of the distillation set
        for arch in cfg["archs"]:
            for sec in f.sections:
                n_val = registry.section_value(cfg, arch, f"{sec}.validation", f.per_arch) or 0
                bs = registry.section_value(cfg, arch, f"{sec}.batch_size", f.per_arch) or 0
                on_loss = (registry.section_value(cfg, arch, f"{sec}.select_on", f.per_arch) or "loss") == "loss"
                if registry.section_value(cfg, arch, f"{sec}.select", f.per_arch) == "best" and on_loss and not n_val:
                    found.append(f"key 'archs.{arch}.{sec}.select' = 'best' on the validation loss needs a validation split "
                                 f"('{sec}.validation' > 0, or '{sec}.select_on' = 'qfid')")
                if n_val and n_val + max(cfg["calibration"]["images"], bs) > cfg["distill"]["size"]:
                    found.append(f"key '{sec}.validation' = {n_val} (arch {arch}): the held-out samples (the last ones of the distillation "
                                 f"set) must leave 'calibration.images' = {cfg['calibration']['images']} and a batch ({bs}) of the "
                                 f"'distill.size' = {cfg['distill']['size']} samples to calibration and training")
    return sorted(set(found), key=found.index)
