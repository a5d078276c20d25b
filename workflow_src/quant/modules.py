"""Quantized layers: what a float module becomes after :func:`~.transform.quantize_model`.

* :class:`QuantConv2d` / :class:`QuantLinear`: fake-quantize the activation entering the layer
  (static, affine) and the weight (symmetric, per channel or per tensor); the bias stays in high
  precision, as an int32 accumulator bias would in an integer kernel.
* :class:`QuantOp`: wraps an operation module of :mod:`.ops` and fake-quantizes each operand.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict, replace
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .observers import MinMaxObserver, Observer, QuantileObserver
from ..archs.ops import Cat, FloatOp
from .quantizer import FakeQuantizer


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a model: bit widths, weight granularity, observers and their quantiles."""

    w_bits: int = 8
    a_bits: int = 8
    per_channel: bool = True
    w_observer: str = "minmax"  # a kind of OBSERVERS: "minmax", "quantile", or one a method registered
    a_observer: str = "minmax"
    w_quantiles: Tuple[float, float] = (1.0, 0.0)  # (upper, lower)
    a_quantiles: Tuple[float, float] = (1.0, 0.0)
    momentum: float = 0.99
    # mixed precision: (layer, bits, upper, lower) per weight layer named as in ``named_modules()``
    # of the quantized model, overriding w_bits and w_quantiles there; other layers use w_bits
    w_layers: Tuple[Tuple[str, int, float, float], ...] = ()

    def for_layer(self, name: str) -> "QuantSpec":
        """The spec of weight layer ``name``: its own width and weight quantile pair under mixed precision."""
        for layer, bits, upper, lower in self.w_layers:
            if layer == name:
                return replace(self, w_bits=int(bits), w_quantiles=(float(upper), float(lower)), w_layers=())
        return self

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["w_quantiles"], d["a_quantiles"] = list(self.w_quantiles), list(self.a_quantiles)
        d["w_layers"] = [list(e) for e in self.w_layers]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "QuantSpec":
        d = dict(d)
        d["w_quantiles"], d["a_quantiles"] = tuple(d["w_quantiles"]), tuple(d["a_quantiles"])
        d["w_layers"] = tuple((str(n), int(b), float(u), float(lo)) for n, b, u, lo in d.get("w_layers", ()))
        return cls(**d)


# Observer kinds by the name a QuantSpec records: factory(quantiles, momentum, channels=, axis=, per_sample=).
# A method that brings its own observer registers it (register_observer) in its file, so a saved
# model names it and loads back with it.
ObserverFactory = Callable[..., Observer]
OBSERVERS: Dict[str, ObserverFactory] = {
    "minmax": lambda quantiles, momentum, **kw: MinMaxObserver(**kw),
    "quantile": lambda quantiles, momentum, **kw: QuantileObserver(upper=quantiles[0], lower=quantiles[1], momentum=momentum, **kw),
}


def register_observer(kind: str, factory: ObserverFactory) -> None:
    """Make ``kind`` usable as ``QuantSpec.w_observer``/``a_observer``."""
    if OBSERVERS.get(kind, factory) is not factory:
        raise ValueError(f"observer {kind!r} is already registered")
    OBSERVERS[kind] = factory


def _observer(kind: str, quantiles: Tuple[float, float], momentum: float, **kw) -> Observer:
    try:
        factory = OBSERVERS[kind]
    except KeyError:
        raise ValueError(f"observer {kind!r}: known observers are {sorted(OBSERVERS)}") from None
    return factory(quantiles, momentum, **kw)


def weight_quantizer(weight: torch.Tensor, spec: QuantSpec) -> FakeQuantizer:
    """A symmetric signed quantizer for ``weight`` (output channels on axis 0), calibrated at once,
    on the weight's device."""
    channels = weight.shape[0] if spec.per_channel else None
    obs = _observer(spec.w_observer, spec.w_quantiles, spec.momentum, channels=channels, axis=0)
    q = FakeQuantizer(spec.w_bits, symmetric=True, observer=obs, axis=0 if spec.per_channel else None).to(weight.device)
    obs.update(weight.detach())
    q.freeze()
    return q


def activation_quantizer(spec: QuantSpec, device: torch.device | None = None) -> FakeQuantizer:
    """An affine unsigned per-tensor quantizer on ``device``, to be calibrated on data."""
    obs = _observer(spec.a_observer, spec.a_quantiles, spec.momentum, per_sample=True)
    return FakeQuantizer(spec.a_bits, symmetric=False, observer=obs).to(device)


class QuantConv2d(nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, spec: QuantSpec) -> "QuantConv2d":
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
        ).to(conv.weight.device)  # built on the CPU: its (overwritten) init draws the same on every device
        q.load_state_dict(conv.state_dict())
        q.input_quant = activation_quantizer(spec, conv.weight.device)
        q.weight_quant = weight_quantizer(q.weight, spec)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quant(x), self.weight_quant(self.weight), self.bias)


class QuantLinear(nn.Linear):
    @classmethod
    def from_float(cls, lin: nn.Linear, spec: QuantSpec) -> "QuantLinear":
        q = cls(lin.in_features, lin.out_features, lin.bias is not None).to(lin.weight.device)
        q.load_state_dict(lin.state_dict())
        q.input_quant = activation_quantizer(spec, lin.weight.device)
        q.weight_quant = weight_quantizer(q.weight, spec)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), self.weight_quant(self.weight), self.bias)


class QuantOp(nn.Module):
    """An operation of :mod:`.ops` whose operands are fake-quantized."""

    def __init__(self, op: FloatOp, spec: QuantSpec, n_operands: Optional[int] = None, device: torch.device | None = None):
        super().__init__()
        self.op = op
        n = n_operands or getattr(op, "n_inputs", None) or 2
        self.operand_quant = nn.ModuleList(activation_quantizer(spec, device) for _ in range(n))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) != len(self.operand_quant):
            raise RuntimeError(f"{type(self.op).__name__} got {len(xs)} operands, quantizers for {len(self.operand_quant)}")
        return self.op.compute(*(q(x) for q, x in zip(self.operand_quant, xs)))


__all__ = ["QuantSpec", "QuantConv2d", "QuantLinear", "QuantOp", "Cat", "weight_quantizer", "activation_quantizer", "register_observer"]
