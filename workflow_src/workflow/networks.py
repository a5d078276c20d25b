"""Stages that provide the helper networks: the FID feature network (trained offline for the tiny
profile, pytorch-fid's Inception weights for the paper) and QAT's perceptual network (trained
offline, or torchvision's VGG16 weights).  Rules in rules/data.smk and rules/qat.smk."""
from __future__ import annotations

import json

import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List

import torch

from ..device import resolve_device
from ..datasets import prepared
from ..datasets.download import fetch, sha256_file
from ..files import atomic_path
from ..methods import perceptual
from ..quality import fid
from ..quality.featurenet import train_featurenet
from ..utils import torch_save
from . import tracking

FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + fid.INCEPTION_FILE


def _train_domains(data_dirs: List[str]) -> List[torch.Tensor]:
    """Every training split (one per dataset, two for unpaired datasets) as a float tensor."""
    domains = []
    for d in data_dirs:
        manifest = prepared.read_manifest(d)
        for split in manifest["splits"]:
            if split.startswith("train"):
                domains.append(prepared.to_tensor(prepared.load_split(d, split)))
    return domains


def train_features(cfg: Dict[str, Any], *, data: List[str], out: str) -> None:
    """Train the tiny feature network on the training splits of the prepared datasets ``data``."""
    domains = _train_domains(data)
    fcfg = dict(cfg["features"].get("tinycnn", {}))
    with tracking.run("train_features", cfg, {"network": "tinycnn"}, {"features.tinycnn": fcfg, "seed": cfg["seed"]}) as run:
        net = train_featurenet(domains, fcfg, seed=cfg["seed"], device=resolve_device(cfg))
        hparams = {"n_classes": 4 * len(domains), "input_size": net.input_size, "width": fcfg.get("width", 32), "dim": fcfg.get("dim", 64)}
        torch_save({"hparams": hparams, "state_dict": net.state_dict()}, out)
        run.log_params({"hparams": hparams})


def train_perceptual(cfg: Dict[str, Any], *, data: List[str], out: str) -> None:
    """Train the tiny profile's perceptual network on the training splits of ``data``; its pretext
    accuracy (on trained and on held-out images) is saved with it, and a network at chance is
    never written (unless ``perceptual.tinyvgg.refuse_at_chance`` is false)."""
    pcfg = cfg["perceptual"]["tinyvgg"]
    with tracking.run("train_perceptual", cfg, {"network": "tinyvgg"}, {"perceptual.tinyvgg": pcfg, "seed": cfg["seed"]}) as run:
        net, pretext = perceptual.train_tiny_vgg(_train_domains(data), pcfg, seed=cfg["seed"] + 303, device=resolve_device(cfg))
        print("perceptual network pretext:", json.dumps(pretext))
        run.log_metrics({f"pretext.{k}": float(v) for k, v in pretext.items() if isinstance(v, (int, float))})
        if pcfg.get("refuse_at_chance", True):
            perceptual.check_pretext(pretext, out)
        torch_save({"cfg": net.cfg, "state_dict": net.state_dict(), "pretext": pretext}, out)


def fetch_weights(section: Dict[str, Any], key: str, default_url: str, file_name: str, dest: Path,
                  published_sha256: str | None) -> None:
    """Put a published weight file at ``dest``: copied from ``section["path"]`` when set (offline
    compute nodes), else downloaded from ``section["url"]`` (default ``default_url``).  Verified
    by its full sha256: the configured digest, else ``published_sha256`` (the publisher's, pinned
    in code), which must carry the 8-hex-digit sha256 prefix in the published file name
    (``name-<prefix>.pth``, what torch.hub checks).  A configured digest other than the published
    one pins another file on purpose (the test suite's and scripts/gpu-check.sh's random-weight
    stand-ins): it is checked in full and a warning says that scores made with it are not the
    published network's.  ``key`` names the params section in errors."""
    prefix = file_name.rsplit("-", 1)[1].split(".")[0]
    configured = (section.get("sha256") or "").lower() or None
    expected = configured or (published_sha256 or "").lower() or None
    if expected is None:
        raise ValueError(f"{key}.sha256 must be set: no published digest of {file_name} is pinned")
    if configured is None or configured == (published_sha256 or "").lower():
        if not expected.startswith(prefix):
            raise ValueError(f"{key}.sha256 {expected} does not start with {prefix}, the prefix in the published name {file_name}")
    else:
        warnings.warn(f"{key}.sha256 {configured} pins a file other than the published {file_name}: what it computes is not "
                      "the published network's", stacklevel=2)
    if section.get("path"):
        src = Path(section["path"])
        src = src / file_name if src.is_dir() else src
        if not src.exists():
            raise FileNotFoundError(f"{key}.path: {str(src)!r} does not exist")
        with atomic_path(dest, fsync=True) as tmp:
            shutil.copyfile(src, tmp)
            digest = sha256_file(tmp)  # the copy is what is checked, and renamed into place only if it matches
            if digest != expected:
                raise ValueError(f"{str(src)!r} ({key}.path): sha256 {digest} does not match {expected}")
    else:
        fetch(section.get("url") or default_url, dest, expected)


def fetch_inception(cfg: Dict[str, Any], *, out: str) -> None:
    """pytorch-fid's FID Inception weights at ``out/checkpoints/`` (the torch hub layout it loads from)."""
    fetch_weights(cfg["features"].get("inception", {}), "features.inception", FID_WEIGHTS_URL, fid.INCEPTION_FILE,
                  Path(out) / "checkpoints" / fid.INCEPTION_FILE, fid.INCEPTION_SHA256)


def fetch_vgg16(cfg: Dict[str, Any], *, out: str) -> None:
    """torchvision's ImageNet VGG16 weights (the paper profile's perceptual network) at ``out``."""
    fetch_weights(cfg["perceptual"].get("vgg16", {}), "perceptual.vgg16", perceptual.VGG16_URL, perceptual.VGG16_FILE, Path(out),
                  perceptual.VGG16_SHA256)
