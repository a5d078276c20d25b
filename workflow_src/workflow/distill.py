"""Stages of rules/distill.smk: the distillation set (calibration draws from it) and the seeded
evaluation inputs shared by FP and every quantized variant."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch

from ..device import resolve_device
from ..config import arch_dataset
from ..datasets import prepared
from ..datasets.kinds import is_two_domain
from ..utils import torch_save
from .artifacts import make_arch
from .training import load_generator


def _two_domain(cfg: Dict[str, Any], arch: str) -> bool:
    return is_two_domain(arch_dataset(cfg, arch)["kind"])


def _inputs(cfg: Dict[str, Any], arch: str, data_dir: str, n: int, generator: torch.Generator, split: str) -> torch.Tensor:
    """``n`` generator inputs: seeded latents, or the first ``n`` images of a shuffled source split."""
    a = make_arch(cfg, arch)
    if a.input_kind == "latent":
        return a.sample_inputs(n, generator)
    images = prepared.load_split(data_dir, split)
    idx = torch.randperm(len(images), generator=generator)[:n].sort().values.numpy()
    return prepared.to_tensor(np.asarray(images[idx]))


def distill(cfg: Dict[str, Any], *, arch: str, data: str, fp: str, out: str) -> None:
    """The distillation set: inputs (latents or source images), the arch's per-sample extras
    (``extras``, drawn after the inputs from the same seeded generator, as for the eval inputs;
    StyleGAN: one noise seed per sample) and the FP generator's outputs on both."""
    g = torch.Generator().manual_seed(cfg["seed"] + 101)
    inputs = _inputs(cfg, arch, data, cfg["distill"]["size"], g, "train" + ("A" if _two_domain(cfg, arch) else ""))
    a = make_arch(cfg, arch)
    extras = a.sample_extras(len(inputs), g)
    outputs = a.generate(load_generator(cfg, arch, fp, resolve_device(cfg)), inputs, cfg["distill"]["batch_size"], extras)
    torch_save({"arch": arch, "inputs": inputs, "extras": extras, "outputs": outputs.half()}, out)


def eval_inputs(cfg: Dict[str, Any], *, arch: str, data: str, out: str) -> None:
    """The seeded evaluation inputs shared by FP and every quantized variant (for qFID): latents or
    source images (``inputs``) and the arch's per-sample extras (``extras``, drawn after the
    latents from the same generator; StyleGAN: one noise seed per sample)."""
    two = _two_domain(cfg, arch)
    n = cfg["eval"]["n_samples"]
    if two:
        n = min(n, prepared.read_manifest(data)["splits"][cfg["eval"]["real_split"] + "A"])
    g = torch.Generator().manual_seed(cfg["seed"] + 202)
    inputs = _inputs(cfg, arch, data, n, g, cfg["eval"]["real_split"] + "A" if two else "")
    extras = make_arch(cfg, arch).sample_extras(len(inputs), g)
    torch_save({"arch": arch, "inputs": inputs, "extras": extras}, out)
