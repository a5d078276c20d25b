"""The contract every GAN architecture fulfils.

An architecture is a class derived from :class:`GANArch` in its own file of this package, which
declares it to :mod:`workflow_src.registry` with an ``ARCH`` literal (name, class, title, its
``model`` params).  The workflow never special-cases an architecture: it trains through
``init_state``/``train_step``, gets the generator to quantize from ``generator``, and draws
generator inputs from ``sample_inputs``.  Adding an architecture is one file and its test.
"""
from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from typing import Any, ContextManager, Dict, Iterator

import torch
from torch import nn

from ..device import module_device, to_device

class GANArch(ABC):
    """One GAN family.

    ``model_cfg`` is the ``archs.<name>.model`` section of the params, ``train_cfg`` the
    ``archs.<name>.train`` section, ``resolution`` the image side in pixels.  Images everywhere are
    float tensors in [-1, 1], NCHW, 3 channels.

    ``input_kind`` says what the generator consumes:
      * ``"latent"``: a float tensor ``(n, latent_dim)`` drawn by ``sample_inputs``;
      * ``"image"``: an image batch from the source domain of the dataset (CycleGAN).
    """

    name: str = ""  # set from the ARCH literal when the registry loads the class
    input_kind: str = "latent"
    # Where BRECQ's reconstruction blocks come from, in execution order: generator submodule paths,
    # split into blocks by workflow_src.quant.blocks.split_blocks.
    block_containers: tuple = ()

    def __init__(self, model_cfg: Dict[str, Any], train_cfg: Dict[str, Any], resolution: int):
        self.model_cfg = dict(model_cfg)
        self.train_cfg = train_cfg  # read by training alone (a job that only generates reads none of it)
        self.resolution = int(resolution)

    # -- networks ---------------------------------------------------------------------------
    @abstractmethod
    def build_generator(self) -> nn.Module:
        """A freshly initialised generator: ``G(inputs) -> images``."""

    @abstractmethod
    def init_networks(self, device: torch.device) -> Dict[str, nn.Module]:
        """Every network of the GAN, freshly initialised on ``device`` (what loading the trained
        weights needs: no training params are read)."""

    @abstractmethod
    def optimizers(self, nets: Dict[str, nn.Module]) -> Dict[str, torch.optim.Optimizer]:
        """FP training's optimisers of ``nets`` (``archs.<arch>.train``)."""

    def init_state(self, device: torch.device) -> Dict[str, Any]:
        """Everything FP training needs: modules and optimisers, in a dict whose values are
        ``nn.Module`` or ``torch.optim.Optimizer`` (so it can be checkpointed generically with
        ``state_dict``/``load_state_dict``)."""
        nets = self.init_networks(device)
        return {**nets, **self.optimizers(nets)}

    @abstractmethod
    def train_step(self, state: Dict[str, Any], batches: Iterator[Dict[str, torch.Tensor]], step: int) -> Dict[str, torch.Tensor]:
        """One optimisation step on the device of ``state``'s networks; pulls what it needs from
        ``batches`` (dicts of CPU image tensors with the dataset's split keys, e.g. ``{"x": ...}``
        or ``{"A": ..., "B": ...}``, moved to that device) and returns the scalar losses to log as
        detached 0-dim tensors left on the device (reading one is a host sync: the training loop
        reads them once per logging interval, :func:`workflow_src.device.rows_to_host`)."""

    @abstractmethod
    def generator(self, state: Dict[str, Any]) -> nn.Module:
        """The generator that is evaluated and quantized (for CycleGAN: A -> B)."""

    @abstractmethod
    def discriminator(self, state: Dict[str, Any]) -> nn.Module:
        """The discriminator that judges :meth:`generator`'s outputs (QAT's adversarial loss
        starts from it)."""

    # -- inputs -----------------------------------------------------------------------------
    def sample_inputs(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` generator inputs drawn with ``generator`` (latent archs only)."""
        raise NotImplementedError(f"{self.name} takes images as input, not latents")

    # -- extra inputs that evaluation fixes ---------------------------------------------------
    def sample_extras(self, n: int, generator: torch.Generator) -> Dict[str, Any]:
        """Per-sample inputs besides the generator's argument, drawn with ``generator`` for ``n``
        samples and saved beside the eval inputs and the distillation set, so that FP and every
        quantized variant, and calibration, BRECQ and QAT, see exactly the same ones per sample
        (StyleGAN: one noise seed per sample, see :meth:`StyleGAN.sample_extras`).  Tensors have the
        samples on dim 0.  None by default."""
        return {}

    def use_extras(self, model: nn.Module, extras: Dict[str, Any] | None, index: slice | torch.Tensor = slice(None)) -> ContextManager:
        """A context in which ``model`` uses samples ``index`` (a slice or a tensor of sample
        indices) of ``extras`` (as drawn by :meth:`sample_extras`).  ``None``: the model's own
        defaults (FP training; exports)."""
        if extras:
            raise ValueError(f"{self.name} takes no extra inputs, got {sorted(extras)}")
        return contextlib.nullcontext()

    def batches(self, model: nn.Module, inputs: torch.Tensor, batch_size: int, extras: Dict[str, Any] | None = None) -> Iterator[torch.Tensor]:
        """``inputs`` in batches of ``batch_size``; while the caller works on a batch (until it asks
        for the next), ``model`` uses that batch's slice of ``extras`` (:meth:`use_extras`).  This
        is how calibration, BRECQ's captures and generation feed every sample its own extras.  Each
        batch is moved to the model's device."""
        device = module_device(model)
        for start in range(0, len(inputs), batch_size):
            index = slice(start, start + batch_size)
            with self.use_extras(model, extras, index):
                yield to_device(inputs[index], device)

    @torch.no_grad()
    def generate(self, model: nn.Module, inputs: torch.Tensor, batch_size: int, extras: Dict[str, Any] | None = None) -> torch.Tensor:
        """``model`` on ``inputs`` in batches of ``batch_size``, each batch with its slice of
        ``extras`` (see :meth:`use_extras`); inputs go to the model's device batch by batch, and the
        images stay there."""
        return torch.cat([model(x) for x in self.batches(model, inputs, batch_size, extras)])

    # -- display (figures only; never FID) ---------------------------------------------------
    truncation_doc = "no truncation"  # how display() truncates, ``{t}`` the configured value
    def display_inputs(self, n: int, generator: torch.Generator, truncation: float) -> torch.Tensor:
        """Inputs for sample figures; latent archs truncate here or in :meth:`display`."""
        return self.sample_inputs(n, generator)

    @torch.no_grad()
    def display(self, model: nn.Module, inputs: torch.Tensor, truncation: float) -> torch.Tensor:
        """Images for a sample figure (the truncation trick where the arch has one), on the model's device."""
        return model(to_device(inputs, module_device(model)))


class LatentEMAGAN(GANArch):
    """An unconditional latent -> image GAN: one generator and one discriminator, each with Adam,
    and an exponential moving average of the generator (``G_ema``), which is what gets evaluated
    and quantized.  Subclasses set ``latent_dim`` and build the two networks."""

    latent_dim: int

    @abstractmethod
    def build_discriminator(self) -> nn.Module:
        """A freshly initialised discriminator."""

    def init_networks(self, device: torch.device) -> Dict[str, nn.Module]:
        G = self.build_generator().to(device)
        D = self.build_discriminator().to(device)
        return {"G": G, "D": D, "G_ema": copy.deepcopy(G).eval().requires_grad_(False)}

    def optimizers(self, nets: Dict[str, nn.Module]) -> Dict[str, torch.optim.Optimizer]:
        t = self.train_cfg
        betas = tuple(float(b) for b in t["betas"])
        return {"opt_g": torch.optim.Adam(nets["G"].parameters(), lr=float(t["lr_g"]), betas=betas),
                "opt_d": torch.optim.Adam(nets["D"].parameters(), lr=float(t["lr_d"]), betas=betas)}

    def sample_inputs(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator)

    truncation_doc = "latents truncated to |z| <= {t}"

    def display_inputs(self, n: int, generator: torch.Generator, truncation: float) -> torch.Tensor:
        """Latents from a normal truncated to ``|z| <= truncation`` (BigGAN's truncation trick:
        entries outside are redrawn); no truncation when ``truncation >= 10``."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        if truncation < 10:
            for _ in range(100):
                bad = z.abs() > truncation
                if not bad.any():
                    break
                z[bad] = torch.randn(int(bad.sum()), generator=generator)
            z = z.clamp(-truncation, truncation)
        return z

    def generator(self, state: Dict[str, Any]) -> nn.Module:
        return state["G_ema"]

    def discriminator(self, state: Dict[str, Any]) -> nn.Module:
        return state["D"]
