"""Uniform fake quantization, paper eq. (1) and (2), on PyTorch's fused kernels.

Weights: symmetric, signed, ``t_min = -2^(n-1)``, ``t_max = 2^(n-1) - 1``, zero point 0, one step
size per tensor or per output channel.  Activations: asymmetric (affine), unsigned
``[0, 2^n - 1]``, one step size and integer zero point per tensor, fixed after calibration (static).

Step sizes follow the conventions of PyTorch's observers (``torch.ao.quantization``), so a range
``[lo, hi]`` gives exactly the ``scale``/``zero_point`` that PyTorch itself would deploy: the range
is widened to contain 0 (so that zero padding is exact), symmetric ranges use
``max(|lo|, |hi|) / ((t_max - t_min) / 2)``, affine ranges ``(hi - lo) / (t_max - t_min)`` with
``z = t_min - round(lo / scale)``, and a zero-width range falls back to ``scale = eps``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .observers import Observer

EPS = torch.finfo(torch.float32).eps


def qrange(bits: int, signed: bool) -> Tuple[int, int]:
    """Integer grid ``(t_min, t_max)`` for ``bits``-bit signed or unsigned integers."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits = {bits}: supported range is 2..16")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def qparams(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, symmetric: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Step size (float32) and integer zero point (int32) for the range ``[lo, hi]``."""
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = torch.clamp(amax / ((qmax - qmin) / 2), min=EPS)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / float(qmax - qmin), min=EPS)
        zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: Optional[int]) -> torch.Tensor:
    """``scale * (clamp(round(x / scale) + z, qmin, qmax) - z)``; straight-through gradient
    inside the range, zero outside (PyTorch's fused kernels)."""
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero_point.reshape(()), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, qmin, qmax)


def integers(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: Optional[int]) -> torch.Tensor:
    """The integers ``x_int`` of eq. (2) exactly as PyTorch's fused fake-quant kernels compute them
    (``fake_quantize_per_tensor_affine``/``_per_channel_affine``, CPU and CUDA):
    ``clamp(round(x * (1/s)) + z, qmin, qmax)`` with the reciprocal and the product in float32 and
    round half to even.  Dividing by ``s`` instead rounds some ties the other way: with the symmetric
    scale ``amax / 127.5`` every channel's extreme weight sits on the tie ``+-127.5``, and ``x / s``
    and ``x * (1/s)`` land on opposite sides of it in about one channel in ten.  Every exporter
    takes its integers from here (float32 tensor holding integers)."""
    x = x.detach().float()
    if axis is None:
        s, z = scale.detach().float().reshape(()), zero_point.detach().reshape(())
    else:
        shape = [1] * x.dim()
        shape[axis] = -1
        s, z = scale.detach().float().reshape(shape), zero_point.detach().reshape(shape)
    return torch.clamp(torch.round(x * torch.reciprocal(s)) + z.float(), qmin, qmax)


class FakeQuantizer(nn.Module):
    """A static quantizer: an observer collects a range during calibration, ``freeze`` turns the
    range into ``scale``/``zero_point``, and from then on ``forward`` fake-quantizes.

    Modes: ``observing`` (pass the input through unchanged and update the observer), ``tracking``
    (MA-QAT: update the observer with the input, re-derive ``scale``/``zero_point`` from its
    range, then quantize with them) and ``enabled`` (quantize; when False the quantizer is the
    identity, for ablations).  Gradients pass straight through inside the range in every mode."""

    def __init__(self, bits: int, symmetric: bool, observer: Observer, axis: Optional[int] = None):
        super().__init__()
        self.bits = int(bits)
        self.symmetric = bool(symmetric)
        self.axis = axis
        self.qmin, self.qmax = qrange(self.bits, signed=self.symmetric)
        self.observer = observer
        n = observer.channels or 1
        self.register_buffer("scale", torch.ones(n))
        self.register_buffer("zero_point", torch.zeros(n, dtype=torch.int32))
        self.register_buffer("calibrated", torch.tensor(False))
        self.observing = False
        self.tracking = False
        self.enabled = True
        self._ready = False  # host-side copy of `calibrated`: no device sync on the hot path

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False  # re-read `calibrated` once on the next forward

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "affine"
        gran = "tensor" if self.axis is None else f"channel(axis={self.axis})"
        return f"bits={self.bits}, {kind}, per-{gran}, observer={type(self.observer).__name__}"

    @torch.no_grad()
    def freeze(self) -> None:
        lo, hi = self.observer.range()
        scale, zp = qparams(lo, hi, self.qmin, self.qmax, self.symmetric)
        self.scale.copy_(scale.reshape(self.scale.shape))
        self.zero_point.copy_(zp.reshape(self.zero_point.shape))
        self.calibrated.fill_(True)
        self._ready = True
        self.observing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observer.update(x.detach())
            return x
        if not self.enabled:
            return x
        if self.tracking:
            self.observer.update(x.detach())
            self.freeze()
        if not self._ready:
            if not bool(self.calibrated):
                raise RuntimeError(f"{self.extra_repr()}: quantizer used before calibration (call freeze())")
            self._ready = True
        return fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax, self.axis)

    def integer(self, x: torch.Tensor) -> torch.Tensor:
        """The integer representation ``x_int`` of eq. (2), the integers :meth:`forward` uses (:func:`integers`)."""
        return integers(x, self.scale, self.zero_point, self.qmin, self.qmax, self.axis)
