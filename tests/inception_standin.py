"""Test helper: a random-weight stand-in for pytorch-fid's FID Inception weights (the real file
cannot be downloaded here), used by tests/test_fid.py and benchmarks/fid_throughput.py."""
from __future__ import annotations

from pathlib import Path

import pytorch_fid.inception as pi
import torch

from workflow_src.quality.fid import INCEPTION_FILE, _fid_weights


def save_random_fid_inception(root: str | Path, seed: int = 0) -> Path:
    """A random-weight stand-in for pytorch-fid's FID Inception weights, in the torch-hub layout
    both pytorch-fid (``$TORCH_HOME/hub/checkpoints``) and ``fid.load_feature_space`` read
    (``root/checkpoints``).  For tests and benchmarks where the real file cannot be downloaded:
    the same architecture and code path, meaningless features.

    Random convolutions with the default BatchNorm statistics (mean 0, variance 1) shrink the
    activations layer by layer until the pool features are ~1e-8 and every FID ~1e-18, which would
    make any comparison to 1e-3 vacuous; so each BatchNorm's running statistics are set to the batch
    statistics of seeded random images (:func:`_calibrate_batchnorm`), giving O(1) features."""
    root = Path(root)
    torch.manual_seed(seed)
    built = []
    real_build = pi._inception_v3
    pi._inception_v3 = lambda *a, **k: built.append(real_build(*a, **k)) or built[-1]
    try:
        with _fid_weights(lambda: built[-1].state_dict()):  # its own random init
            net = pi.fid_inception_v3()
    finally:
        pi._inception_v3 = real_build
    _calibrate_batchnorm(net, seed)
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    dest = root / "checkpoints" / INCEPTION_FILE
    torch.save(net.state_dict(), dest)
    return dest


@torch.no_grad()
def _calibrate_batchnorm(net: torch.nn.Module, seed: int, n: int = 16) -> None:
    """Running statistics of every BatchNorm := its batch statistics on ``n`` seeded smooth random
    images at 299x299 in [-1, 1] (the input the FID Inception sees), so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed + 1)
    low = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(low, size=(299, 299), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.randn(x.shape, generator=g)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    net.train()
    net(x)
    net.eval()
    for m in bns:
        m.momentum = 0.1
