"""Layers shared by the generators.

Generators are trained with layers that reparametrise their weights (equalized learning rate,
spectral normalisation).  Quantization must see the weight that is actually used in the forward
pass, so :func:`bake` turns every such layer into a plain ``nn.Conv2d``/``nn.Linear`` holding its
effective weight before the model is quantized or exported.  After ``bake`` a generator contains
only ``nn.Conv2d``, ``nn.Linear``, the operation modules of :mod:`workflow_src.quant.ops`,
normalisations, activations and resampling.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


class EqualConv2d(nn.Module):
    """Conv2d with the equalized learning rate of progressive GAN / StyleGAN: the weight is stored
    with unit variance and multiplied by He's constant at run time."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size * kernel_size)
        self.padding = padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)

    def to_plain(self) -> nn.Conv2d:
        out_ch, in_ch, k, _ = self.weight.shape
        conv = nn.Conv2d(in_ch, out_ch, k, padding=self.padding, bias=self.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(self.weight * self.scale)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv


class EqualLinear(nn.Module):
    """Linear layer with the equalized learning rate (and StyleGAN's lr multiplier)."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x):
        bias = self.bias * self.lr_mul if self.bias is not None else None
        return F.linear(x, self.weight * self.scale, bias)

    def to_plain(self) -> nn.Linear:
        out_dim, in_dim = self.weight.shape
        lin = nn.Linear(in_dim, out_dim, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.weight * self.scale)
            if self.bias is not None:
                lin.bias.copy_(self.bias * self.lr_mul)
        return lin


def bake(model: nn.Module) -> nn.Module:
    """Replace reparametrised layers by plain layers holding their effective weights (in place).

    Weight-parametrised ``nn.Conv2d``/``nn.Linear`` layers (spectral norm) become plain layers with
    the weight they compute in eval mode, and every module with ``to_plain()`` (equalized-lr layers)
    is converted.  New modules are built instead of calling ``remove_parametrizations``, which edits
    the parametrised class that a model and its deep copies share.  Returns ``model`` in eval mode.
    """
    model.eval()
    _replace_plain(model)
    return model


def _plain_copy(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.Conv2d) and not isinstance(module, nn.ConvTranspose2d):
        new = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                        module.dilation, module.groups, module.bias is not None, module.padding_mode)
    elif isinstance(module, nn.Linear):
        new = nn.Linear(module.in_features, module.out_features, module.bias is not None)
    else:
        raise TypeError(f"cannot bake a parametrised {type(module).__name__}; only Conv2d and Linear are supported")
    with torch.no_grad():
        new.weight.copy_(module.weight)
        if module.bias is not None:
            new.bias.copy_(module.bias)
    return new


def _replace_plain(module: nn.Module) -> None:
    for name, child in module.named_children():
        if parametrize.is_parametrized(child):
            setattr(module, name, _plain_copy(child))
        elif hasattr(child, "to_plain"):
            setattr(module, name, child.to_plain())
        else:
            _replace_plain(child)
