"""Layers shared by the generators.

Generators are trained with layers that reparametrise their weights (equalized learning rate,
spectral normalisation).  Quantization must see the weight that is actually used in the forward
pass, so :func:`bake` turns every such layer into a plain ``nn.Conv2d``/``nn.Linear`` holding its
effective weight before the model is quantized or exported.  After ``bake`` a generator contains
only ``nn.Conv2d``, ``nn.Linear``, the operation modules of :mod:`workflow_src.archs.ops`,
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
        conv = nn.Conv2d(in_ch, out_ch, k, padding=self.padding, bias=self.bias is not None).to(self.weight.device)
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
        lin = nn.Linear(in_dim, out_dim, bias=self.bias is not None).to(self.weight.device)
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
    new = new.to(module.weight.device)  # built on the CPU: its (overwritten) init draws the same on every device
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


# -- resampling with fixed filters (rosinality's StyleGAN layout, :mod:`.rosinality`) --------------
def blur_kernel() -> torch.Tensor:
    """The fixed ``[1, 2, 1] x [1, 2, 1] / 16`` low-pass filter, shape ``(1, 1, 3, 3)``."""
    k = torch.tensor([1.0, 2.0, 1.0])
    return (k[:, None] * k[None, :] / 16.0).view(1, 1, 3, 3)


class Blur(nn.Module):
    """Depthwise 3x3 ``[1, 2, 1] x [1, 2, 1] / 16`` filter (padding 1) after StyleGAN's upsampling.

    A fixed resampling filter, not a learned layer: it is not an ``nn.Conv2d``, so quantization
    leaves it in float like every other resampling step (an int8 runtime would run it as a
    depthwise conv with exact power-of-two weights on the dequantized values).  The kernel is a
    non-persistent buffer: it is never part of a state dict."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.register_buffer("kernel", blur_kernel().repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x):
        return F.conv2d(x, self.kernel.to(x.dtype), padding=1, groups=self.channels)


class ZeroInsert2d(nn.Module):
    """Stride-2 zero insertion: ``(N, C, H, W) -> (N, C, 2H-1, 2W-1)`` with ``x`` at the even
    positions and zeros between.  Followed by a plain convolution it computes a stride-2 transposed
    convolution exactly, as a layer the quantization transform handles (the zeros are exact in any
    asymmetric activation grid, whose zero point represents 0).  Built from pad/reshape/slice, so it
    exports to ONNX without scatter ops and without a zeros tensor: a ``zeros_like`` of a
    fixed-shape input is folded into a constant by the exporters (at paper size, 12.6 MB of float
    zeros at 128 px: a third of StyleGAN's int8 ONNX file); a ``Pad`` stores four integers."""

    def forward(self, x):
        n, c, h, w = x.shape
        x = F.pad(x.unsqueeze(3), [0, 0, 0, 1]).reshape(n, c, 2 * h, w)[:, :, : 2 * h - 1]  # a zero row after each row
        return F.pad(x.unsqueeze(4), [0, 1]).reshape(n, c, 2 * h - 1, 2 * w)[..., : 2 * w - 1]  # a zero column after each column


def blur_average(weight: torch.Tensor) -> torch.Tensor:
    """rosinality's fused-resampling kernel: the 3x3 kernel zero-padded to 5x5 and averaged over
    its four 4x4 windows, i.e. the 3x3 kernel convolved with a 2x2 box filter (4x4)."""
    w = F.pad(weight, [1, 1, 1, 1])
    return (w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]) / 4


class FusedUpConv2d(nn.Module):
    """rosinality's ``FusedUpsample`` (2x upsampling fused with a 3x3 conv: a stride-2 transposed
    convolution whose 4x4 kernel is the 3x3 kernel averaged over its four shifts), written as the
    exactly equivalent zero insertion + 4x4 convolution with padding 2.

    ``weight`` ``(out, in, 3, 3)`` is in ordinary-convolution orientation: the published transposed
    weight ``W_t`` ``(in, out, 3, 3)`` corresponds to ``flip(W_t, [2, 3]).transpose(0, 1)``
    (flipping commutes with the shift average).  Equalized learning rate: scaled by
    ``1/sqrt(in * 9)`` at run time.  :meth:`to_plain` gives ``ZeroInsert2d`` + a plain
    ``nn.Conv2d`` holding the effective 4x4 kernel, which quantization treats like any conv."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.scale = 1.0 / math.sqrt(in_ch * 9)
        self.zero_insert = ZeroInsert2d()

    def kernel(self) -> torch.Tensor:
        return blur_average(self.weight * self.scale)

    def forward(self, x):
        return F.conv2d(self.zero_insert(x), self.kernel(), self.bias, padding=2)

    def to_plain(self) -> nn.Module:
        out_ch, in_ch = self.weight.shape[:2]
        conv = nn.Conv2d(in_ch, out_ch, 4, padding=2).to(self.weight.device)
        with torch.no_grad():
            conv.weight.copy_(self.kernel())
            conv.bias.copy_(self.bias)
        return nn.Sequential(ZeroInsert2d(), conv)
