"""Range observers for calibration (paper sections 3.5 and 4.1).

* :class:`MinMaxObserver` -- the naive baseline: the running minimum and maximum of everything seen.
* :class:`QuantileObserver` -- the paper's vanilla PTQ: the lower/upper quantiles of each observed
  sample, tracked by an exponential moving average (momentum 0.99 in the paper, images fed one by
  one).  Feeding a batch is equivalent to feeding its samples one by one in order: the moving average
  is updated sample by sample.  For a weight tensor there is one "sample", the tensor itself.

Per-channel observers (``channels`` set) keep one range per slice along ``axis``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

# torch.quantile refuses inputs above 2**24 elements; beyond that use an exact order statistic.
_QUANTILE_LIMIT = 2**24


def rowwise_quantile(x2d: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile ``q`` of every row of a 2-D tensor (linear interpolation, as ``torch.quantile``).

    The paper's quantiles sit in the tails (0.999, 0.0001, ...): only the two order statistics
    around ``q (n - 1)`` are needed, and a partial sort of the short tail (``topk``) finds them
    about 10x faster than ``torch.quantile``'s full sort, which matters when MA-QAT tracks ranges at
    every training step.  Beyond 2**24 elements ``torch.quantile`` refuses; ``kthvalue`` is exact."""
    x2d = x2d.float()
    if q >= 1.0:
        return x2d.amax(dim=1)
    if q <= 0.0:
        return x2d.amin(dim=1)
    n = x2d.shape[1]
    pos = q * (n - 1)
    i, frac = int(pos), pos - int(pos)  # order statistics i and i + 1 (0-based), weight frac on the upper
    k_top, k_bot = n - i, min(i + 2, n)
    if min(k_top, k_bot) <= max(n // 8, 2):
        if k_top <= k_bot:  # descending: v[:, -1] is order statistic i, v[:, -2] statistic i + 1
            v = torch.topk(x2d, k_top, dim=1, largest=True, sorted=True).values
            lo, hi = v[:, -1], (v[:, -2] if k_top >= 2 else v[:, -1])
        else:  # ascending: v[:, i] is order statistic i
            v = torch.topk(x2d, k_bot, dim=1, largest=False, sorted=True).values
            lo, hi = v[:, i], v[:, min(i + 1, k_bot - 1)]
        return torch.lerp(lo, hi, frac)
    if x2d.numel() <= _QUANTILE_LIMIT:
        return torch.quantile(x2d, q, dim=1)
    lo = torch.kthvalue(x2d, i + 1, dim=1).values
    if frac == 0.0:
        return lo
    hi = torch.kthvalue(x2d, min(i + 2, n), dim=1).values
    return lo + frac * (hi - lo)


class Observer(nn.Module):
    def __init__(self, channels: Optional[int] = None, axis: int = 0, per_sample: bool = False):
        super().__init__()
        self.channels = channels
        self.axis = axis
        self.per_sample = per_sample
        n = channels or 1
        self.register_buffer("lo", torch.zeros(n))
        self.register_buffer("hi", torch.zeros(n))
        self.register_buffer("count", torch.tensor(0, dtype=torch.long))
        self._seen: Optional[int] = 0  # host-side copy of `count` (None: read it once): no device sync per update

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._seen = None

    def _count(self) -> int:
        """``count`` as a Python int, read from the buffer only after a state-dict load."""
        if self._seen is None:
            self._seen = int(self.count)
        return self._seen

    def _counted(self, n: int) -> None:
        self._seen = self._count() + n
        self.count += n

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as (samples, channels, values)."""
        if self.channels is None:
            rows = x.reshape(x.shape[0], 1, -1) if self.per_sample else x.reshape(1, 1, -1)
        else:
            xt = x.transpose(0, self.axis) if self.axis else x
            rows = xt.reshape(1, xt.shape[0], -1)
            if self.per_sample:
                raise ValueError("per-sample observation is only used for per-tensor activations")
        return rows

    def range(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._count() == 0:
            raise RuntimeError(f"{type(self).__name__} has observed nothing; run calibration data through the model first")
        return self.lo.clone(), self.hi.clone()

    def update(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class MinMaxObserver(Observer):
    """Running min and max over all observed values."""

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        rows = self._rows(x)
        lo = rows.amin(dim=(0, 2)).float()
        hi = rows.amax(dim=(0, 2)).float()
        if self._count() == 0:
            self.lo.copy_(lo)
            self.hi.copy_(hi)
        else:
            torch.minimum(self.lo, lo, out=self.lo)
            torch.maximum(self.hi, hi, out=self.hi)
        self._counted(rows.shape[0])


class QuantileObserver(Observer):
    """Moving average (momentum ``momentum``) of per-sample ``lower``/``upper`` quantiles."""

    def __init__(self, upper: float, lower: float, momentum: float = 0.99, **kw):
        super().__init__(**kw)
        if not 0.0 <= lower < upper <= 1.0:
            raise ValueError(f"quantiles lower={lower}, upper={upper}: need 0 <= lower < upper <= 1")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum={momentum}: need 0 <= momentum <= 1")
        self.upper, self.lower, self.momentum = float(upper), float(lower), float(momentum)

    def extra_repr(self) -> str:
        return f"upper={self.upper}, lower={self.lower}, momentum={self.momentum}"

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        rows = self._rows(x)
        s, c, v = rows.shape
        flat = rows.reshape(s * c, v)
        lo = rowwise_quantile(flat, self.lower).reshape(s, c)
        hi = rowwise_quantile(flat, self.upper).reshape(s, c)
        m = self.momentum
        if self._count() == 0:  # the first sample initialises the averages
            self.lo.copy_(lo[0])
            self.hi.copy_(hi[0])
            self._counted(1)
            lo, hi, s = lo[1:], hi[1:], s - 1
        if s:
            # s sequential updates r <- m r + (1 - m) x_i in closed form: m^s r + sum_i (1 - m) m^(s-1-i) x_i
            w = (1 - m) * m ** torch.arange(s - 1, -1, -1, dtype=torch.float64, device=lo.device)
            decay = m**s
            self.lo.copy_((decay * self.lo.double() + (w[:, None] * lo.double()).sum(0)).float())
            self.hi.copy_((decay * self.hi.double() + (w[:, None] * hi.double()).sum(0)).float())
            self._counted(s)
