"""Adaptive rounding of weights (AdaRound, Nagel et al. 2020), as used by BRECQ and by the paper's
AR-BRECQ (section 3.5, appendix A: 20000 steps per block, the first 4000 without the regulariser).

A weight ``w`` with a fixed step size ``s`` (from a calibrated symmetric :class:`FakeQuantizer`) is
quantized as ``s * clamp(floor(w / s) + h(alpha), qmin, qmax)``, where ``h`` is the rectified
sigmoid and ``alpha`` is learned.  The regulariser ``sum(1 - |2 h - 1|^beta)``, with ``beta``
annealed from 20 to 2 by :class:`LinearTempDecay`, drives every ``h`` to 0 or 1 (round down or up).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .observers import MinMaxObserver
from .quantizer import FakeQuantizer, qrange

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(alpha: torch.Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> torch.Tensor:
    """``h(alpha) = clamp(sigmoid(alpha) * (zeta - gamma) + gamma, 0, 1)``."""
    return torch.clamp(torch.sigmoid(alpha) * (zeta - gamma) + gamma, 0.0, 1.0)


def rounding_regularizer(alpha: torch.Tensor, beta: float, zeta: float = ZETA, gamma: float = GAMMA) -> torch.Tensor:
    """``sum(1 - |2 h(alpha) - 1|^beta)``: 0 when every ``h`` is 0 or 1, one per element at ``h = 1/2``."""
    return (1.0 - (2.0 * rectified_sigmoid(alpha, zeta, gamma) - 1.0).abs().pow(beta)).sum()


class AdaRoundQuantizer(nn.Module):
    """Learned rounding of one frozen weight tensor, a drop-in for the layer's ``weight_quant``.

    The quantizer is built from the weight it rounds and keeps ``w_floor = floor(w / s)``, with
    ``w / s`` first clipped to ``[qmin, qmax]``: an element beyond the grid (with min-max ranges, a
    channel's positive extreme at ``qmax + 1/2``) then starts at ``h = 0`` on the grid's edge, where
    the regulariser can settle it, instead of at a tie ``h = 1/2`` whose gradient the clamp cuts.
    ``alpha`` starts where ``h(alpha)`` equals the fractional part, so the soft output starts at the
    clipped weight.  ``forward(w)`` only checks that ``w`` has that weight's shape and dtype and
    otherwise ignores it: AdaRound optimises the rounding of a fixed weight, not the weight.
    ``hard = False`` (soft, for optimisation) adds ``h(alpha)``; ``hard = True`` adds ``alpha >= 0`` (0 or 1)."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bits: int, axis: Optional[int] = None,
                 zeta: float = ZETA, gamma: float = GAMMA):
        super().__init__()
        self.bits, self.symmetric, self.axis = int(bits), True, axis
        self.qmin, self.qmax = qrange(self.bits, signed=True)
        self.zeta, self.gamma = float(zeta), float(gamma)
        w = weight.detach()
        self.register_buffer("scale", scale.detach().float().clone())
        ws = torch.clamp(w / self._s(w), self.qmin, self.qmax)
        self.register_buffer("w_floor", torch.floor(ws))
        frac = ws - self.w_floor  # in [0, 1): h(alpha) = frac reproduces w
        self.alpha = nn.Parameter(-torch.log((self.zeta - self.gamma) / (frac - self.gamma) - 1.0))
        self.hard = False
        self.observing = False
        self.enabled = True

    @classmethod
    def from_static(cls, fq: FakeQuantizer, weight: torch.Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> "AdaRoundQuantizer":
        """Step size and grid of a calibrated symmetric (weight) quantizer, rounding of ``weight``."""
        if not bool(fq.calibrated) or not fq.symmetric:
            raise ValueError("AdaRoundQuantizer.from_static needs a calibrated symmetric (weight) FakeQuantizer")
        q = cls(weight, fq.scale, fq.bits, fq.axis, zeta, gamma)
        q.enabled = fq.enabled
        return q

    def extra_repr(self) -> str:
        gran = "tensor" if self.axis is None else f"channel(axis={self.axis})"
        return f"bits={self.bits}, per-{gran}, hard={self.hard}"

    def _s(self, w: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return self.scale.reshape(())
        shape = [1] * w.dim()
        shape[self.axis] = -1
        return self.scale.reshape(shape)

    def h(self) -> torch.Tensor:
        return rectified_sigmoid(self.alpha, self.zeta, self.gamma)

    def regularizer(self, beta: float) -> torch.Tensor:
        return rounding_regularizer(self.alpha, beta, self.zeta, self.gamma)

    def _quantize(self, hard: bool) -> torch.Tensor:
        up = (self.alpha >= 0).to(self.w_floor.dtype) if hard else self.h()
        return self._s(self.w_floor) * torch.clamp(self.w_floor + up, self.qmin, self.qmax)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if w.shape != self.w_floor.shape or w.dtype != self.w_floor.dtype:
            raise ValueError(f"AdaRoundQuantizer was built for a {self.w_floor.dtype} weight of shape "
                             f"{tuple(self.w_floor.shape)}, got {w.dtype} {tuple(w.shape)}")
        if self.observing:
            raise RuntimeError("AdaRoundQuantizer has no observer: calibrate the FakeQuantizer, then use from_static")
        if not self.enabled:
            return w
        return self._quantize(self.hard)

    @torch.no_grad()
    def harden(self) -> torch.Tensor:
        """The hard-rounded fake-quantized weight ``s * k``, ``k`` an integer in ``[qmin, qmax]``."""
        return self._quantize(hard=True).detach().clone()

    @torch.no_grad()
    def to_static(self) -> Tuple[torch.Tensor, FakeQuantizer]:
        """The hardened weight and a calibrated static quantizer that leaves it unchanged."""
        n = self.scale.numel()
        obs = MinMaxObserver(channels=n if self.axis is not None else None, axis=self.axis or 0)
        fq = FakeQuantizer(self.bits, True, obs, self.axis).to(self.scale.device)
        fq.scale.copy_(self.scale)
        fq.zero_point.zero_()
        fq.calibrated.fill_(True)
        fq.enabled = self.enabled
        return self.harden(), fq


class LinearTempDecay:
    """BRECQ's annealed ``beta``: ``beta_start`` until the end of the warm-up, then linear down to
    ``beta_end`` at ``t_max``.  ``warmup`` is a fraction of ``t_max`` (float) or a step count (int);
    during the warm-up the regulariser is not applied (:meth:`active`)."""

    def __init__(self, t_max: int, warmup: float | int = 0.2, beta_start: float = 20.0, beta_end: float = 2.0):
        self.t_max = int(t_max)
        self.warmup_steps = int(round(warmup * t_max)) if isinstance(warmup, float) else int(warmup)
        if not 0 <= self.warmup_steps < self.t_max:
            raise ValueError(f"warm-up of {self.warmup_steps} steps must be shorter than t_max = {self.t_max}")
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)

    def active(self, t: int) -> bool:
        """Whether the rounding regulariser is applied at step ``t``."""
        return t >= self.warmup_steps

    def __call__(self, t: int) -> float:
        rel = min(max((t - self.warmup_steps) / (self.t_max - self.warmup_steps), 0.0), 1.0)
        return self.beta_start + (self.beta_end - self.beta_start) * rel


__all__ = ["AdaRoundQuantizer", "LinearTempDecay", "rectified_sigmoid", "rounding_regularizer"]
