"""Stages of rules/data.smk: prepared datasets and the real images' feature statistics."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..device import resolve_device
from ..datasets import prepared
from ..datasets.kinds import splits_for
from ..quality import fid
from .artifacts import feature_space


def prepare_data(cfg: Dict[str, Any], *, dataset: str, out: str, downloads: str) -> None:
    """Download (sha256-checked) or generate dataset ``dataset`` into ``out``."""
    prepared.prepare(dataset, cfg["datasets"][dataset], out, download_dir=downloads)


FID_SAMPLE_SEED = 707  # offset from `seed`: which real images a `fid_images` sample takes


def real_images(cfg: Dict[str, Any], dataset: str, split: str, data: str) -> Tuple[List[np.ndarray], Optional[np.ndarray]]:
    """The memory-mapped splits behind real-statistics split ``split`` of ``dataset`` and the
    sorted indices into their concatenation that the statistics use (None: every image).
    ``all`` (``allA``/``allB``) is every split of the dataset (of that domain).  The dataset's FID
    split (``datasets.<name>.fid_split``, default ``eval.real_split``) is sampled down to
    ``datasets.<name>.fid_images`` images when set (seeded, without replacement): the paper's
    FID uses 50000 images sampled from FFHQ's and CelebA's whole sets (appendix A.1, A.2)."""
    dcfg = cfg["datasets"][dataset]
    base, domain = (split[:-1], split[-1]) if split[-1] in "AB" else (split, "")
    names = [s for s in splits_for(dcfg["kind"]) if s.endswith(domain) and s[: len(s) - len(domain)] in ("train", "test")] \
        if base == "all" else [split]
    arrays = [prepared.load_split(data, s) for s in names]
    n = sum(len(a) for a in arrays)
    want = dcfg.get("fid_images")
    if want is None or base != dcfg.get("fid_split", cfg["eval"]["real_split"]) or want >= n:
        return arrays, None
    g = torch.Generator().manual_seed(cfg["seed"] + FID_SAMPLE_SEED)
    return arrays, torch.randperm(n, generator=g)[:want].sort().values.numpy()


def real_stats(cfg: Dict[str, Any], *, dataset: str, split: str, data: str, features: str, out: str) -> None:
    """Mean and covariance of the features of the real images of ``split`` (:func:`real_images`)."""
    fs = feature_space(cfg, features, resolve_device(cfg))
    arrays, idx = real_images(cfg, dataset, split, data)
    offsets = np.cumsum([0] + [len(a) for a in arrays])
    picked = np.arange(offsets[-1]) if idx is None else idx
    bs = cfg["eval"]["batch_size"]

    def batch(ids: np.ndarray) -> torch.Tensor:
        parts = [arrays[k][ids[(ids >= offsets[k]) & (ids < offsets[k + 1])] - offsets[k]] for k in range(len(arrays))]
        return prepared.to_tensor(np.concatenate([np.asarray(p) for p in parts]))

    batches = (batch(picked[i: i + bs]) for i in range(0, len(picked), bs))
    feats = fs.extract(batches, total=(len(picked) + bs - 1) // bs)
    fid.save_stats(out, feats, fs.name)
