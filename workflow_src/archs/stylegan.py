"""Style-based generator (Karras et al. 2019), after the structure of rosinality's
style-based-gan-pytorch that the paper quantizes, trained at full resolution (no progressive growing).

Generator: pixel-normalised latent -> mapping MLP (``n_mlp`` equalized linears, lr multiplier 0.01,
LeakyReLU 0.2) -> w.  Synthesis starts from a learned 4x4 constant; every resolution level has two
styled convolutions (bilinear upsample + 3x3 conv, except at 4x4 where the constant takes the place
of the first conv), each followed by noise injection, LeakyReLU and AdaIN; a 1x1 conv maps to RGB.
The noise, AdaIN modulation and all additions go through :mod:`workflow_src.archs.ops` modules.
Evaluation, distillation, calibration, BRECQ and QAT feed every sample its own noise, drawn from a
per-sample seed saved with the eval inputs and the distillation set (:func:`seeded_noise`,
:func:`fixed_noise`, through :meth:`StyleGAN.use_extras`); without one, eval mode uses each layer's
fixed noise map (exports).

The RGB output is linear as in StyleGAN; in eval mode it is clamped to [-1, 1] so that evaluated
images follow the project's image convention.

Training: non-saturating logistic loss, R1 penalty on reals, Adam, generator EMA (``G_ema``, the
network returned by :meth:`StyleGAN.generator`).  The ``check_levels`` and ``update_ema`` helpers are
shared with the SAGAN module.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, List, Sequence, Tuple

import torch
from torch import nn

from . import ops
from .layers import EqualConv2d, EqualLinear

NOISE_SEED = 0x5EED  # seeds the fixed eval-mode noise maps; the same for every constructed generator


def check_levels(resolution: int, channels: Sequence[int], key: str) -> int:
    """Number of resolution levels 4, 8, ..., ``resolution``; ``channels`` must list one width per level."""
    n = int(round(math.log2(resolution))) - 1
    if resolution < 4 or 2 ** (n + 1) != resolution:
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    if len(channels) != n:
        raise ValueError(f"{key} needs {n} entries (levels 4..{resolution}), got {len(channels)}")
    return n


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema <- beta * ema + (1 - beta) * model`` over parameters; buffers are left to ``ema``."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1.0 - beta)


def ema_beta(target: float, step: int) -> float:
    """EMA decay with a short warm-up, so the average is not dominated by the random init."""
    return min(float(target), (1.0 + step) / (10.0 + step))


# -- generator ----------------------------------------------------------------------------------
class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, n: int):
        return self.input.expand(n, -1, -1, -1)


class NoiseInjection(nn.Module):
    """``x + weight * noise`` with a learned per-channel weight.

    Which noise: fresh ``randn`` in training mode; in eval mode the tensor given to
    :meth:`set_noise` (one map per sample: what evaluation, distillation, calibration, BRECQ and
    QAT use, see :func:`fixed_noise` and :func:`seeded_noise`), else the layer's fixed noise map
    (the ``noise`` buffer, seeded by ``NOISE_SEED``, shared by every sample; what an exported
    graph holds as a constant)."""

    def __init__(self, channels: int, size: int, gen: torch.Generator):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("noise", torch.randn(1, 1, size, size, generator=gen))
        self.fixed: torch.Tensor | None = None  # set_noise(); not state: never saved, never trained
        self.mul = ops.Mul()
        self.add = ops.Add()

    def set_noise(self, noise: torch.Tensor | None) -> None:
        """Use ``noise`` of shape ``(N, 1, H, W)`` (``H, W`` the layer's) in eval mode, sample ``i``
        of every batch of ``N`` getting ``noise[i]``; ``None`` restores the fixed buffer."""
        if noise is not None:
            h, w = self.noise.shape[-2:]
            if noise.dim() != 4 or noise.shape[1] != 1 or tuple(noise.shape[-2:]) != (h, w):
                raise ValueError(f"noise for this layer must have shape (N, 1, {h}, {w}), got {tuple(noise.shape)}")
        self.fixed = noise

    def forward(self, x):
        n, _, h, w = x.shape
        if self.training:
            noise = torch.randn(n, 1, h, w, device=x.device, dtype=x.dtype)
        elif self.fixed is not None:
            if self.fixed.shape[0] != n:
                raise ValueError(f"set_noise() gave noise for {self.fixed.shape[0]} samples, the batch has {n}")
            noise = self.fixed.to(device=x.device, dtype=x.dtype)
        else:
            noise = self.noise.expand(n, -1, -1, -1)
        return self.add(x, self.mul(noise, self.weight))


def noise_layers(model: nn.Module) -> List[Tuple[str, NoiseInjection]]:
    """The model's noise injections ``(name, module)`` in module order (quantized copies included:
    the quantization transform swaps their Mul/Add, not them)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, NoiseInjection)]


