"""rosinality's style-based-gan-pytorch layout of StyleGAN (``archs.stylegan.model.layout: rosinality``).

The paper quantizes the FFHQ 128x128 generator of github.com/rosinality/style-based-gan-pytorch
(``model.py`` as of July 2019, the version its 128px checkpoint was trained with).  That generator
grows progressively; at its final step (``alpha = 1``: no blend with the previous level's RGB output)
it is the network built here, with the same layer order, so that a published checkpoint can be
imported (:mod:`.importers`) and run exactly:

* mapping: pixel norm, ``n_mlp`` x (equalized linear, LeakyReLU 0.2), no learning-rate multiplier;
* level 4: the learned constant; every level: conv1 -> noise -> LeakyReLU -> AdaIN -> conv2 ->
  noise -> LeakyReLU -> AdaIN, both noise injections of a level adding **the same** noise map
  (rosinality passes one noise tensor per resolution);
* conv1 of levels 8..64: nearest 2x upsampling, 3x3 conv, :class:`~.layers.Blur`; of levels >= 128:
  the fused upsampling (a stride-2 transposed conv with the blurred 4x4 kernel, here the equivalent
  zero insertion + 4x4 conv, :class:`~.layers.FusedUpConv2d`), then :class:`~.layers.Blur`;
* one 1x1 ``to_rgb`` at the last level (output clamped to [-1, 1] in eval mode, the project's
  image convention).

Quantization treats the 3x3/4x4 convs, linears, noise and AdaIN operations like those of the default
layout; the blur filters and the zero insertion are fixed resampling and stay in float.

The discriminator (:class:`RosinalityDiscriminator`) is rosinality's at the same final step: a 1x1
``from_rgb`` (optionally followed by LeakyReLU: ``model.from_rgb_activate``, true for checkpoints
trained after August 2019), per level 3x3 conv, blur, downsampling conv (fused stride-2 blurred
4x4 kernel at levels >= 128, else 3x3 conv + 2x average pooling), the batch-wide minibatch stddev
channel, a 3x3 and a 4x4 conv, and a linear.  QAT starts its adversarial loss from it.

rosinality's equalized learning rate multiplies by ``sqrt(2 / fan_in)``; these modules by
``1 / sqrt(fan_in)`` (the project's :class:`~.layers.EqualConv2d`); the importer folds the factor
``sqrt(2)`` into the stored weights, so the effective weights are the same.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from . import ops
from .layers import Blur, EqualConv2d, EqualLinear, FusedUpConv2d, blur_average
from .stylegan import AdaIN, NoiseInjection, StyleGenerator

FUSED_FROM = 128  # rosinality fuses up/downsampling with the conv at resolutions >= 128


class LevelNoise(NoiseInjection):
    """The first noise injection of a level; it also draws the noise map the level's second
    injection (:class:`NoiseScale`) adds.  One ``LevelNoise`` per resolution, as rosinality's
    generator takes one noise tensor per resolution."""

    def draw(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.training:
            return torch.randn(n, 1, h, w, device=x.device, dtype=x.dtype)
        fixed = getattr(self, "fixed", None)  # per-sample noise, when the layer supports it
        if fixed is not None:
            if fixed.shape[0] != n:
                raise ValueError(f"set_noise() gave noise for {fixed.shape[0]} samples, the batch has {n}")
            return fixed.to(device=x.device, dtype=x.dtype)
        return self.noise.expand(n, -1, -1, -1)

    def inject(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.add(x, self.mul(noise, self.weight))

    def forward(self, x):
        return self.inject(x, self.draw(x))


class NoiseScale(nn.Module):
    """``x + weight * noise`` for a noise map drawn elsewhere (the level's :class:`LevelNoise`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.mul = ops.Mul()
        self.add = ops.Add()

    def forward(self, x, noise):
        return self.add(x, self.mul(noise, self.weight))


class RosinalityStyledBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, size: int, w_dim: int, gen: torch.Generator, first: bool):
        super().__init__()
        if first:  # the constant input replaces conv1
            self.conv1 = nn.Identity()
        elif size >= FUSED_FROM:
            self.conv1 = nn.Sequential(FusedUpConv2d(in_ch, out_ch), Blur(out_ch))
        else:
            self.conv1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), EqualConv2d(in_ch, out_ch, 3, padding=1), Blur(out_ch))
        self.noise1, self.act1, self.adain1 = LevelNoise(out_ch, size, gen), nn.LeakyReLU(0.2), AdaIN(out_ch, w_dim)
        self.conv2 = EqualConv2d(out_ch, out_ch, 3, padding=1)
        self.noise2, self.act2, self.adain2 = NoiseScale(out_ch), nn.LeakyReLU(0.2), AdaIN(out_ch, w_dim)

    def forward(self, x, w):
        x = self.conv1(x)
        noise = self.noise1.draw(x)
        x = self.adain1(self.act1(self.noise1.inject(x, noise)), w)
        x = self.conv2(x)
        return self.adain2(self.act2(self.noise2(x, noise)), w)


