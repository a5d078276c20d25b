"""Style-based generator (Karras et al. 2019), after the structure of rosinality's
style-based-gan-pytorch that the paper quantizes, trained at full resolution (no progressive growing).

Generator: pixel-normalised latent -> mapping MLP (``n_mlp`` equalized linears, lr multiplier 0.01,
LeakyReLU 0.2) -> w.  Synthesis starts from a learned 4x4 constant; every resolution level has two
styled convolutions (bilinear upsample + 3x3 conv, except at 4x4 where the constant takes the place
of the first conv), each followed by noise injection, LeakyReLU and AdaIN; a 1x1 conv maps to RGB.
The noise, AdaIN modulation and all additions go through :mod:`workflow_src.quant.ops` modules.
Evaluation feeds per-sample noise saved with the eval inputs (:func:`fixed_noise`, through
:meth:`StyleGAN.use_extras`); elsewhere eval mode uses each layer's fixed noise map.

The RGB output is linear as in StyleGAN; in eval mode it is clamped to [-1, 1] so that evaluated
images follow the project's image convention.

Training: non-saturating logistic loss, R1 penalty on reals, Adam, generator EMA (``G_ema``, the
network returned by :meth:`StyleGAN.generator`).  The ``check_levels`` and ``update_ema`` helpers are
shared with the SAGAN module.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, ContextManager, Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..device import module_device, to_device
from ..quant import ops
from .base import LatentEMAGAN, register
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
    :meth:`set_noise` (one map per sample, what evaluation uses: the per-sample noise saved with
    the eval inputs, see :func:`fixed_noise`), else the layer's fixed noise map (the ``noise``
    buffer, seeded by ``NOISE_SEED``, shared by every sample; what distillation, calibration,
    BRECQ and QAT see)."""

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


# -- architecture ---------------------------------------------------------------------------------
@register("stylegan")
class StyleGAN(LatentEMAGAN):
    """model_cfg: latent_dim, n_mlp, channels, d_channels (optional mbstd: bool = True; layout:
    ``default`` (this module's networks) or ``rosinality`` (:mod:`.rosinality`, the layout of the
    published checkpoint the paper quantizes, with ``from_rgb_activate``)).
    train_cfg: steps, batch_size, lr_g, lr_d, betas, r1_gamma, ema_beta (optional r1_every: int = 1,
    lazy R1 every k steps with the penalty scaled by k, as in StyleGAN2)."""
    block_containers = ("mapping", "blocks", "to_rgb")  # BRECQ reconstruction blocks (workflow_src.quant.blocks)

    input_kind = "latent"

    def __init__(self, model_cfg: Dict[str, Any], train_cfg: Dict[str, Any], resolution: int):
        super().__init__(model_cfg, train_cfg, resolution)
        check_levels(self.resolution, self.model_cfg["channels"], "channels")
        check_levels(self.resolution, self.model_cfg["d_channels"], "d_channels")
        self.latent_dim = int(self.model_cfg["latent_dim"])

    def build_generator(self) -> nn.Module:
        m = self.model_cfg
        if m.get("layout", "default") == "rosinality":  # published checkpoints (workflow_src.models.rosinality)
            from .rosinality import RosinalityGenerator

            return RosinalityGenerator(self.latent_dim, int(m["n_mlp"]), list(m["channels"]))
        return StyleGenerator(self.latent_dim, int(m["n_mlp"]), list(m["channels"]))

    def sample_extras(self, n: int, generator: torch.Generator) -> Dict[str, Any]:
        """Per-sample noise: one tensor ``(n, 1, H, W)`` per noise layer of the generator, in module
        order, rounded once to float16 (FP and every variant read the same values; it halves the
        file: ~4.4 GB for 50000 samples at 128x128)."""
        with torch.random.fork_rng(devices=[]):  # building the generator draws its init from the global RNG
            model = self.build_generator()
        return {"noise": [t.half() for t in sample_noise(model, n, generator)]}

    def use_extras(self, model: nn.Module, extras: Dict[str, Any] | None, index: slice = slice(None)) -> ContextManager:
        """Eval-mode noise from ``extras["noise"]`` (samples ``index``); ``None``: each layer's
        fixed buffer, shared by all samples (distillation, calibration, BRECQ, QAT)."""
        if extras is None:
            return contextlib.nullcontext()
        if set(extras) != {"noise"}:
            raise ValueError(f"stylegan extra inputs must be {{'noise': [...]}}, got keys {sorted(extras)} "
                             "(eval inputs written before per-sample noise? rerun eval_inputs)")
        return fixed_noise(model, [t[index] for t in extras["noise"]])

    truncation_doc = "truncation psi = {t} in W"

    def display_inputs(self, n: int, generator: torch.Generator, truncation: float) -> torch.Tensor:
        return self.sample_inputs(n, generator)  # StyleGAN truncates in W (display), not in z

    @torch.no_grad()
    def display(self, model: nn.Module, inputs: torch.Tensor, truncation: float) -> torch.Tensor:
        """StyleGAN's truncation trick in W: ``w_avg + psi (w - w_avg)``, ``w_avg`` the mean style
        of 4096 seeded latents under the same (FP or quantized) mapping network."""
        device = module_device(model)
        inputs = to_device(inputs, device)
        if truncation >= 1.0:
            return model(inputs)
        # seeded on the CPU, then moved: the same latents on every device
        z_avg = torch.randn(4096, self.latent_dim, generator=torch.Generator().manual_seed(4096))
        w_avg = model.mapping(to_device(z_avg, device)).mean(dim=0, keepdim=True)
        w = model.mapping(inputs)
        return model.synthesis(w_avg + truncation * (w - w_avg))

    def build_discriminator(self) -> nn.Module:
        if self.model_cfg.get("layout", "default") == "rosinality":
            from .rosinality import RosinalityDiscriminator

            return RosinalityDiscriminator(list(self.model_cfg["d_channels"]), bool(self.model_cfg.get("from_rgb_activate", False)))
        return StyleDiscriminator(list(self.model_cfg["d_channels"]), bool(self.model_cfg.get("mbstd", True)))

    def train_step(self, state: Dict[str, Any], batches: Iterator[Dict[str, torch.Tensor]], step: int) -> Dict[str, torch.Tensor]:
        G, D, t = state["G"], state["D"], self.train_cfg
        G.train(), D.train(), state["G_ema"].eval()
        device = next(G.parameters()).device
        real = to_device(next(batches)["x"], device)
        z = torch.randn(real.shape[0], self.latent_dim, device=device)
        fake = G(z)  # one forward serves the D step (detached) and the G step

        # discriminator: logistic loss + R1 on reals
        gamma, every = float(t["r1_gamma"]), int(t.get("r1_every", 1))
        do_r1 = gamma > 0 and step % every == 0
        real.requires_grad_(do_r1)
        d_real = D(real)
        loss_d = F.softplus(D(fake.detach())).mean() + F.softplus(-d_real).mean()
        r1 = torch.zeros((), device=device)
        if do_r1:
            (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            loss_d = loss_d + 0.5 * gamma * every * r1
        state["opt_d"].zero_grad(set_to_none=True)
        loss_d.backward()
        state["opt_d"].step()

        # generator: non-saturating loss
        D.requires_grad_(False)
        loss_g = F.softplus(-D(fake)).mean()
        state["opt_g"].zero_grad(set_to_none=True)
        loss_g.backward()
        state["opt_g"].step()
        D.requires_grad_(True)

        update_ema(state["G_ema"], G, ema_beta(t["ema_beta"], step))
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "r1": r1.detach()}
