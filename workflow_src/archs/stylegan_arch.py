"""The StyleGAN arch: training, inputs, per-sample noise and display of the style-based
generator (:mod:`.stylegan`'s networks, or with ``model.layout: rosinality`` those of
:mod:`.rosinality`, the layout of the published checkpoint the paper quantizes)."""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Dict, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..device import backward, module_device, to_device
from .base import LatentEMAGAN
from .rosinality import RosinalityDiscriminator, RosinalityGenerator
from .stylegan import StyleDiscriminator, StyleGenerator, check_levels, ema_beta, fixed_noise, seeded_noise, update_ema


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
        """Per-sample noise, stored as one int64 seed per sample (``noise_seed``, drawn with
        ``generator``); :meth:`use_extras` draws sample ``i``'s noise maps from its seed
        (:func:`seeded_noise`) for each batch.  Seeds rather than maps: at 128x128 the maps take
        44-87 KB per sample in float16 (one or two per level), 0.4-0.9 GB for the paper's 10000
        distillation samples and 2.2-4.4 GB for its 50000 eval samples; drawing them again costs
        ~2 ms per sample on one CPU core (the normal generator's throughput, the same as drawing
        all maps in one tensor)."""
        return {"noise_seed": torch.randint(0, 2**62, (n,), generator=generator, dtype=torch.int64)}

    def use_extras(self, model: nn.Module, extras: Dict[str, Any] | None, index: slice | torch.Tensor = slice(None)) -> ContextManager:
        """Eval-mode noise of samples ``index`` (a slice or an index tensor), drawn from
        ``extras["noise_seed"]``; ``None``: each layer's fixed buffer, shared by all samples."""
        if extras is None:
            return contextlib.nullcontext()
        if set(extras) != {"noise_seed"}:
            raise ValueError(f"stylegan extra inputs must be {{'noise_seed': tensor}}, got keys {sorted(extras)} "
                             "(eval inputs or distillation set written before per-sample noise seeds? rerun eval_inputs / distill)")
        device = module_device(model)  # drawn on the CPU from each sample's seed (the same on every device), then moved
        return fixed_noise(model, [to_device(t, device) for t in seeded_noise(model, extras["noise_seed"][index])])

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
        backward(loss_d)
        state["opt_d"].step()

        # generator: non-saturating loss
        D.requires_grad_(False)
        loss_g = F.softplus(-D(fake)).mean()
        state["opt_g"].zero_grad(set_to_none=True)
        backward(loss_g)
        state["opt_g"].step()
        D.requires_grad_(True)

        update_ema(state["G_ema"], G, ema_beta(t["ema_beta"], step))
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "r1": r1.detach()}


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
