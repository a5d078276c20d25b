"""Test helpers: state dicts in the key layout of rosinality/style-based-gan-pytorch's published
checkpoints (model.py as of July 2019: ``StyledGenerator`` and ``Discriminator`` with all nine
levels 4..1024, equalized-lr ``weight_orig`` parameters, fused up/downsampling at 128 and above),
filled with random values, and an independent functional reference of their forward pass written
from that model.py with torch.nn.functional only (never the project's modules)."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

PUBLISHED_WIDTHS = [512, 512, 512, 512, 256, 128, 64, 32, 16]  # out width of progression i (resolution 4 * 2**i)
LEVELS = 9
FUSED_FROM_INDEX = 5  # progression 5 (128px) and above fuse the upsampling (generator) / downsampling (discriminator)


def _blur(c: int) -> torch.Tensor:
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
    return (k / k.sum()).view(1, 1, 3, 3).repeat(c, 1, 1, 1)


def published_generator(widths: Sequence[int] = PUBLISHED_WIDTHS, code_dim: int = 512, n_mlp: int = 8,
                        seed: int = 0) -> Dict[str, torch.Tensor]:
    """``g_running.state_dict()`` of a ``StyledGenerator(code_dim)`` (random values; noise and
    AdaIN weights non-zero so that every tensor matters)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd: Dict[str, torch.Tensor] = {}
    for k in range(n_mlp):
        sd[f"style.{2 * k + 1}.linear.weight_orig"] = r(code_dim, code_dim)
        sd[f"style.{2 * k + 1}.linear.bias"] = 0.1 * r(code_dim)
    for i in range(LEVELS):
        p, c = f"generator.progression.{i}", widths[i]
        if i == 0:
            sd[f"{p}.conv1.input"] = r(1, c, 4, 4)
        elif i >= FUSED_FROM_INDEX:
            sd[f"{p}.conv1.0.weight"] = r(widths[i - 1], c, 3, 3)  # FusedUpsample: (in, out, k, k)
            sd[f"{p}.conv1.0.bias"] = 0.1 * r(c)
            sd[f"{p}.conv1.1.weight"], sd[f"{p}.conv1.1.weight_flip"] = _blur(c), _blur(c)
        else:
            sd[f"{p}.conv1.1.conv.weight_orig"] = r(c, widths[i - 1], 3, 3)
            sd[f"{p}.conv1.1.conv.bias"] = 0.1 * r(c)
            sd[f"{p}.conv1.2.weight"], sd[f"{p}.conv1.2.weight_flip"] = _blur(c), _blur(c)
        for n in (1, 2):
            sd[f"{p}.noise{n}.weight_orig"] = 0.5 * r(1, c, 1, 1)
            sd[f"{p}.adain{n}.style.linear.weight_orig"] = r(2 * c, code_dim)
            sd[f"{p}.adain{n}.style.linear.bias"] = torch.cat([torch.ones(c), torch.zeros(c)]) + 0.1 * r(2 * c)
        sd[f"{p}.conv2.conv.weight_orig"] = r(c, c, 3, 3)
        sd[f"{p}.conv2.conv.bias"] = 0.1 * r(c)
        sd[f"generator.to_rgb.{i}.conv.weight_orig"] = r(3, c, 1, 1)
        sd[f"generator.to_rgb.{i}.conv.bias"] = 0.1 * r(3)
    return sd