def sample_noise(model: nn.Module, n: int, generator: torch.Generator) -> List[torch.Tensor]:
    """One standard normal tensor ``(n, 1, H, W)`` per noise layer of ``model``, in module order."""
    return [torch.randn(n, 1, *m.noise.shape[-2:], generator=generator) for _, m in noise_layers(model)]


def seeded_noise(model: nn.Module, seeds: torch.Tensor) -> List[torch.Tensor]:
    """Per-sample noise from per-sample seeds: sample ``i``'s maps are :func:`sample_noise` of one
    sample drawn with a generator seeded by ``seeds[i]`` (one map per noise layer, in module
    order), so a sample's noise does not depend on which other samples share its batch.  Returns
    one tensor ``(len(seeds), 1, H, W)`` per noise layer, as :func:`fixed_noise` takes them."""
    # the layers' shapes read once, not once per sample: walking the modules took 86% of this function's
    # time (measured in the tiny workflow's BRECQ steps and evaluations); the draws are sample_noise's
    sizes = [m.noise.shape[-2:] for _, m in noise_layers(model)]
    gen = torch.Generator()

    def draw(seed: int) -> List[torch.Tensor]:
        gen.manual_seed(seed)
        return [torch.randn(1, 1, *hw, generator=gen) for hw in sizes]

    per_sample = [draw(int(s)) for s in seeds.tolist()]
    if not per_sample:
        return [torch.empty(0, 1, *hw) for hw in sizes]
    return [torch.cat(maps) for maps in zip(*per_sample)]


@contextlib.contextmanager
def fixed_noise(model: nn.Module, noises: Sequence[torch.Tensor]) -> Iterator[nn.Module]:
    """Within the context, ``model`` (FP or quantized) in eval mode injects ``noises[k]`` at its
    ``k``-th noise layer (:func:`noise_layers` order): per-sample noise, ``noises[k][i]`` for
    sample ``i`` of the batch.  Every layer's previous setting is restored on exit."""
    layers = noise_layers(model)
    if len(noises) != len(layers):
        shapes = ", ".join(f"{name}: (N, 1, {m.noise.shape[-2]}, {m.noise.shape[-1]})" for name, m in layers)
        raise ValueError(f"got {len(noises)} noise tensors for a model with {len(layers)} noise layers ({shapes})")
    sizes = {int(t.shape[0]) for t in noises}
    if len(sizes) > 1:
        raise ValueError(f"noise tensors disagree on the number of samples: {sorted(sizes)}")
    before = [m.fixed for _, m in layers]
    try:
        for (name, m), t in zip(layers, noises):
            try:
                m.set_noise(t)
            except ValueError as e:
                raise ValueError(f"noise layer {name!r}: {e}") from None
        yield model
    finally:
        for (_, m), t in zip(layers, before):
            m.fixed = t


