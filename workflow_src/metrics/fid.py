"""FID and qFID: features from a named feature space, statistics, and pytorch-fid's distance.

A :class:`FeatureSpace` maps [-1, 1] image batches to feature vectors.  Two exist:
``tinycnn`` (the tiny profile's self-trained network, :mod:`.featurenet`) and ``inception``
(pytorch-fid's FID InceptionV3, 2048-d pool features, weights read from a local file).  The Frechet
distance is always ``pytorch_fid.fid_score.calculate_frechet_distance``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ..utils import atomic_path, torch_load

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


@dataclass
class FeatureSpace:
    name: str  # appears in every FID column header / feature_space column
    dim: int
    fn: Callable[[torch.Tensor], torch.Tensor]

    @torch.no_grad()
    def extract(self, batches: Iterable[torch.Tensor], total: int | None = None) -> np.ndarray:
        feats = [self.fn(b.float()).double().cpu().numpy() for b in tqdm(batches, total=total, desc=f"features[{self.name}]", unit="batch", leave=False)]
        return np.concatenate(feats, axis=0)


def load_feature_space(kind: str, path: str | Path, device: torch.device | None = None) -> FeatureSpace:
    """``kind`` ``tinycnn``: ``path`` is the trained network file.  ``inception``: ``path`` is the
    directory holding pytorch-fid's weight file ``pt_inception-2015-12-05-6726825d.pth``."""
    device = device or torch.device("cpu")
    if kind == "tinycnn":
        from .featurenet import TinyFeatureNet

        ckpt = torch_load(path)
        net = TinyFeatureNet(**ckpt["hparams"])
        net.load_state_dict(ckpt["state_dict"])
        net.eval().to(device)
        return FeatureSpace(f"tinycnn-{ckpt['hparams']['dim']}d", ckpt["hparams"]["dim"], lambda x: net.features(x.to(device)))
    if kind == "inception":
        from pytorch_fid.inception import InceptionV3

        weights = Path(path) / "checkpoints" / INCEPTION_FILE
        if not weights.exists():
            raise FileNotFoundError(f"FID Inception weights {str(weights)!r} not found; run the fetch_inception rule or set features.inception.path")
        old = torch.hub.get_dir()
        torch.hub.set_dir(str(Path(path)))  # pytorch-fid loads from the hub cache: no network when present
        try:
            net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], normalize_input=True).eval().to(device)
        finally:
            torch.hub.set_dir(old)

        def fn(x: torch.Tensor) -> torch.Tensor:
            return net(((x + 1) / 2).clamp(0, 1).to(device))[0].flatten(1)

        return FeatureSpace("inception-2048d", 2048, fn)
    raise ValueError(f"features.kind = {kind!r}: known feature spaces are 'tinycnn' and 'inception'")


def save_random_fid_inception(root: str | Path, seed: int = 0) -> Path:
    """A random-weight stand-in for pytorch-fid's FID Inception weights, in the torch-hub layout
    both pytorch-fid (``$TORCH_HOME/hub/checkpoints``) and :func:`load_feature_space` read
    (``root/checkpoints``).  For tests and benchmarks where the real file cannot be downloaded:
    the same architecture and code path, meaningless features."""
    import pytorch_fid.inception as pi

    root = Path(root)
    torch.manual_seed(seed)
    built = []
    real_build, real_loader = pi._inception_v3, pi.load_state_dict_from_url
    pi._inception_v3 = lambda *a, **k: built.append(real_build(*a, **k)) or built[-1]
    pi.load_state_dict_from_url = lambda *a, **k: built[-1].state_dict()  # its own random init
    try:
        net = pi.fid_inception_v3()
    finally:
        pi._inception_v3, pi.load_state_dict_from_url = real_build, real_loader
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    dest = root / "checkpoints" / INCEPTION_FILE
    torch.save(net.state_dict(), dest)
    return dest


def statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and covariance as pytorch-fid computes them."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors, got shape {features.shape}")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet_distance(stats_a: Tuple[np.ndarray, np.ndarray], stats_b: Tuple[np.ndarray, np.ndarray]) -> float:
    from pytorch_fid.fid_score import calculate_frechet_distance

    return float(calculate_frechet_distance(stats_a[0], stats_a[1], stats_b[0], stats_b[1]))


def save_stats(path: str | Path, features: np.ndarray, feature_space: str, keep_features: bool = False) -> None:
    """Mean and covariance of ``features`` (and, with ``keep_features``, the features themselves,
    float32: the paired bootstrap of qFID resamples them)."""
    mu, sigma = statistics(features)
    extra = {"features": features.astype(np.float32)} if keep_features else {}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, mu=mu, sigma=sigma, n=features.shape[0], feature_space=feature_space, **extra)


def load_features(path: str | Path) -> np.ndarray:
    with np.load(path) as f:
        if "features" not in f:
            raise ValueError(f"{str(path)!r} holds statistics only, no features (rerun evaluate_fp)")
        return f["features"].astype(np.float64)


def bootstrap_std(features: np.ndarray, reference: Tuple[np.ndarray, np.ndarray] | np.ndarray, n_boot: int, seed: int) -> float:
    """Standard deviation of the Frechet distance over ``n_boot`` bootstrap resamples (with
    replacement, same size) of the generated set ``features``.  ``reference`` is either fixed
    statistics (FID against real images) or features paired row by row with ``features`` (qFID:
    the FP generator on the same inputs), resampled with the same indices."""
    if n_boot < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    n = features.shape[0]
    paired = isinstance(reference, np.ndarray)
    if paired and reference.shape != features.shape:
        raise ValueError(f"paired features differ in shape: {features.shape} vs {reference.shape}")
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        ref = statistics(reference[idx]) if paired else reference
        values.append(frechet_distance(statistics(features[idx]), ref))
    return float(np.std(values, ddof=1))


def load_stats(path: str | Path, feature_space: str | None = None) -> Tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"statistics file {str(path)!r} does not exist")
    with np.load(path) as f:
        if feature_space is not None and str(f["feature_space"]) != feature_space:
            raise ValueError(f"{str(path)!r} holds {str(f['feature_space'])} statistics, expected {feature_space}")
        return f["mu"], f["sigma"]
