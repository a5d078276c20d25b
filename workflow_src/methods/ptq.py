"""Vanilla post-training quantization (paper section 3.5 and 4.1).

``ptq-minmax``: quantization ranges matched to the minimum and maximum of the full-precision values
(the naive baseline).  ``ptq-quantile``: ranges matched to quantiles (``archs.<arch>.quantiles``),
tracked by a moving average (``calibration.momentum``) over calibration images fed one by one.
Both calibrate on the first ``calibration.images`` inputs of the distillation set, each sample with
its own extra inputs (StyleGAN's noise, the same the FP outputs were made with).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Dict, Iterable

import torch
from torch import nn

from ..config import Variant
from ..quant import QuantSpec, calibrate, quantize_model


def spec_for(variant: Variant, observer: str, arch_cfg: Dict[str, Any], cfg: Dict[str, Any]) -> QuantSpec:
    """The variant's QuantSpec; only the quantile observer reads ``arch_cfg["quantiles"]``
    (already resolved if it was ``sweep``) and its moving average's ``calibration.momentum``."""
    pairs = {}
    if observer == "quantile":
        q = arch_cfg["quantiles"]
        pairs = {"w_quantiles": (q["weight"]["upper"], q["weight"]["lower"]),
                 "a_quantiles": (q["activation"]["upper"], q["activation"]["lower"]),
                 "momentum": cfg["calibration"]["momentum"]}
    return QuantSpec(
        w_bits=variant.w_bits, a_bits=variant.a_bits, per_channel=variant.per_channel,
        w_observer=observer, a_observer=observer, **pairs,
    )


def sample_batches(arch, model: nn.Module, inputs: torch.Tensor, batch_size: int, extras: Dict[str, Any] | None) -> Iterable[torch.Tensor]:
    """``inputs`` (a prefix of the distillation set's) in batches for ``model``, each batch with
    its samples' slice of the distillation set's ``extras`` (``GANArch.batches``); without an arch
    (``arch=None``), plain batches, which only archs without extras may use."""
    if arch is None:
        if extras:
            raise ValueError(f"per-sample extras {sorted(extras)} need the arch (arch=...) to be fed")
        return inputs.split(batch_size)
    return arch.batches(model, inputs, batch_size, extras)


def sample_feed(arch, model: nn.Module, extras: Dict[str, Any] | None) -> Callable[[Any], ContextManager]:
    """``feed(index)``: a context in which ``model`` uses the extras of distillation samples
    ``index`` (a slice or an index tensor), for steps on random minibatches (BRECQ, QAT)."""
    if arch is None:
        if extras:
            raise ValueError(f"per-sample extras {sorted(extras)} need the arch (arch=...) to be fed")
        return lambda index: contextlib.nullcontext()
    return lambda index: arch.use_extras(model, extras, index)


def _ptq(observer: str):
    def run(generator: nn.Module, calib_inputs: torch.Tensor, variant: Variant, arch_cfg: Dict[str, Any], cfg: Dict[str, Any],
            arch=None, extras: Dict[str, Any] | None = None, **_):
        spec = spec_for(variant, observer, arch_cfg, cfg)
        qmodel = quantize_model(generator, spec)
        n = cfg["calibration"]["images"]
        inputs = calib_inputs[:n]
        bs = cfg["distill"]["batch_size"]
        seen = calibrate(qmodel, sample_batches(arch, qmodel, inputs, bs, extras), total=(len(inputs) + bs - 1) // bs)
        return qmodel, spec, {"calibration_images": seen}

    run.__name__ = f"ptq_{observer}"
    return run


ptq_minmax = _ptq("minmax")
ptq_quantile = _ptq("quantile")


# What these methods are (workflow_src/registry.py reads these literals without importing this file).
METHODS = [
    {"name": "ptq-minmax", "kind": "ptq", "title": "vanilla PTQ (min-max)", "run": "ptq_minmax", "reads": ["distill.batch_size"]},
    {"name": "ptq-quantile", "kind": "ptq", "title": "vanilla PTQ (quantile)", "run": "ptq_quantile", "needs": ["quantiles"], "reads": ["distill.batch_size"],
     "sweep": True},
]