def published_discriminator(widths: Sequence[int] = PUBLISHED_WIDTHS, from_rgb_activate: bool = False,
                            seed: int = 1) -> Dict[str, torch.Tensor]:
    """``discriminator.state_dict()`` of rosinality's ``Discriminator(fused=True, from_rgb_activate)``."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd: Dict[str, torch.Tensor] = {}
    for j in range(LEVELS):
        level = LEVELS - 1 - j
        rgb = f"from_rgb.{j}" + (".0" if from_rgb_activate else "")
        sd[f"{rgb}.conv.weight_orig"], sd[f"{rgb}.conv.bias"] = r(widths[level], 3, 1, 1), 0.1 * r(widths[level])
        p = f"progression.{j}"
        if j == LEVELS - 1:
            c = widths[0]
            sd[f"{p}.conv1.0.conv.weight_orig"], sd[f"{p}.conv1.0.conv.bias"] = r(c, c + 1, 3, 3), 0.1 * r(c)
            sd[f"{p}.conv2.0.conv.weight_orig"], sd[f"{p}.conv2.0.conv.bias"] = r(c, c, 4, 4), 0.1 * r(c)
            continue
        cin, cout = widths[level], widths[level - 1]
        sd[f"{p}.conv1.0.conv.weight_orig"], sd[f"{p}.conv1.0.conv.bias"] = r(cout, cin, 3, 3), 0.1 * r(cout)
        sd[f"{p}.conv2.0.weight"], sd[f"{p}.conv2.0.weight_flip"] = _blur(cout), _blur(cout)
        if level >= FUSED_FROM_INDEX:
            sd[f"{p}.conv2.1.weight"], sd[f"{p}.conv2.1.bias"] = r(cout, cout, 3, 3), 0.1 * r(cout)
        else:
            sd[f"{p}.conv2.1.conv.weight_orig"], sd[f"{p}.conv2.1.conv.bias"] = r(cout, cout, 3, 3), 0.1 * r(cout)
    sd["linear.linear.weight_orig"], sd["linear.linear.bias"] = r(1, widths[0]), 0.1 * r(1)
    return sd


# ---------------------------------------------------------------- reference forward (functional)
def _eq(w: torch.Tensor) -> torch.Tensor:
    """EqualLR: ``weight_orig * sqrt(2 / fan_in)``, fan_in = size(1) * kernel elements."""
    return w * math.sqrt(2 / (w.size(1) * w[0][0].numel()))


def _fused_kernel(w: torch.Tensor, fan_in: int) -> torch.Tensor:
    w = F.pad(w * math.sqrt(2 / fan_in), [1, 1, 1, 1])
    return (w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]) / 4


def _adain(x, style, sd, key):
    s = F.linear(style, _eq(sd[f"{key}.weight_orig"]), sd[f"{key}.bias"])[:, :, None, None]
    gamma, beta = s.chunk(2, 1)
    return gamma * F.instance_norm(x) + beta


def reference_generator(sd: Dict[str, torch.Tensor], z: torch.Tensor, noise: List[torch.Tensor], step: int, n_mlp: int) -> torch.Tensor:
    """``StyledGenerator(z, noise, step, alpha=1)`` of rosinality's model.py."""
    x = z / torch.sqrt(torch.mean(z**2, dim=1, keepdim=True) + 1e-8)
    for k in range(n_mlp):
        x = F.leaky_relu(F.linear(x, _eq(sd[f"style.{2 * k + 1}.linear.weight_orig"]), sd[f"style.{2 * k + 1}.linear.bias"]), 0.2)
    style, out = x, None
    for i in range(step + 1):
        p = f"generator.progression.{i}"
        if i == 0:
            out = sd[f"{p}.conv1.input"].repeat(z.shape[0], 1, 1, 1)
        else:
            if i >= FUSED_FROM_INDEX:
                w = sd[f"{p}.conv1.0.weight"]
                out = F.conv_transpose2d(out, _fused_kernel(w, w.size(0) * 9), sd[f"{p}.conv1.0.bias"], stride=2, padding=1)
                blur = sd[f"{p}.conv1.1.weight"]
            else:
                out = F.interpolate(out, scale_factor=2, mode="nearest")
                out = F.conv2d(out, _eq(sd[f"{p}.conv1.1.conv.weight_orig"]), sd[f"{p}.conv1.1.conv.bias"], padding=1)
                blur = sd[f"{p}.conv1.2.weight"]
            out = F.conv2d(out, blur, padding=1, groups=out.shape[1])
        out = out + _eq(sd[f"{p}.noise1.weight_orig"]) * noise[i]
        out = _adain(F.leaky_relu(out, 0.2), style, sd, f"{p}.adain1.style.linear")
        out = F.conv2d(out, _eq(sd[f"{p}.conv2.conv.weight_orig"]), sd[f"{p}.conv2.conv.bias"], padding=1)
        out = out + _eq(sd[f"{p}.noise2.weight_orig"]) * noise[i]
        out = _adain(F.leaky_relu(out, 0.2), style, sd, f"{p}.adain2.style.linear")
    return F.conv2d(out, _eq(sd[f"generator.to_rgb.{step}.conv.weight_orig"]), sd[f"generator.to_rgb.{step}.conv.bias"])


