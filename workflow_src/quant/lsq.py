"""Learned step size quantization: LSQ (Esser et al. 2019) and, for activations, LSQ+'s learnable
zero point (the paper's LSQ-QAT and STE-BRECQ, sections 3.5 and 3.6).

:class:`LSQQuantizer` is a drop-in replacement for a calibrated :class:`~.quantizer.FakeQuantizer`
(same call ``q(x)``, same ``bits``/``symmetric``/``axis``/``qmin``/``qmax``/``enabled``), whose step
size, and for activations zero point, are ``nn.Parameter``\\ s.  The forward pass is PyTorch's fused
``torch._fake_quantize_learnable_per_{tensor,channel}_affine``.

Conventions chosen here:

* gradient scale ``g = 1 / sqrt(N * qmax)`` (LSQ section 2.2, ``Q_P = qmax``), where ``N`` is the
  number of elements that share one step size in the tensor actually passed in: ``x.numel()`` for a
  per-tensor quantizer (for activations this includes the batch dimension, as
  ``torch.ao.quantization._LearnableFakeQuantize`` does), ``x.numel() / x.shape[axis]`` per channel;
* the step size is kept positive by a straight-through clamp inside ``forward``: the value used is
  ``max(scale, EPS)``, while the gradient reaches the raw parameter unchanged, so an optimiser step
  that overshoots below zero can be undone;
* the fused ops round a float zero point in the forward pass (``round``, then clamp to
  ``[qmin, qmax]``) and pass its gradient straight through; for weights the zero point is a constant
  zero tensor that never requires grad, so it stays exactly 0.

How the fused ops' gradients differ from textbook LSQ (see :func:`lsq_reference`)
---------------------------------------------------------------------------------
Write ``v = x / s + z`` (``z`` the rounded zero point) and ``q = clamp(round(v), qmin, qmax)``; the
forward value is ``s * (q - z)`` in both.  Both compute

    d/dx = 1 if inside else 0,   d/ds = g * (q - v) if inside else g * (q - z),
    d/dz = 0 if inside else -g * s,

but textbook LSQ (clip, then round: ``round(clip(v))``) decides *inside* on the unrounded ``v``
(``qmin <= v <= qmax``), whereas the fused kernels round first and test the integer code:
``qmin <= round(v) <= qmax`` (round half to even).  They agree exactly at ``v = qmin`` and
``v = qmax`` and everywhere else, except in the half step just outside the grid,
``qmin - 1/2 <= v < qmin`` and ``qmax < v < qmax + 1/2`` (``qmin`` is even and ``qmax`` odd for
every grid of :func:`~.quantizer.qrange`, so the tie ``qmin - 1/2`` rounds into the grid and
``qmax + 1/2`` out of it).  In that band the fused op treats the clipped element as merely rounded:
it passes ``d/dx = 1`` (textbook: 0), gives ``d/ds = g * (qmax - v)`` in ``(-g/2, 0)`` at the top and
``g * (qmin - v)`` in ``(0, g/2]`` at the bottom (textbook: ``g * (qmax - z)`` and ``g * (qmin - z)``,
a large push of the range outwards, e.g. ``127 g`` and ``-128 g`` for 8-bit weights), and
``d/dz = 0`` (textbook: ``-g * s``).  A second, smaller quirk: for a non-integer zero point the
*per-tensor* backward rounds it half up (``int(z + 0.5)``) while its forward rounds half to even, so
at ``z = k + 1/2`` with ``k`` even the scale gradient of clipped elements uses ``z + 1/2`` where the
forward used ``z - 1/2``; the per-channel op rounds consistently.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .observers import MinMaxObserver
from .quantizer import EPS, FakeQuantizer, qrange


def _per_channel_view(t: torch.Tensor, x: torch.Tensor, axis: Optional[int]) -> torch.Tensor:
    """``t`` (shape [C] or [1]) broadcastable against ``x`` along ``axis``."""
    if axis is None:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def grad_factor(x: torch.Tensor, qmax: int, axis: Optional[int]) -> float:
    """LSQ's gradient scale ``1 / sqrt(N * qmax)``, ``N`` the elements per step size in ``x``."""
    n = x.numel() if axis is None else x.numel() // x.shape[axis]
    return 1.0 / math.sqrt(max(n, 1) * qmax)


