"""CycleGAN (Zhu et al. 2017) with the ResNet generator, transposed convolutions replaced by nearest
upsampling + 3x3 convolution as in the paper.

Generator: reflection pad + 7x7 conv (``ngf``), IN, ReLU; ``n_downsampling`` stride-2 3x3 convs
doubling the width; ``n_blocks`` residual blocks (sum through ``ops.Add``); as many upsample + 3x3
convs halving it; reflection pad + 7x7 conv to RGB, tanh.  Instance norms are affine-free and keep no
running statistics, so training and eval mode compute the same function.

Training: G_AB and G_BA, PatchGAN discriminators D_A and D_B, LSGAN losses, cycle and identity
losses, Adam with the learning rate constant for the first ``decay_start`` fraction of the steps and
then decayed linearly towards 0 (the original 100 + 100 epoch schedule).
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..device import backward, to_device
from . import ops
from .base import GANArch


class ResnetBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c),
        )
        self.add = ops.Add()

    def forward(self, x):
        return self.add(x, self.body(x))


class ResnetGenerator(nn.Module):
    def __init__(self, ngf: int, n_blocks: int, n_downsampling: int):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU()]
        c = ngf
        for _ in range(n_downsampling):
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU()]
            c *= 2
        layers += [ResnetBlock(c) for _ in range(n_blocks)]
        for _ in range(n_downsampling):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c // 2, 3, padding=1),
                       nn.InstanceNorm2d(c // 2), nn.ReLU()]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, 3, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def patch_discriminator(ndf: int, n_layers: int) -> nn.Module:
    """The 70x70 PatchGAN for ``n_layers=3``; a patch-wise real/fake score map."""
    layers = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
    mult = 1
    for n in range(1, n_layers + 1):
        prev, mult = mult, min(2**n, 8)
        stride = 2 if n < n_layers else 1
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1), nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
    layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) initialisation of the original CycleGAN code."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class CycleGAN(GANArch):
    """model_cfg: ngf, ndf, n_blocks, n_downsampling, d_layers.
    train_cfg: steps, batch_size, lr_g, lr_d, betas, lambda_cycle, lambda_identity (optional
    decay_start: fraction of steps before the linear lr decay, default 0.5)."""
    block_containers = ("net",)  # BRECQ reconstruction blocks (workflow_src.quant.blocks)

    input_kind = "image"

    def __init__(self, model_cfg: Dict[str, Any], train_cfg: Dict[str, Any], resolution: int):
        super().__init__(model_cfg, train_cfg, resolution)
        m = self.model_cfg
        if self.resolution % 2 ** int(m["n_downsampling"]):
            raise ValueError(f"resolution {self.resolution} is not divisible by 2**n_downsampling")
        if self.resolution // 2 ** (int(m["d_layers"]) - 1) < 6:
            raise ValueError(f"resolution {self.resolution} is too small for a PatchGAN with {m['d_layers']} layers")

    def build_generator(self) -> nn.Module:
        m = self.model_cfg
        g = ResnetGenerator(int(m["ngf"]), int(m["n_blocks"]), int(m["n_downsampling"]))
        init_weights(g)
        return g

    def build_discriminator(self) -> nn.Module:
        d = patch_discriminator(int(self.model_cfg["ndf"]), int(self.model_cfg["d_layers"]))
        init_weights(d)
        return d

    def init_networks(self, device: torch.device) -> Dict[str, nn.Module]:
        return {k: (self.build_generator() if k.startswith("G") else self.build_discriminator()).to(device)
                for k in ("G_AB", "G_BA", "D_A", "D_B")}

    def optimizers(self, nets: Dict[str, nn.Module]) -> Dict[str, torch.optim.Optimizer]:
        t = self.train_cfg
        betas = tuple(float(b) for b in t["betas"])
        opts = {"opt_g": torch.optim.Adam(itertools.chain(nets["G_AB"].parameters(), nets["G_BA"].parameters()),
                                          lr=float(t["lr_g"]), betas=betas),
                "opt_d": torch.optim.Adam(itertools.chain(nets["D_A"].parameters(), nets["D_B"].parameters()),
                                          lr=float(t["lr_d"]), betas=betas)}
        for opt in opts.values():
            for group in opt.param_groups:
                group["base_lr"] = group["lr"]
        return opts

    def generator(self, state: Dict[str, Any]) -> nn.Module:
        return state["G_AB"]

    def discriminator(self, state: Dict[str, Any]) -> nn.Module:
        return state["D_B"]

    def _lr_factor(self, step: int) -> float:
        steps = int(self.train_cfg["steps"])
        start = int(float(self.train_cfg.get("decay_start", 0.5)) * steps)
        return 1.0 - max(0, step - start) / float(steps - start + 1)

    def train_step(self, state: Dict[str, Any], batches: Iterator[Dict[str, torch.Tensor]], step: int) -> Dict[str, torch.Tensor]:
        t = self.train_cfg
        G_AB, G_BA, D_A, D_B = state["G_AB"], state["G_BA"], state["D_A"], state["D_B"]
        for net in (G_AB, G_BA, D_A, D_B):
            net.train()
        factor = self._lr_factor(step)
        for opt in (state["opt_g"], state["opt_d"]):
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
        device = next(G_AB.parameters()).device
        batch = next(batches)
        A, B = to_device(batch["A"], device), to_device(batch["B"], device)
        n, lc, li = A.shape[0], float(t["lambda_cycle"]), float(t["lambda_identity"])

        # generators (instance norm is per sample, so the fake and identity passes share a batch)
        D_A.requires_grad_(False), D_B.requires_grad_(False)
        if li > 0:
            fake_B, idt_B = G_AB(torch.cat([A, B])).split(n)
            fake_A, idt_A = G_BA(torch.cat([B, A])).split(n)
            loss_idt = lc * li * (F.l1_loss(idt_B, B) + F.l1_loss(idt_A, A))
        else:
            fake_B, fake_A = G_AB(A), G_BA(B)
            loss_idt = torch.zeros((), device=device)
        rec_A, rec_B = G_BA(fake_B), G_AB(fake_A)
        p_B, p_A = D_B(fake_B), D_A(fake_A)
        loss_gan = F.mse_loss(p_B, torch.ones_like(p_B)) + F.mse_loss(p_A, torch.ones_like(p_A))
        loss_cyc = lc * (F.l1_loss(rec_A, A) + F.l1_loss(rec_B, B))
        loss_g = loss_gan + loss_cyc + loss_idt
        state["opt_g"].zero_grad(set_to_none=True)
        backward(loss_g)
        state["opt_g"].step()
        D_A.requires_grad_(True), D_B.requires_grad_(True)

        # discriminators
        def d_loss(D, real, fake):
            pr, pf = D(real), D(fake.detach())
            return 0.5 * (F.mse_loss(pr, torch.ones_like(pr)) + F.mse_loss(pf, torch.zeros_like(pf)))

        loss_d_A, loss_d_B = d_loss(D_A, A, fake_A), d_loss(D_B, B, fake_B)
        state["opt_d"].zero_grad(set_to_none=True)
        backward(loss_d_A + loss_d_B)
        state["opt_d"].step()
        losses = {"loss_g": loss_g, "loss_gan": loss_gan, "loss_cycle": loss_cyc, "loss_idt": loss_idt, "loss_d_A": loss_d_A, "loss_d_B": loss_d_B}
        return {k: v.detach() for k, v in losses.items()}


# What this arch is (workflow_src/registry.py reads this literal without importing this file).
ARCH = {
    "name": "cyclegan", "class": "CycleGAN", "title": "CycleGAN",
    "model": {"ngf": {"$ref": "#/$defs/pos_int"}, "ndf": {"$ref": "#/$defs/pos_int"}, "n_blocks": {"$ref": "#/$defs/pos_int"},
              "n_downsampling": {"$ref": "#/$defs/pos_int"}, "d_layers": {"$ref": "#/$defs/pos_int"}},
    "checkpoint_formats": {"junyanz": {"refused": (
        "junyanz/pytorch-CycleGAN-and-pix2pix's ResnetGenerator matches this project's CycleGAN generator in its stem, "
        "downsampling convs and residual blocks, but its decoder is two ConvTranspose2d (model.19, model.22) where the "
        "paper uses Upsample + Conv and retrained (appendix A.3); its released generators also come without "
        "discriminators, which QAT needs. Remove archs.cyclegan.fp_checkpoint to train it.")}},
}
