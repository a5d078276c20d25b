"""Self-Attention GAN (Zhang et al. 2019), unconditional, with the paper's change of every transposed
convolution to nearest upsampling + convolution.

Generator: z -> spectral-norm linear to a 4x4 map -> residual up-blocks (BN, ReLU, upsample, SN 3x3,
BN, ReLU, SN 3x3; skip: upsample + SN 1x1) with one self-attention block at ``attn_res`` -> BN, ReLU,
SN 3x3 to RGB, tanh.  Residual sums, the attention matrix products and the gamma-scaled attention
residual go through :mod:`workflow_src.quant.ops` modules.

Discriminator: SN residual down-blocks with self-attention, hinge loss; TTUR Adam; generator EMA
whose BatchNorm statistics and spectral-norm vectors are kept up to date by running the EMA copy in
training mode (without gradients) on each step's latents.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..device import to_device
from ..quant import ops
from .base import LatentEMAGAN, register
from .stylegan import check_levels, ema_beta, update_ema


def sn_conv(cin: int, cout: int, k: int) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, k, padding=k // 2))


class SelfAttention(nn.Module):
    """SAGAN attention: ``x + gamma * (V softmax(Q^T K)^T)`` with 1x1 SN projections (C/8, C/8, C)."""

    def __init__(self, channels: int):
        super().__init__()
        ck = max(channels // 8, 1)
        self.query, self.key, self.value = sn_conv(channels, ck, 1), sn_conv(channels, ck, 1), sn_conv(channels, channels, 1)
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


class ResUp(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"), sn_conv(cin, cout, 3),
            nn.BatchNorm2d(cout), nn.ReLU(), sn_conv(cout, cout, 3),
        )
        self.skip = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), sn_conv(cin, cout, 1))
        self.add = ops.Add()

    def forward(self, x):
        return self.add(self.main(x), self.skip(x))


class SAGenerator(nn.Module):
    def __init__(self, latent_dim: int, channels: Sequence[int], attn_res: Optional[int]):
        super().__init__()
        self.c0 = channels[0]
        self.fc = spectral_norm(nn.Linear(latent_dim, 16 * self.c0))
        blocks = [SelfAttention(self.c0)] if attn_res == 4 else []
        for i in range(1, len(channels)):
            blocks.append(ResUp(channels[i - 1], channels[i]))
            if attn_res == 4 * 2**i:
                blocks.append(SelfAttention(channels[i]))
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Sequential(nn.BatchNorm2d(channels[-1]), nn.ReLU(), sn_conv(channels[-1], 3, 3), nn.Tanh())

    def forward(self, z):
        return self.out(self.blocks(self.fc(z).view(z.shape[0], self.c0, 4, 4)))


class ResDown(nn.Module):
    """Pre-activation SN residual block, optionally average-pooling by 2.  The first block of the
    discriminator skips the leading ReLU (it sees the image)."""

    def __init__(self, cin: int, cout: int, hidden: Optional[int] = None, first: bool = False, down: bool = True):
        super().__init__()
        hidden = hidden or cin
        main = ([] if first else [nn.ReLU()]) + [sn_conv(cin, hidden, 3), nn.ReLU(), sn_conv(hidden, cout, 3)]
        self.main = nn.Sequential(*main, *([nn.AvgPool2d(2)] if down else []))
        # pooling and a 1x1 conv commute; pooling first is cheaper
        self.skip = nn.Sequential(*([nn.AvgPool2d(2)] if down else []), sn_conv(cin, cout, 1))

    def forward(self, x):
        return self.main(x) + self.skip(x)


class SADiscriminator(nn.Module):
    """``channels[i]`` is the width of the features at resolution ``4 * 2**i`` (the last entry is the
    hidden width of the first block, which reads the full-resolution image)."""

    def __init__(self, channels: Sequence[int], attn_res: Optional[int], resolution: int):
        super().__init__()
        n = len(channels)
        attn_res = min(attn_res, resolution // 2) if attn_res else None
        blocks = [ResDown(3, channels[n - 2], hidden=channels[n - 1], first=True)]
        res = resolution // 2
        for i in range(n - 2, 0, -1):
            if res == attn_res:
                blocks.append(SelfAttention(channels[i]))
            blocks.append(ResDown(channels[i], channels[i - 1]))
            res //= 2
        if attn_res == 4:
            blocks.append(SelfAttention(channels[0]))
        blocks.append(ResDown(channels[0], channels[0], down=False))
        self.blocks = nn.Sequential(*blocks)
        self.fc = spectral_norm(nn.Linear(channels[0], 1))

    def forward(self, x):
        return self.fc(F.relu(self.blocks(x)).sum(dim=(2, 3))).flatten()


@register("sagan")
class SAGAN(LatentEMAGAN):
    """model_cfg: latent_dim, channels, d_channels, attn_res (null disables attention).
    train_cfg: steps, batch_size, lr_g, lr_d, betas, ema_beta."""
    block_containers = ("fc", "blocks", "out")  # BRECQ reconstruction blocks (workflow_src.quant.blocks)

    input_kind = "latent"

    def __init__(self, model_cfg: Dict[str, Any], train_cfg: Dict[str, Any], resolution: int):
        super().__init__(model_cfg, train_cfg, resolution)
        check_levels(self.resolution, self.model_cfg["channels"], "channels")
        check_levels(self.resolution, self.model_cfg["d_channels"], "d_channels")
        if self.resolution < 8:
            raise ValueError("sagan needs resolution >= 8")
        self.latent_dim = int(self.model_cfg["latent_dim"])
        a = self.model_cfg.get("attn_res")
        self.attn_res = int(a) if a else None
        if self.attn_res is not None and self.attn_res not in [4 * 2**i for i in range(len(self.model_cfg["channels"]))]:
            raise ValueError(f"attn_res {self.attn_res} is not one of the levels 4..{self.resolution}")

    def build_generator(self) -> nn.Module:
        return SAGenerator(self.latent_dim, list(self.model_cfg["channels"]), self.attn_res)

    def build_discriminator(self) -> nn.Module:
        return SADiscriminator(list(self.model_cfg["d_channels"]), self.attn_res, self.resolution)

    def train_step(self, state: Dict[str, Any], batches: Iterator[Dict[str, torch.Tensor]], step: int) -> Dict[str, torch.Tensor]:
        G, D, G_ema = state["G"], state["D"], state["G_ema"]
        G.train(), D.train()
        device = next(G.parameters()).device
        real = to_device(next(batches)["x"], device)
        z = torch.randn(real.shape[0], self.latent_dim, device=device)
        fake = G(z)

        loss_d = F.relu(1.0 - D(real)).mean() + F.relu(1.0 + D(fake.detach())).mean()
        state["opt_d"].zero_grad(set_to_none=True)
        loss_d.backward()
        state["opt_d"].step()

        D.requires_grad_(False)
        loss_g = -D(fake).mean()
        state["opt_g"].zero_grad(set_to_none=True)
        loss_g.backward()
        state["opt_g"].step()
        D.requires_grad_(True)

        update_ema(G_ema, G, ema_beta(self.train_cfg["ema_beta"], step))
        with torch.no_grad():  # BN running statistics and SN power iteration of the averaged weights
            G_ema.train()
            G_ema(z)
            G_ema.eval()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}
