"""Float arithmetic written as modules, so that the quantization transform can see every operand.

A real int8 deployment quantizes the operands of residual additions, concatenations, the AdaIN
modulation and the attention matrix products, not only the inputs of convolutions and linear
layers.  Models express those operations through the modules below instead of ``+``, ``*``,
``torch.cat`` and ``torch.bmm``; in full precision they compute exactly the same thing, and
:func:`workflow_src.quant.transform.quantize_model` replaces each of them by a version that
fake-quantizes its operands with static activation quantizers.
"""
from __future__ import annotations

import torch
from torch import nn


class FloatOp(nn.Module):
    """An n-ary tensor operation whose operands are activations to be quantized."""

    def compute(self, *xs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.compute(*xs)


class Add(FloatOp):
    """``a + b`` (residual connections, AdaIN bias, noise injection)."""

    def compute(self, a, b):
        return a + b


class Mul(FloatOp):
    """``a * b`` with broadcasting (AdaIN scale, attention gamma)."""

    def compute(self, a, b):
        return a * b


class MatMul(FloatOp):
    """Batched matrix product ``a @ b`` (attention scores and attention output)."""

    def compute(self, a, b):
        return torch.matmul(a, b)


class Cat(FloatOp):
    """Concatenation along ``dim``."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def compute(self, *xs):
        return torch.cat(xs, dim=self.dim)
