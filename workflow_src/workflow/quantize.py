"""Stages of rules/quantize.smk and rules/qat.smk: one quantized generator per (arch, variant).

The method comes from the registry; what it needs (the sweep's quantile pair, the distillation
set, the FP discriminator, the perceptual network) is given to it because its file declares so."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

from ..device import describe_runtime, resolve_device
from .. import registry, resume
from ..config import Variant
from ..files import write_json
from ..methods.perceptual import load_perceptual
from ..utils import torch_save
from . import tracking
from .stages import job_values
from .artifacts import arch_params, feature_space, load_distill, make_arch, pair_text, variant_tags
from .distill import ValidationQFID
from .training import load_discriminator, load_generator


def quantize(cfg: Dict[str, Any], *, arch: str, variant: str, fp: str, distill: str, model: str, info: str,
             quantiles: Optional[str] = None, perceptual: Optional[str] = None, losses: Optional[str] = None,
             features: Optional[str] = None, data: Optional[str] = None, sensitivity: Optional[str] = None) -> None:
    """Quantize one variant.  ``info`` (JSON next to the model) records calibration size, time and,
    for block reconstruction, each block's error before/after.  Methods that train (QAT) write
    their per-step losses to ``losses``; those that select on a validation qFID get its scorer
    (the feature network ``features``, the dataset ``data`` for image-to-image validation inputs)."""
    v = Variant.parse(variant)
    method = registry.method(v.method)
    needs = method.needs_for(cfg, arch)
    acfg = arch_params(cfg, arch, quantiles, v) if "quantiles" in needs else cfg["archs"][arch]
    device = resolve_device(cfg)
    g = load_generator(cfg, arch, fp, device)
    distill_set = load_distill(distill, arch)
    ckpt = Path(str(model) + ".ckpt.pt")
    extra: Dict[str, Any] = {}
    if "distill" in needs:
        extra["distill"] = distill_set
    if "discriminator" in needs:
        extra["discriminator"] = load_discriminator(cfg, arch, fp, device)
    if "perceptual" in needs:
        if not perceptual:
            raise ValueError(f"{v.method} needs --perceptual (the perceptual network, perceptual.kind)")
        extra["perceptual"] = load_perceptual(cfg["perceptual"]["kind"], perceptual, device,
                                              refuse_at_chance=cfg["perceptual"].get("tinyvgg", {}).get("refuse_at_chance", True))
    if "validation" in needs:
        if not features or not data:
            raise ValueError(f"{v.method} selects on a validation qFID: pass --features (the FID feature network) and --data")
        extra["validation"] = ValidationQFID(cfg, arch, g, data, feature_space(cfg, features, device))
    if "sensitivity" in needs:
        if not sensitivity:
            raise ValueError(f"{v.method} allocates widths from the layer sensitivity: pass --sensitivity (sensitivity/<arch>.csv)")
        extra["sensitivity"] = sensitivity
    if method.trains:
        if not losses:
            raise ValueError(f"{v.method} writes per-step losses: pass --losses")
        extra["losses_out"] = Path(losses)
    run_method = method.implementation()
    job_params = job_values(cfg, method.rule, {"arch": arch, "variant": v.name})
    # the run holds every hyperparameter the job reads (brecq.*, qat.*, the quantile pair, ...), as its params
    with tracking.run("quantize", cfg, variant_tags(arch, v), job_params) as run:
        t0 = time.time()
        qmodel, spec, record = run_method(g, distill_set["inputs"], v, acfg, cfg, arch=make_arch(cfg, arch), ckpt=ckpt, tracker=run, extras=distill_set["extras"],
                                            job_params=job_params, **extra)
        record["seconds"] = time.time() - t0
        if "quantiles" in needs:  # the pair the method started from, and where it came from (results.csv)
            record.update(quantiles=pair_text(acfg["quantiles"]), quantiles_from=acfg["quantiles_from"])
        record["environment"] = describe_runtime(device)  # where and how it computed (issue 15)
        torch_save({"arch": arch, "variant": v.name, "spec": spec.to_dict(), "state_dict": qmodel.state_dict(), "info": record}, model)
        write_json(info, {"arch": arch, "variant": v.name, **record})
        # mixed precision's per-layer widths are in the info file (an artifact): too long for a param at paper size
        run.log_params({**{k: x for k, x in spec.to_dict().items() if k != "w_layers"}, "environment": record["environment"]})
        run.log_metrics({k: x for k, x in record.items() if isinstance(x, (int, float)) and not isinstance(x, bool)})
        if losses:
            run.log_artifact(losses)
        for rec in record.get("recon", []):
            run.log_metrics({"block_mse_before": rec["mse_before"], "block_mse_after": rec["mse_after"]}, step=rec["block"])
        run.log_artifact(info)
    resume.finish(ckpt, resume.log_beside(ckpt))
