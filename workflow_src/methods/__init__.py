"""Quantization methods by name.  A method takes the FP generator, the calibration inputs of the
distillation set, the variant, the arch's params and the params (keywords: ``arch``, the GANArch
instance; ``ckpt``, a path for resumable progress; ``tracker``, the MLflow run; ``extras``, the
per-sample extra inputs of the distillation set, e.g. StyleGAN's noise, fed with each sample; QAT methods also
``distill``, the whole distillation set, ``discriminator``, the FP discriminator, ``perceptual``, the
perceptual network, and ``losses_out``, the per-step loss CSV), and returns ``(quantized model,
QuantSpec, info)``; ``info`` is written next to the model.

Only implemented methods are registered; the params schema's ``method_name`` enum lists exactly
these names (a test keeps them equal)."""
from __future__ import annotations

from typing import Callable, Dict

from .brecq import ar_brecq, ste_brecq
from .ptq import ptq_minmax, ptq_quantile
from .qat import lsq_qat, ma_qat

METHODS: Dict[str, Callable] = {
    "ptq-minmax": ptq_minmax,
    "ptq-quantile": ptq_quantile,
    "ar-brecq": ar_brecq,
    "ste-brecq": ste_brecq,
    "ma-qat": ma_qat,
    "lsq-qat": lsq_qat,
}

# Methods that train on the distillation set against the FP discriminator and a perceptual
# network (their own rule, `qat`, with a per-step loss log).
QAT_METHODS = ("ma-qat", "lsq-qat")


# The params keys each method reads (besides the arch's model): DVC and Snakemake rerun a quantize
# job exactly when one of these changes.
_COMMON = ["calibration.images", "distill.batch_size", "archs.{arch}.model", "archs.{arch}.resolution"]
METHOD_PARAMS: Dict[str, list] = {
    "ptq-minmax": _COMMON,
    "ptq-quantile": _COMMON + ["calibration.momentum", "archs.{arch}.quantiles"],
    "ar-brecq": _COMMON + ["seed", "calibration.momentum", "archs.{arch}.quantiles", "brecq"],
    "ste-brecq": _COMMON + ["seed", "calibration.momentum", "archs.{arch}.quantiles", "brecq"],
    "ma-qat": _COMMON + ["seed", "calibration.momentum", "archs.{arch}.quantiles", "qat", "archs.{arch}.qat", "perceptual"],
    "lsq-qat": _COMMON + ["seed", "calibration.momentum", "archs.{arch}.quantiles", "qat", "archs.{arch}.qat", "perceptual"],
}


def get_method(name: str) -> Callable:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"method {name!r} is not implemented; implemented methods: {sorted(METHODS)}") from None
