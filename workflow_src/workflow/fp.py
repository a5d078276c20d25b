"""Stages of rules/train.smk: the full-precision networks, trained (:mod:`.training`) or imported
from a published checkpoint (:mod:`workflow_src.archs.importers`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..archs.importers import CheckpointMismatch, UNSUPPORTED, rosinality_discriminator, rosinality_generator, select
from ..datasets.download import fetch, sha256_file
from ..device import resolve_device
from ..utils import seed_everything, torch_load, torch_save
from .artifacts import make_arch
from .training import _state_dicts, train


def train_fp(cfg: Dict[str, Any], *, arch: str, data: str, model: str, ckpt: str) -> None:
    """Train ``arch`` on the prepared dataset ``data``; ``ckpt`` is the resumable checkpoint."""
    train(cfg, arch, data, model, ckpt, resolve_device(cfg))


def obtain_checkpoint(cfg: Dict[str, Any], arch: str) -> Path:
    """The published checkpoint of ``archs.<arch>.fp_checkpoint`` at its ``path``: kept when there,
    else downloaded from its ``url`` (checked against its ``sha256``, renamed into place only when it
    matches); without a ``url`` an error says where to put the file."""
    ck, key = cfg["archs"][arch]["fp_checkpoint"], f"archs.{arch}.fp_checkpoint"
    path = Path(ck["path"])
    if path.exists():
        return path
    if not ck.get("url"):
        raise FileNotFoundError(
            f"key '{key}.path' = {str(path)!r}: no such file (relative to the working directory {os.getcwd()!r}). "
            f"Download the published checkpoint by hand and put it there (README: 'Published checkpoints'), set "
            f"'{key}.url' and '{key}.sha256' to have this rule download it, or set '{key}: null' to train {arch} instead.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return fetch(ck["url"], path, ck["sha256"], hint=f" (key '{key}.sha256')")


def import_fp(cfg: Dict[str, Any], *, arch: str, model: str, checkpoint: Optional[str] = None) -> Path:
    """Write ``model`` (the format :func:`.training.train` writes, so every later stage loads it with
    ``load_generator``/``load_discriminator``) from the published checkpoint ``checkpoint``
    described by ``archs.<arch>.fp_checkpoint`` (None: :func:`obtain_checkpoint`)."""
    ck = cfg["archs"][arch]["fp_checkpoint"]
    key = f"archs.{arch}.fp_checkpoint"
    fmt = ck["format"]
    if fmt in UNSUPPORTED:
        raise CheckpointMismatch(f"{key}.format = {fmt!r}: " + UNSUPPORTED[fmt])
    if checkpoint is None:
        checkpoint = obtain_checkpoint(cfg, arch)
    digest = sha256_file(checkpoint)
    if ck.get("sha256") and digest != ck["sha256"]:
        raise CheckpointMismatch(f"{key}.sha256: {str(checkpoint)!r} has sha256 {digest}, expected {ck['sha256']}")
    obj = torch_load(checkpoint)
    seed_everything(cfg["seed"])
    state = make_arch(cfg, arch).init_state(torch.device("cpu"))
    g_entry, d_entry = ck.get("generator"), ck.get("discriminator")
    rosinality_generator(select(obj, g_entry, "generator", f"{key}.generator"), state["G_ema"])
    state["G"].load_state_dict(state["G_ema"].state_dict())
    if d_entry is not None:
        rosinality_discriminator(select(obj, d_entry, "discriminator", f"{key}.discriminator"), state["D"])
    source = {"format": fmt, "file": Path(checkpoint).name, "sha256": digest, "generator": g_entry, "discriminator": d_entry}
    torch_save({"arch": arch, "steps": 0, "state": _state_dicts(state), "imported": source}, model)
    print(f"imported {arch} from {checkpoint} (sha256 {digest}): generator {g_entry or '<file>'}, "
          f"discriminator {d_entry or 'none (QAT unavailable)'}")
    return Path(model)
