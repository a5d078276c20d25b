"""Self-Attention GAN (Zhang et al. 2019) as the paper used it (appendix A.2): the generator and
discriminator of heykeetae/Self-Attention-GAN (``sagan_models.py``), unconditional, with every
transposed convolution replaced by upsampling + convolution (``model.layout: heykeetae``, the only
layout).

Generator (``channels[i]``: the width at resolution ``4 * 2**i``, levels 4 .. resolution/2):

* ``l1``: spectral-norm linear ``z -> 4x4xchannels[0]`` without bias, BatchNorm, ReLU.  heykeetae's
  first layer is a 4x4 transposed convolution of the 1x1 latent, which *is* this linear map (the
  same weights reshaped, the same spectral norm; its per-channel bias is absorbed by the BatchNorm
  that follows), so nothing is replaced there;
* ``l2`` .. ``lK``: nearest 2x upsampling + spectral-norm 3x3 convolution (heykeetae: a 4x4 stride-2
  transposed convolution), BatchNorm, ReLU;
* ``attn1``, ``attn2``: self-attention after the levels in ``attn_res`` (heykeetae: 16 and 32 at
  64 px, after l3 and l4);
* ``last``: nearest 2x upsampling + 3x3 convolution to RGB (no spectral norm, as heykeetae's), tanh.

Self-attention is heykeetae's ``Self_Attn``: ``x + gamma * (V softmax(Q^T K)^T)`` with plain 1x1
projections (C/8, C/8, C; no spectral norm), gamma starting at 0.  The attention matrix products and
the gamma-scaled residual go through :mod:`workflow_src.quant.ops` modules, so quantization sees
them.

Discriminator (heykeetae's, ``d_channels[i]``: the width at resolution ``4 * 2**i``): spectral-norm
4x4 stride-2 convolutions with LeakyReLU 0.1 from the image down to 4x4, self-attention at the
resolutions in ``d_attn_res`` (heykeetae: 8 and 4), and a plain 4x4 convolution to one logit.

Training: hinge loss, TTUR Adam (heykeetae's defaults 1e-4 / 4e-4, betas 0 / 0.9), plus a generator
EMA whose BatchNorm statistics and spectral-norm vectors are kept up to date by running the EMA copy
in training mode (without gradients) on each step's latents (``ema_beta: 0`` evaluates the raw
generator, as heykeetae does).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..device import backward, to_device
from . import ops
from .base import LatentEMAGAN
from .stylegan import check_levels, ema_beta, update_ema


def sn_conv(cin: int, cout: int, k: int) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, k, padding=k // 2))


class SelfAttention(nn.Module):
    """SAGAN attention (heykeetae's ``Self_Attn``): ``x + gamma * (V softmax(Q^T K)^T)`` with plain
    1x1 projections (C/8, C/8, C)."""

    def __init__(self, channels: int):
        super().__init__()
        ck = max(channels // 8, 1)
        self.query, self.key, self.value = nn.Conv2d(channels, ck, 1), nn.Conv2d(channels, ck, 1), nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.scores = ops.MatMul()
        self.attend = ops.MatMul()
        self.scale = ops.Mul()
        self.add = ops.Add()

    def forward(self, x):
        q, k, v = (proj(x).flatten(2) for proj in (self.query, self.key, self.value))  # (B, c, N)
        s = self.scores(q.transpose(1, 2), k)  # (B, N, N): query position x key position
        attn = torch.softmax(s.float(), dim=-1).to(x.dtype)
        out = self.attend(v, attn.transpose(1, 2)).view_as(x)  # (B, C, N)
        return self.add(x, self.scale(out, self.gamma))


def _attention_levels(res: Sequence[int], levels: Sequence[int], key: str) -> List[int]:
    res = [int(r) for r in res]
    bad = [r for r in res if r not in levels]
    if bad or len(set(res)) != len(res):
        raise ValueError(f"{key} = {res}: each entry must be one of the feature resolutions {list(levels)}, at most once")
    return res


class SAGenerator(nn.Module):
    """heykeetae's generator with Upsample + Conv in place of its transposed convolutions (module
    docstring); every stage is one child of ``net``, named as in ``sagan_models.Generator``."""

    def __init__(self, latent_dim: int, channels: Sequence[int], attn_res: Sequence[int]):
        super().__init__()
        c0 = int(channels[0])
        layers = OrderedDict(l1=nn.Sequential(spectral_norm(nn.Linear(latent_dim, 16 * c0, bias=False)), nn.Unflatten(1, (c0, 4, 4)),
                                              nn.BatchNorm2d(c0), nn.ReLU()))
        n_attn = 0

        def attend(res: int, c: int) -> None:
            nonlocal n_attn
            if res in attn_res:
                n_attn += 1
                layers[f"attn{n_attn}"] = SelfAttention(c)

        attend(4, c0)
        for i in range(1, len(channels)):
            layers[f"l{i + 1}"] = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), sn_conv(channels[i - 1], channels[i], 3),
                                                nn.BatchNorm2d(channels[i]), nn.ReLU())
            attend(4 * 2**i, channels[i])
        layers["last"] = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels[-1], 3, 3, padding=1), nn.Tanh())
        self.net = nn.Sequential(layers)

    def forward(self, z):
        return self.net(z)


class SADiscriminator(nn.Module):
    """heykeetae's discriminator: SN 4x4 stride-2 convs with LeakyReLU 0.1 down to 4x4 (``d_channels[i]``
    wide at resolution ``4 * 2**i``), self-attention at ``attn_res``, a 4x4 conv to one logit."""

    def __init__(self, channels: Sequence[int], attn_res: Sequence[int], resolution: int):
        super().__init__()
        layers: List[nn.Module] = []
        cin, res = 3, resolution
        for c in reversed(list(channels)):
            layers += [spectral_norm(nn.Conv2d(cin, c, 4, 2, 1)), nn.LeakyReLU(0.1)]
            cin, res = c, res // 2
            if res in attn_res:
                layers.append(SelfAttention(c))
        layers.append(nn.Conv2d(cin, 1, 4))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()


class SAGAN(LatentEMAGAN):
    """model_cfg: latent_dim, channels and d_channels (one width per level 4 .. resolution/2),
    attn_res and d_attn_res (the generator's and discriminator's feature resolutions followed by
    self-attention; heykeetae: [16, 32] and [8, 4] at 64 px), layout (``heykeetae``, the only one).
    train_cfg: steps, batch_size, lr_g, lr_d, betas, ema_beta."""
    block_containers = ("net",)  # BRECQ reconstruction blocks (workflow_src.quant.blocks): l1, l2, attn1, ..., last

    input_kind = "latent"

    def __init__(self, model_cfg: Dict[str, Any], train_cfg: Dict[str, Any], resolution: int):
        super().__init__(model_cfg, train_cfg, resolution)
        if self.resolution < 8:
            raise ValueError("sagan needs resolution >= 8")
        layout = self.model_cfg.get("layout", "heykeetae")
        if layout != "heykeetae":
            raise ValueError(f"sagan model.layout = {layout!r}: the only layout is 'heykeetae'")
        n = check_levels(self.resolution // 2, self.model_cfg["channels"], "channels")
        check_levels(self.resolution // 2, self.model_cfg["d_channels"], "d_channels")
        self.latent_dim = int(self.model_cfg["latent_dim"])
        levels = [4 * 2**i for i in range(n)]
        self.attn_res = _attention_levels(self.model_cfg.get("attn_res") or [], levels, "attn_res")
        self.d_attn_res = _attention_levels(self.model_cfg.get("d_attn_res") or [], levels, "d_attn_res")

    def build_generator(self) -> nn.Module:
        return SAGenerator(self.latent_dim, list(self.model_cfg["channels"]), self.attn_res)

    def build_discriminator(self) -> nn.Module:
        return SADiscriminator(list(self.model_cfg["d_channels"]), self.d_attn_res, self.resolution)

    def train_step(self, state: Dict[str, Any], batches: Iterator[Dict[str, torch.Tensor]], step: int) -> Dict[str, torch.Tensor]:
        G, D, G_ema = state["G"], state["D"], state["G_ema"]
        G.train(), D.train()
        device = next(G.parameters()).device
        real = to_device(next(batches)["x"], device)
        z = torch.randn(real.shape[0], self.latent_dim, device=device)
        fake = G(z)

        loss_d = F.relu(1.0 - D(real)).mean() + F.relu(1.0 + D(fake.detach())).mean()
        state["opt_d"].zero_grad(set_to_none=True)
        backward(loss_d)
        state["opt_d"].step()

        D.requires_grad_(False)
        loss_g = -D(fake).mean()
        state["opt_g"].zero_grad(set_to_none=True)
        backward(loss_g)
        state["opt_g"].step()
        D.requires_grad_(True)

        update_ema(G_ema, G, ema_beta(self.train_cfg["ema_beta"], step))
        with torch.no_grad():  # BN running statistics and SN power iteration of the averaged weights
            G_ema.train()
            G_ema(z)
            G_ema.eval()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}


# What this arch is (workflow_src/registry.py reads this literal without importing this file).
ARCH = {
    "name": "sagan", "class": "SAGAN", "title": "SAGAN",
    "model": {"latent_dim": {"$ref": "#/$defs/pos_int"}, "channels": {"$ref": "#/$defs/channels"},
              "d_channels": {"$ref": "#/$defs/channels"},
              "attn_res": {"description": "generator feature resolutions followed by self-attention",
                           "type": ["array", "null"], "items": {"type": "integer", "minimum": 4}},
              "d_attn_res": {"description": "discriminator feature resolutions followed by self-attention",
                             "type": ["array", "null"], "items": {"type": "integer", "minimum": 4}},
              "layout": {"description": "heykeetae (the only one)", "enum": ["heykeetae"]}},
    "per_level": ["channels", "d_channels"],
    "levels_above": 1,  # the last layer makes the full-resolution RGB image: widths for 4 .. resolution/2
    "checkpoint_formats": {"heykeetae": {"refused": (
        "heykeetae/Self-Attention-GAN's generator is a stack of ConvTranspose2d layers (l1..l4, last) with two "
        "attention layers; the paper replaced every transposed convolution by Upsample + Conv and retrained (appendix "
        "A.2), and this project's SAGAN (layout heykeetae) is that retrained generator: no published SAGAN checkpoint "
        "matches it. Remove archs.sagan.fp_checkpoint to train it.")}},
}
