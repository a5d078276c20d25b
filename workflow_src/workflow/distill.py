"""Stages of rules/distill.smk: the distillation set (calibration draws from it) and the seeded
evaluation inputs shared by FP and every quantized variant; also the validation inputs of choices
made from data (the quantile sweep), disjoint from both."""
from __future__ import annotations

from typing import Any, Dict, Tuple

from torch import nn

import numpy as np
import torch

from .. import resume
from ..device import resolve_device
from ..config import arch_dataset
from ..datasets import prepared
from ..datasets.kinds import is_two_domain
from ..quality import fid
from ..utils import torch_save
from .artifacts import make_arch, segment_features, segments
from .training import load_generator


def _two_domain(cfg: Dict[str, Any], arch: str) -> bool:
    return is_two_domain(arch_dataset(cfg, arch)["kind"])


DISTILL_SEED, EVAL_SEED, VALIDATION_SEED = 101, 202, 505  # offsets from `seed`: one generator per set


def _inputs(cfg: Dict[str, Any], arch: str, data_dir: str, n: int, generator: torch.Generator, split: str,
            skip: int = 0) -> torch.Tensor:
    """``n`` generator inputs: seeded latents, or images ``skip .. skip + n`` of a shuffled source
    split (sorted by index)."""
    a = make_arch(cfg, arch)
    if a.input_kind == "latent":
        return a.sample_inputs(n, generator)
    images = prepared.load_split(data_dir, split)
    idx = torch.randperm(len(images), generator=generator)[skip:skip + n].sort().values.numpy()
    return prepared.to_tensor(np.asarray(images[idx]))


def _train_split(cfg: Dict[str, Any], arch: str) -> str:
    return "train" + ("A" if _two_domain(cfg, arch) else "")


def distill(cfg: Dict[str, Any], *, arch: str, data: str, fp: str, out: str) -> None:
    """The distillation set: inputs (latents, or source images of the training split less those
    held out for validation, :func:`held_out_images`), the arch's per-sample extras
    (``extras``, drawn after the inputs from the same seeded generator, as for the eval inputs;
    StyleGAN: one noise seed per sample) and the FP generator's outputs on both."""
    g = torch.Generator().manual_seed(cfg["seed"] + DISTILL_SEED)
    n = int(cfg["distill"]["size"])
    if make_arch(cfg, arch).input_kind != "latent":  # never the images held out for validation (the shuffle's last ones)
        n_train = prepared.read_manifest(data)["splits"][_train_split(cfg, arch)]
        n = min(n, n_train - held_out_images(cfg, n_train))
    inputs = _inputs(cfg, arch, data, n, g, _train_split(cfg, arch))
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
    g = torch.Generator().manual_seed(cfg["seed"] + EVAL_SEED)
    inputs = _inputs(cfg, arch, data, n, g, cfg["eval"]["real_split"] + "A" if two else "")
    extras = make_arch(cfg, arch).sample_extras(len(inputs), g)
    torch_save({"arch": arch, "inputs": inputs, "extras": extras}, out)


VALIDATION_SHARE = 5  # image-to-image GANs hold out at most 1/5 of the training split for validation


def held_out_images(cfg: Dict[str, Any], n_train: int) -> int:
    """How many training-split source images an image-to-image GAN holds out for validation:
    ``sweep.validation_samples``, at most a fifth of the split.  They are the last ones of the
    distillation set's shuffle, which never draws them."""
    return min(int(cfg["sweep"]["validation_samples"]), n_train // VALIDATION_SHARE)


def validation_inputs(cfg: Dict[str, Any], arch: str, data: str) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """``(inputs, extras)`` of the validation split that choices made from data are scored on
    (the quantile sweep): never the evaluation inputs, nor the images behind the real statistics
    the report scores.  Latent GANs: ``sweep.validation_samples`` latents and extras from their own
    seeded generator (``seed`` + 505), independent of the distillation (+101) and evaluation (+202)
    draws.  Image-to-image GANs: the training-split source images held out of the distillation set
    (:func:`held_out_images`); the evaluation inputs and real statistics come from the test split."""
    a = make_arch(cfg, arch)
    g = torch.Generator().manual_seed(cfg["seed"] + VALIDATION_SEED)
    if a.input_kind == "latent":
        inputs = a.sample_inputs(int(cfg["sweep"]["validation_samples"]), g)
        return inputs, a.sample_extras(len(inputs), g)
    split = _train_split(cfg, arch)
    n_train = prepared.read_manifest(data)["splits"][split]
    n_val = held_out_images(cfg, n_train)
    if n_val < 1:
        raise ValueError(f"no validation images for {arch}: {data}'s {split!r} split has {n_train} images, too few to hold "
                         f"out a fifth (sweep.validation_samples = {cfg['sweep']['validation_samples']})")
    shuffle = torch.Generator().manual_seed(cfg["seed"] + DISTILL_SEED)  # the distillation set's shuffle: its last n_val
    inputs = _inputs(cfg, arch, data, n_val, shuffle, split, skip=n_train - n_val)
    return inputs, a.sample_extras(len(inputs), g)


class ValidationQFID:
    """qFID against the FP generator ``fp`` on the arch's validation inputs
    (:func:`validation_inputs`), in the feature space ``fs``: the score every choice made from data
    is made on (the quantile sweep, QAT's early stopping).  The FP reference is computed once;
    each call generates and scores one model, a segment of images at a time.  :meth:`score` adds
    the qFID's spread over ``eval.bootstrap`` resamples of the inputs (the FP features resampled in
    pairs, as the evaluation's ``qfid_std``).  ``limit``: score on the first ``limit`` validation
    inputs only (the layer sensitivity's many scores)."""

    def __init__(self, cfg: Dict[str, Any], arch: str, fp: nn.Module, data: str, fs: fid.FeatureSpace, limit: int | None = None):
        self.cfg, self.arch, self.fs = cfg, make_arch(cfg, arch), fs
        self.inputs, self.extras = validation_inputs(cfg, arch, data)
        if limit is not None and limit < len(self.inputs):  # extras hold their samples on dim 0 (GANArch.sample_extras)
            self.extras = {k: x[:limit] for k, x in self.extras.items()} if self.extras else self.extras
            self.inputs = self.inputs[:limit]
        self.fp_features = self.features(fp)
        self.reference = fid.statistics(self.fp_features)

    def features(self, model: nn.Module) -> np.ndarray:
        return np.concatenate([segment_features(self.cfg, self.arch, model, self.inputs, self.extras, self.fs, sl)[0]
                               for sl in segments(self.cfg, len(self.inputs))])

    @property
    def digest(self) -> str:
        """What the scores depend on besides the model: the inputs and the FP reference (a
        resumed job must have been scoring against the same ones)."""
        return resume.tensor_digest(self.inputs, self.extras, torch.from_numpy(self.reference[0]), torch.from_numpy(self.reference[1]))

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        return fid.frechet_distance(fid.statistics(self.features(model)), self.reference)

    @torch.no_grad()
    def score(self, model: nn.Module) -> Dict[str, float]:
        """``{"qfid": ..., "qfid_std": ...}`` of ``model``."""
        feats = self.features(model)
        n_boot = int(self.cfg["eval"].get("bootstrap", 0))
        return {"qfid": fid.frechet_distance(fid.statistics(feats), self.reference),
                "qfid_std": fid.bootstrap_std(feats, self.fp_features, n_boot, self.cfg["seed"] + VALIDATION_SEED) if n_boot > 1 else 0.0}