class _LSQReference(torch.autograd.Function):
    """Textbook LSQ/LSQ+ with its gradients written out (Esser et al. 2019, eq. 1-3)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, g, axis):
        s = _per_channel_view(scale, x, axis)
        z = _per_channel_view(torch.clamp(torch.round(zero_point), qmin, qmax), x, axis)
        v = x / s + z
        inside = (v >= qmin) & (v <= qmax)  # decided before rounding: clip, then round
        q = torch.round(torch.clamp(v, qmin, qmax))
        ctx.save_for_backward(v, q, inside, s, z)
        ctx.g, ctx.axis, ctx.shapes = g, axis, (scale.shape, zero_point.shape)
        return s * (q - z)

    @staticmethod
    def backward(ctx, dy):
        v, q, inside, s, z = ctx.saved_tensors
        g, axis = ctx.g, ctx.axis
        dims = [d for d in range(dy.dim()) if d != axis] if axis is not None else list(range(dy.dim()))
        dx = dy * inside
        ds = (dy * torch.where(inside, q - v, q - z) * g).sum(dim=dims)
        dz = (dy * torch.where(inside, torch.zeros_like(v), -s.expand_as(v)) * g).sum(dim=dims)
        return dx, ds.reshape(ctx.shapes[0]), dz.reshape(ctx.shapes[1]), None, None, None, None


def lsq_reference(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                  grad_factor: float, axis: Optional[int] = None) -> torch.Tensor:
    """Pure-PyTorch textbook LSQ, argument for argument like the fused ops (plus ``axis`` for
    per-channel ``scale``/``zero_point`` of shape [C]).  Forward ``s * (round(clip(x / s + z)) - z)``
    with the zero point rounded and clamped as the fused ops do; backward: round is straight-through,
    the clip passes the gradient for ``qmin <= x / s + z <= qmax``; scale and zero-point gradients
    are multiplied by ``grad_factor``.  See the module docstring for where it differs from the fused op."""
    return _LSQReference.apply(x, scale, zero_point, qmin, qmax, grad_factor, axis)


class LSQQuantizer(nn.Module):
    """Fake quantizer with a learned step size (and for activations a learned zero point)."""

    def __init__(self, bits: int, symmetric: bool, scale: torch.Tensor, zero_point: Optional[torch.Tensor] = None,
                 axis: Optional[int] = None, learn_zero_point: Optional[bool] = None):
        super().__init__()
        self.bits, self.symmetric, self.axis = int(bits), bool(symmetric), axis
        self.qmin, self.qmax = qrange(self.bits, signed=self.symmetric)
        self.learn_zero_point = (not self.symmetric) if learn_zero_point is None else bool(learn_zero_point)
        if self.symmetric and self.learn_zero_point:
            raise ValueError("symmetric (weight) quantizers keep their zero point at 0; it cannot be learned")
        self.scale = nn.Parameter(scale.detach().float().clone())
        zp = torch.zeros_like(self.scale) if zero_point is None or self.symmetric else zero_point.detach().float().clone()
        if zp.shape != self.scale.shape:
            raise ValueError(f"zero point shape {tuple(zp.shape)} != scale shape {tuple(self.scale.shape)}")
        if self.learn_zero_point:
            self.zero_point = nn.Parameter(zp)
        else:
            self.register_buffer("zero_point", zp)
        self.observing = False
        self.enabled = True

    @classmethod
    def from_static(cls, fq: FakeQuantizer, learn_zero_point: Optional[bool] = None) -> "LSQQuantizer":
        """Initialise from a calibrated static quantizer (same grid, step size and zero point)."""
        if not bool(fq.calibrated):
            raise ValueError("LSQQuantizer.from_static needs a calibrated FakeQuantizer (call freeze() first)")
        q = cls(fq.bits, fq.symmetric, fq.scale, fq.zero_point, fq.axis, learn_zero_point)
        q.enabled = fq.enabled
        return q.to(fq.scale.device)

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else ("affine, learned zero point" if self.learn_zero_point else "affine")
        gran = "tensor" if self.axis is None else f"channel(axis={self.axis})"
        return f"bits={self.bits}, {kind}, per-{gran}"

    def step_size(self) -> torch.Tensor:
        """``max(scale, EPS)`` in value, identity in gradient."""
        return self.scale + (torch.clamp(self.scale, min=EPS) - self.scale).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            raise RuntimeError("LSQQuantizer has no observer: calibrate the FakeQuantizer, then use from_static")
        if not self.enabled:
            return x
        g = grad_factor(x, self.qmax, self.axis)
        if self.axis is None:
            return torch._fake_quantize_learnable_per_tensor_affine(x, self.step_size(), self.zero_point, self.qmin, self.qmax, g)
        return torch._fake_quantize_learnable_per_channel_affine(x, self.step_size(), self.zero_point, self.axis, self.qmin, self.qmax, g)

    @torch.no_grad()
    def to_static(self) -> FakeQuantizer:
        """A calibrated :class:`FakeQuantizer` with the learned step size and the zero point rounded
        and clamped to the grid: the same forward output as this quantizer."""
        n = self.scale.numel()
        obs = MinMaxObserver(channels=n if self.axis is not None else None, axis=self.axis or 0,
                             per_sample=self.axis is None and not self.symmetric)
        fq = FakeQuantizer(self.bits, self.symmetric, obs, self.axis).to(self.scale.device)
        fq.scale.copy_(torch.clamp(self.scale, min=EPS))
        fq.zero_point.copy_(torch.clamp(torch.round(self.zero_point), self.qmin, self.qmax).to(torch.int32))
        fq.calibrated.fill_(True)
        fq.enabled = self.enabled
        return fq


__all__ = ["LSQQuantizer", "grad_factor", "lsq_reference"]
