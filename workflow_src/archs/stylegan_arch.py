"""The StyleGAN arch: training, inputs, per-sample noise and display of the style-based
generator (:mod:`.stylegan`'s networks, or with ``model.layout: rosinality`` those of
:mod:`.rosinality`, the layout of the published checkpoint the paper quantizes)."""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Dict, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .base import LatentEMAGAN
from .rosinality import RosinalityDiscriminator, RosinalityGenerator
from .stylegan import StyleDiscriminator, StyleGenerator, check_levels, ema_beta, fixed_noise, sample_noise, update_ema


# -- architecture ---------------------------------------------------------------------------------
class StyleGAN(LatentEMAGAN):
    """model_cfg: latent_dim, n_mlp, channels, d_channels (optional mbstd: bool = True; layout:
    ``default`` (:mod:`.stylegan`'s networks) or ``rosinality`` (:mod:`.rosinality`, the layout of the
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
        if m.get("layout", "default") == "rosinality":  # published checkpoints (workflow_src.archs.rosinality)
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
        if truncation >= 1.0:
            return model(inputs)
        z_avg = torch.randn(4096, self.latent_dim, generator=torch.Generator().manual_seed(4096))
        w_avg = model.mapping(z_avg).mean(dim=0, keepdim=True)
        w = model.mapping(inputs)
        return model.synthesis(w_avg + truncation * (w - w_avg))

    def build_discriminator(self) -> nn.Module:
        if self.model_cfg.get("layout", "default") == "rosinality":
            return RosinalityDiscriminator(list(self.model_cfg["d_channels"]), bool(self.model_cfg.get("from_rgb_activate", False)))
        return StyleDiscriminator(list(self.model_cfg["d_channels"]), bool(self.model_cfg.get("mbstd", True)))

    def train_step(self, state: Dict[str, Any], batches: Iterator[Dict[str, torch.Tensor]], step: int) -> Dict[str, float]:
        G, D, t = state["G"], state["D"], self.train_cfg
        G.train(), D.train(), state["G_ema"].eval()
        device = next(G.parameters()).device
        real = next(batches)["x"].to(device)
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
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "r1": r1.item()}


# What this arch is (workflow_src/registry.py reads this literal without importing this file).
ARCH = {
    "name": "stylegan", "class": "StyleGAN", "title": "StyleGAN",
    "model": {
        "latent_dim": {"$ref": "#/$defs/pos_int"}, "n_mlp": {"$ref": "#/$defs/pos_int"}, "mbstd": {"type": "boolean"},
        "channels": {"$ref": "#/$defs/channels"}, "d_channels": {"$ref": "#/$defs/channels"},
        "layout": {"description": "default, or rosinality (the published checkpoint's network)", "enum": ["default", "rosinality"]},
        "from_rgb_activate": {"description": "layout rosinality: LeakyReLU after the discriminator's from_rgb", "type": "boolean"},
    },
    "per_level": ["channels"],
    "checkpoint_formats": {"rosinality": {"layout": "rosinality"}},
}
