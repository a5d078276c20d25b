"""The model transform: a float generator in, a fake-quantized generator out.

``quantize_model`` bakes reparametrised layers (:func:`workflow_src.archs.layers.bake`), then swaps
every ``nn.Conv2d``/``nn.Linear`` for its quantized version and every operation module of
:mod:`.ops` for a :class:`~.modules.QuantOp`.  Weight quantizers are calibrated immediately;
activation quantizers are calibrated by :func:`calibrate`.  One switch (:func:`set_quant`) turns
weight or activation quantization on and off for the whole model.
"""
from __future__ import annotations

import copy
from typing import Iterable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from ..archs.layers import bake
from ..device import module_device, to_device
from .modules import QuantConv2d, QuantLinear, QuantOp, QuantSpec
from ..archs.ops import FloatOp
from .quantizer import FakeQuantizer


def quantize_model(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """A quantized deep copy of ``model`` (the original is untouched), on ``model``'s device.  A
    layer named in ``spec.w_layers`` gets its own weight width and pair; naming no weight layer is an error."""
    qmodel = bake(copy.deepcopy(model))
    _swap(qmodel, spec, module_device(model))
    if spec.w_layers:
        layers = {n for n, m in qmodel.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}
        unknown = sorted({e[0] for e in spec.w_layers} - layers)
        if unknown:
            raise ValueError(f"QuantSpec.w_layers names {unknown[:5]}, which are not weight layers of the model (e.g. {sorted(layers)[:3]})")
    return qmodel.eval()


def _swap(module: nn.Module, spec: QuantSpec, device: torch.device, prefix: str = "") -> None:
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, (QuantConv2d, QuantLinear, QuantOp)):
            continue
        if isinstance(child, nn.ConvTranspose2d):
            raise TypeError(f"{name}: transposed convolutions are not supported; use Upsample + Conv2d")
        if isinstance(child, nn.Conv2d):
            setattr(module, name, QuantConv2d.from_float(child, spec.for_layer(path)))
        elif isinstance(child, nn.Linear):
            setattr(module, name, QuantLinear.from_float(child, spec.for_layer(path)))
        elif isinstance(child, FloatOp):
            setattr(module, name, QuantOp(child, spec, device=device))
        else:
            _swap(child, spec, device, f"{path}.")


def weight_quantizers(model: nn.Module) -> Iterator[FakeQuantizer]:
    for m in model.modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            yield m.weight_quant


def activation_quantizers(model: nn.Module) -> Iterator[FakeQuantizer]:
    for m in model.modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            yield m.input_quant
        elif isinstance(m, QuantOp):
            yield from m.operand_quant


def map_quantizers(model: nn.Module, fn) -> None:
    """Replace every quantizer ``q`` of ``model`` by ``fn(q, kind)`` (``kind``: "weight" or
    "activation"), in place; e.g. static -> learnable (LSQ) and back."""
    for m in model.modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            m.input_quant = fn(m.input_quant, "activation")
            m.weight_quant = fn(m.weight_quant, "weight")
        elif isinstance(m, QuantOp):
            m.operand_quant = nn.ModuleList(fn(q, "activation") for q in m.operand_quant)


def set_quant(model: nn.Module, weights: bool = True, activations: bool = True) -> None:
    for q in weight_quantizers(model):
        q.enabled = weights
    for q in activation_quantizers(model):
        q.enabled = activations


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], total: int | None = None) -> int:
    """Observe the activations of the float model (weights and activations unquantized) on the
    batches (moved to the model's device), then freeze every activation quantizer.  Returns the
    number of samples seen."""
    acts = list(activation_quantizers(model))
    weights = list(weight_quantizers(model))
    w_enabled = [q.enabled for q in weights]
    for q in acts:
        q.observing = True
    for q in weights:
        q.enabled = False
    seen = 0
    device = module_device(model)
    try:
        for batch in tqdm(batches, total=total, desc="calibrate", unit="batch", leave=False):
            model(to_device(batch, device))
            seen += batch.shape[0]
    finally:
        for q in acts:
            q.observing = False
        for q, on in zip(weights, w_enabled):
            q.enabled = on
    for q in acts:
        q.freeze()
    return seen
