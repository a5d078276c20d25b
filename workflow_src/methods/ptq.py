"""Vanilla post-training quantization (paper section 3.5 and 4.1).

``ptq-minmax``: quantization ranges matched to the minimum and maximum of the full-precision values
(the naive baseline).  ``ptq-quantile``: ranges matched to quantiles (``archs.<arch>.quantiles``),
tracked by a moving average (``calibration.momentum``) over calibration images fed one by one.
Both calibrate on the first ``calibration.images`` inputs of the distillation set.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from ..config import Variant
from ..quant import QuantSpec, calibrate, quantize_model


def spec_for(variant: Variant, observer: str, arch_cfg: Dict[str, Any], cfg: Dict[str, Any]) -> QuantSpec:
    """The variant's QuantSpec; only the quantile observer reads ``arch_cfg["quantiles"]``
    (already resolved if it was ``sweep``)."""
    pairs = {}
    if observer == "quantile":
        q = arch_cfg["quantiles"]
        pairs = {"w_quantiles": (q["weight"]["upper"], q["weight"]["lower"]),
                 "a_quantiles": (q["activation"]["upper"], q["activation"]["lower"])}
    return QuantSpec(
        w_bits=variant.w_bits, a_bits=variant.a_bits, per_channel=variant.per_channel,
        w_observer=observer, a_observer=observer, momentum=cfg["calibration"]["momentum"], **pairs,
    )


def _ptq(observer: str):
    def run(generator: nn.Module, calib_inputs: torch.Tensor, variant: Variant, arch_cfg: Dict[str, Any], cfg: Dict[str, Any], **_):
        spec = spec_for(variant, observer, arch_cfg, cfg)
        qmodel = quantize_model(generator, spec)
        n = cfg["calibration"]["images"]
        inputs = calib_inputs[:n]
        bs = cfg["distill"]["batch_size"]
        seen = calibrate(qmodel, inputs.split(bs), total=(len(inputs) + bs - 1) // bs)
        return qmodel, spec, {"calibration_images": seen}

    run.__name__ = f"ptq_{observer}"
    return run


ptq_minmax = _ptq("minmax")
ptq_quantile = _ptq("quantile")


# What these methods are (workflow_src/registry.py reads these literals without importing this file).
METHODS = [
    {"name": "ptq-minmax", "kind": "ptq", "title": "vanilla PTQ (min-max)", "run": "ptq_minmax"},
    {"name": "ptq-quantile", "kind": "ptq", "title": "vanilla PTQ (quantile)", "run": "ptq_quantile", "needs": ["quantiles"],
     "sweep": True},
]
