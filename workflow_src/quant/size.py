"""How big a generator is: the bytes its weights take at their bit widths, and its average weight width.

``size_bytes`` counts what an integer deployment has to store, closed form from the model:

* each quantized weight (conv, linear) at its own width, packed: ``ceil(numel * bits / 8)`` bytes;
* each weight quantizer's step sizes as float32 (its zero points are 0 and not stored);
* each activation quantizer's step size (float32) and zero point (one byte);
* every other parameter and buffer (biases, normalisation affines, constant inputs, fixed noise, blur
  kernels) at its own element size.

A float model (no quantizers) is every parameter and buffer at its element size: the FP32 size.  The
width is nominal: a 6-bit weight counts 6 bits although ONNX, which has int4 and int8 tensors only,
stores it in a byte (the export's own file size is ``export`` 's ``size_bytes``).
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, Tuple

from torch import nn

from .modules import QuantConv2d, QuantLinear
from .lsq import LSQQuantizer
from .quantizer import FakeQuantizer


def weight_layers(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """``(name, layer)`` for every quantized conv and linear layer, in module order."""
    for name, m in model.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            yield name, m


def weight_bits(model: nn.Module) -> Dict[str, Tuple[int, int]]:
    """``{layer: (bits, weights)}`` for every quantized weight layer."""
    return {name: (int(m.weight_quant.bits), int(m.weight.numel())) for name, m in weight_layers(model)}


def avg_w_bits(model: nn.Module) -> float:
    """Bits per quantized weight, averaged over every weight of every quantized layer (32.0 for a
    float model)."""
    layers = weight_bits(model).values()
    n = sum(c for _, c in layers)
    return sum(b * c for b, c in layers) / n if n else 32.0


def size_bytes(model: nn.Module) -> int:
    """The bytes the model's weights take at their widths (module docstring)."""
    total, counted = 0, set()
    for _, m in weight_layers(model):
        q = m.weight_quant
        total += math.ceil(m.weight.numel() * q.bits / 8)
        counted.add(id(m.weight))
    for q in (m for m in model.modules() if isinstance(m, (FakeQuantizer, LSQQuantizer))):
        if q.symmetric:
            total += q.scale.numel() * 4
        else:
            total += q.scale.numel() * 4 + q.zero_point.numel()
        counted.update(id(t) for t in q.parameters())  # learnable step sizes are the scales counted above
        counted.update(id(t) for t in q.buffers())  # observers' state and flags are not deployed
    for t in (*model.parameters(), *model.buffers()):
        if id(t) not in counted:
            counted.add(id(t))
            total += t.numel() * t.element_size()
    return total