def reference_discriminator(sd: Dict[str, torch.Tensor], x: torch.Tensor, step: int, from_rgb_activate: bool = False) -> torch.Tensor:
    """``Discriminator(x, step, alpha=1)`` of rosinality's model.py, shape ``(N, 1)``."""
    first = LEVELS - 1 - step
    rgb = f"from_rgb.{first}" + (".0" if from_rgb_activate else "")
    out = F.conv2d(x, _eq(sd[f"{rgb}.conv.weight_orig"]), sd[f"{rgb}.conv.bias"])
    if from_rgb_activate:
        out = F.leaky_relu(out, 0.2)
    for j in range(first, LEVELS - 1):
        p = f"progression.{j}"
        out = F.leaky_relu(F.conv2d(out, _eq(sd[f"{p}.conv1.0.conv.weight_orig"]), sd[f"{p}.conv1.0.conv.bias"], padding=1), 0.2)
        out = F.conv2d(out, sd[f"{p}.conv2.0.weight"], padding=1, groups=out.shape[1])
        if f"{p}.conv2.1.weight" in sd:  # FusedDownsample
            w = sd[f"{p}.conv2.1.weight"]
            out = F.conv2d(out, _fused_kernel(w, w.size(1) * 9), sd[f"{p}.conv2.1.bias"], stride=2, padding=1)
        else:
            out = F.avg_pool2d(F.conv2d(out, _eq(sd[f"{p}.conv2.1.conv.weight_orig"]), sd[f"{p}.conv2.1.conv.bias"], padding=1), 2)
        out = F.leaky_relu(out, 0.2)
    std = torch.sqrt(out.var(0, unbiased=False) + 1e-8).mean().expand(out.size(0), 1, 4, 4)
    out = torch.cat([out, std], 1)
    p = f"progression.{LEVELS - 1}"
    out = F.leaky_relu(F.conv2d(out, _eq(sd[f"{p}.conv1.0.conv.weight_orig"]), sd[f"{p}.conv1.0.conv.bias"], padding=1), 0.2)
    out = F.leaky_relu(F.conv2d(out, _eq(sd[f"{p}.conv2.0.conv.weight_orig"]), sd[f"{p}.conv2.0.conv.bias"]), 0.2)
    return F.linear(out.squeeze(2).squeeze(2), _eq(sd["linear.linear.weight_orig"]), sd["linear.linear.bias"])


PAPER_CHECKPOINT = "resources/checkpoints/stylegan-ffhq-128.model"  # archs.stylegan.fp_checkpoint.path of configs/paper.yaml


def write_published_checkpoint(path, widths: Sequence[int] = PUBLISHED_WIDTHS, code_dim: int = 512, n_mlp: int = 8) -> None:
    """A file like rosinality's 128px "Model & Optimizer" checkpoint (``train_step-*.model``):
    ``{'generator', 'discriminator', 'g_running', ...}``, full size by default (~200 MB; the raw
    generator entry shares the running average's tensors and the optimizer states are empty)."""
    from pathlib import Path

    g = published_generator(widths, code_dim, n_mlp)
    obj = {"generator": g, "g_running": g, "discriminator": published_discriminator(widths),
           "g_optimizer": {"state": {}, "param_groups": []}, "d_optimizer": {"state": {}, "param_groups": []}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