class RosinalityGenerator(StyleGenerator):
    """:class:`~.stylegan.StyleGenerator` with rosinality's blocks and a mapping network without a
    learning-rate multiplier: the same interface (``mapping``, ``synthesis``, ``blocks``,
    ``to_rgb``), so display, BRECQ and QAT treat both layouts alike."""

    block_class = RosinalityStyledBlock
    mapping_lr_mul = 1.0


# -- discriminator ------------------------------------------------------------------------------
class FusedDownConv2d(EqualConv2d):
    """rosinality's ``FusedDownsample``: a stride-2 conv (padding 1) with the 3x3 kernel averaged
    over its four shifts (4x4)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(in_ch, out_ch, 3, padding=1)

    def forward(self, x):
        return F.conv2d(x, blur_average(self.weight * self.scale), self.bias, stride=2, padding=1)


class DownBlock(nn.Module):
    """3x3 conv ``cin -> cout``, LeakyReLU, blur, downsampling conv ``cout -> cout``, LeakyReLU."""

    def __init__(self, cin: int, cout: int, size: int):
        super().__init__()
        self.conv1 = EqualConv2d(cin, cout, 3, padding=1)
        self.blur = Blur(cout)
        self.fused = size >= FUSED_FROM
        self.conv2 = FusedDownConv2d(cout, cout) if self.fused else EqualConv2d(cout, cout, 3, padding=1)

    def forward(self, x):
        x = F.leaky_relu(self.conv1(x), 0.2)
        x = self.conv2(self.blur(x))
        if not self.fused:
            x = F.avg_pool2d(x, 2)
        return F.leaky_relu(x, 0.2)


class RosinalityDiscriminator(nn.Module):
    """``channels[i]`` is the width of the features at resolution ``4 * 2**i`` (as ``d_channels``)."""

    def __init__(self, channels: Sequence[int], from_rgb_activate: bool = False):
        super().__init__()
        n = len(channels)
        self.from_rgb = nn.Sequential(EqualConv2d(3, channels[-1], 1), nn.LeakyReLU(0.2) if from_rgb_activate else nn.Identity())
        self.blocks = nn.ModuleList(DownBlock(channels[i], channels[i - 1], 4 * 2**i) for i in range(n - 1, 0, -1))
        c = channels[0]
        self.conv1 = EqualConv2d(c + 1, c, 3, padding=1)
        self.conv2 = EqualConv2d(c, c, 4)
        self.linear = EqualLinear(c, 1)

    def forward(self, x):
        x = self.from_rgb(x)
        for block in self.blocks:
            x = block(x)
        std = torch.sqrt(x.var(0, unbiased=False) + 1e-8).mean()  # one scalar over the whole batch
        x = torch.cat([x, std.expand(x.shape[0], 1, *x.shape[2:])], dim=1)
        x = F.leaky_relu(self.conv1(x), 0.2)
        x = F.leaky_relu(self.conv2(x), 0.2)
        return self.linear(x.flatten(1)).flatten()