class AdaIN(nn.Module):
    """Instance norm, then per-sample scale and bias from an affine map of w."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels)
        self.style = EqualLinear(w_dim, 2 * channels)
        with torch.no_grad():
            self.style.bias[:channels] = 1.0  # scale starts at 1, bias at 0
        self.mul = ops.Mul()
        self.add = ops.Add()

    def forward(self, x, w):
        gamma, beta = self.style(w)[:, :, None, None].chunk(2, dim=1)
        return self.add(self.mul(self.norm(x), gamma), beta)


class StyledBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, size: int, w_dim: int, gen: torch.Generator, first: bool):
        super().__init__()
        if first:  # the constant input replaces upsample + conv1
            self.up, self.conv1 = nn.Identity(), nn.Identity()
        else:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            self.conv1 = EqualConv2d(in_ch, out_ch, 3, padding=1)
        self.noise1, self.act1, self.adain1 = NoiseInjection(out_ch, size, gen), nn.LeakyReLU(0.2), AdaIN(out_ch, w_dim)
        self.conv2 = EqualConv2d(out_ch, out_ch, 3, padding=1)
        self.noise2, self.act2, self.adain2 = NoiseInjection(out_ch, size, gen), nn.LeakyReLU(0.2), AdaIN(out_ch, w_dim)

    def forward(self, x, w):
        x = self.conv1(self.up(x))
        x = self.adain1(self.act1(self.noise1(x)), w)
        x = self.conv2(x)
        return self.adain2(self.act2(self.noise2(x)), w)


class StyleGenerator(nn.Module):
    block_class: type = None  # StyledBlock (set below); layouts such as rosinality's swap the block
    mapping_lr_mul = 0.01

    def __init__(self, latent_dim: int, n_mlp: int, channels: Sequence[int], noise_seed: int = NOISE_SEED):
        super().__init__()
        mapping = [PixelNorm()]
        for _ in range(n_mlp):
            mapping += [EqualLinear(latent_dim, latent_dim, lr_mul=self.mapping_lr_mul), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*mapping)
        self.const = ConstantInput(channels[0])
        gen = torch.Generator().manual_seed(noise_seed)
        block = self.block_class or StyledBlock
        self.blocks = nn.ModuleList(
            block(channels[max(i - 1, 0)], c, 4 * 2**i, latent_dim, gen, first=(i == 0)) for i, c in enumerate(channels)
        )
        self.to_rgb = EqualConv2d(channels[-1], 3, 1)

    def forward(self, z):
        return self.synthesis(self.mapping(z))

    def synthesis(self, w):
        """The synthesis network on styles ``w`` (what the truncation trick edits)."""
        x = self.const(w.shape[0])
        for block in self.blocks:
            x = block(x, w)
        out = self.to_rgb(x)
        return out if self.training else out.clamp(-1.0, 1.0)


# -- discriminator ------------------------------------------------------------------------------
class MinibatchStddev(nn.Module):
    """Appends the mean feature standard deviation over groups of (up to) 4 samples as a channel."""

    def forward(self, x):
        n, _, h, w = x.shape
        g = 4 if n % 4 == 0 else n
        std = (x.reshape(g, n // g, -1).var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=1)
        return torch.cat([x, std.repeat(g).view(n, 1, 1, 1).expand(n, 1, h, w)], dim=1)


class StyleDiscriminator(nn.Module):
    """fromRGB, then per level two 3x3 convs and a 2x average pool down to 4x4, minibatch stddev,
    3x3 conv and two linears (rosinality's discriminator without progressive growing).
    ``channels[i]`` is the width of the features at resolution ``4 * 2**i``."""

    def __init__(self, channels: Sequence[int], mbstd: bool = True):
        super().__init__()
        lrelu = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        layers = [EqualConv2d(3, channels[-1], 1), lrelu()]
        for i in range(len(channels) - 1, 0, -1):
            layers += [EqualConv2d(channels[i], channels[i], 3, padding=1), lrelu(),
                       EqualConv2d(channels[i], channels[i - 1], 3, padding=1), lrelu(), nn.AvgPool2d(2)]
        c = channels[0]
        if mbstd:
            layers.append(MinibatchStddev())
        layers += [EqualConv2d(c + int(mbstd), c, 3, padding=1), lrelu(), nn.Flatten(),
                   EqualLinear(c * 16, c), lrelu(), EqualLinear(c, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()
