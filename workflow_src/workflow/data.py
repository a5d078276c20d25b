"""Stages of rules/data.smk: prepared datasets and the real images' feature statistics."""
from __future__ import annotations

from typing import Any, Dict

from ..device import resolve_device
from ..datasets import prepared
from ..quality import fid
from .artifacts import feature_space


def prepare_data(cfg: Dict[str, Any], *, dataset: str, out: str, downloads: str) -> None:
    """Download (sha256-checked) or generate dataset ``dataset`` into ``out``."""
    prepared.prepare(dataset, cfg["datasets"][dataset], out, download_dir=downloads)


def real_stats(cfg: Dict[str, Any], *, dataset: str, split: str, data: str, features: str, out: str) -> None:
    """Mean and covariance of the features of split ``split`` of the prepared dataset ``data``."""
    fs = feature_space(cfg, features, resolve_device(cfg))
    images = prepared.load_split(data, split)
    bs = cfg["eval"]["batch_size"]
    batches = (prepared.to_tensor(images[i : i + bs]) for i in range(0, len(images), bs))
    feats = fs.extract(batches, total=(len(images) + bs - 1) // bs)
    fid.save_stats(out, feats, fs.name)
