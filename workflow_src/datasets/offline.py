"""Offline stand-in datasets built from data that ships with scikit-learn / scikit-image.

``digits``: sklearn's 8x8 handwritten digits, upscaled and colourised (face stand-in).
``horse2zebra-synthetic``: skimage's horse silhouette pasted on grass, brown-textured
(domain A) or striped (domain B) - an unpaired image-to-image stand-in.

All randomness comes from ``numpy.random.default_rng`` seeded by the config, and the
resampling uses deterministic CPU torch ops, so a given config gives identical bytes.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# Saturated colours for digit strokes; backgrounds are dark versions of a different entry.
_PALETTE = np.array([
    [0.95, 0.25, 0.20], [0.98, 0.60, 0.15], [0.95, 0.90, 0.25], [0.45, 0.90, 0.25],
    [0.20, 0.85, 0.70], [0.25, 0.65, 0.98], [0.45, 0.35, 0.95], [0.85, 0.35, 0.90],
    [0.98, 0.55, 0.70], [0.90, 0.90, 0.90],
], dtype=np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """float NHWC in [0, 1] -> uint8."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _unit_grid(res: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (align_corners=False convention), each (res, res)."""
    c = ((np.arange(res, dtype=np.float32) + 0.5) / res) * 2.0 - 1.0
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return xx, yy


def _sample(src: np.ndarray, xin: np.ndarray, yin: np.ndarray) -> np.ndarray:
    """Bilinearly sample one 2-D image at N sets of (res, res) normalised coordinates.

    All grids are stacked along the height axis so a single grid_sample call
    serves the whole batch without copying ``src`` N times.
    """
    n, res, _ = xin.shape
    grid = torch.from_numpy(np.stack([xin, yin], axis=-1).reshape(1, n * res, res, 2))
    inp = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32))[None, None]
    out = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(n, res, res).numpy()


def _area_resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(h, w), mode="area")[0, 0].numpy()


# ----------------------------------------------------------------------------- digits

def build_digits(cfg: dict, download_dir=None) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    res = int(cfg["resolution"])
    seed = int(cfg.get("seed", 0))
    test_fraction = float(cfg.get("test_fraction", 0.1))
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"digits: test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng([seed, 8])

    digits = load_digits().images.astype(np.float32) / 16.0          # (1797, 8, 8) in [0, 1]
    order = rng.permutation(len(digits))
    n_test = int(round(test_fraction * len(digits)))
    test_idx, train_idx = order[:n_test], order[n_test:]
    n_train = int(cfg.get("n_train") or len(train_idx))
    if n_train <= len(train_idx):
        train_idx, n_extra = train_idx[:n_train], 0
    else:
        n_extra = n_train - len(train_idx)
        train_idx = np.concatenate([train_idx, rng.choice(train_idx, n_extra)])

    src = torch.from_numpy(digits[np.concatenate([train_idx, test_idx])])[:, None]
    up = F.interpolate(src, size=(res, res), mode="bilinear", align_corners=False,
                       antialias=res < 8)[:, 0].clamp_(0, 1).numpy()

    # Augmented copies: shift by up to one source pixel, never (0, 0).
    if n_extra:
        m = max(1, res // 8)
        shifts = rng.integers(-m, m + 1, size=(n_extra, 2))
        zero = (shifts == 0).all(axis=1)
        shifts[zero, 1] = rng.choice([-m, m], size=int(zero.sum()))
        padded = np.pad(up[len(train_idx) - n_extra:len(train_idx)], ((0, 0), (m, m), (m, m)))
        for dy, dx in np.unique(shifts, axis=0):
            sel = np.flatnonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))
            up[len(train_idx) - n_extra + sel] = padded[sel, m + dy:m + dy + res, m + dx:m + dx + res]

    # Colourise: stroke colour is a diagonal-ish gradient between two palette colours,
    # background a dark tint of a third colour.
    n, p = len(up), len(_PALETTE)
    i1, i2 = rng.integers(p, size=n), rng.integers(p, size=n)
    ib = (i1 + rng.integers(1, p, size=n)) % p
    theta = rng.uniform(0, 2 * math.pi, size=n).astype(np.float32)
    xx, yy = _unit_grid(res)
    t = 0.5 + 0.35 * (np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy)
    t = t[..., None]
    fg = _PALETTE[i1][:, None, None] * (1 - t) + _PALETTE[i2][:, None, None] * t
    bg = (0.05 + 0.22 * _PALETTE[ib])[:, None, None]
    m = up[..., None]
    img = _to_uint8(bg * (1 - m) + fg * m)
    return {"train": img[:len(train_idx)], "test": img[len(train_idx):]}


# ----------------------------------------------------------------------------- horse2zebra-synthetic

def _lowfreq_noise(rng: np.random.Generator, n: int, res: int, cells: int = 4) -> np.ndarray:
    coarse = torch.from_numpy(rng.random((n, 1, cells, cells), dtype=np.float32))
    return F.interpolate(coarse, size=(res, res), mode="bicubic", align_corners=False)[:, 0].clamp_(0, 1).numpy()


def _render_domain(rng: np.random.Generator, n: int, res: int, domain: str,
                   horse: np.ndarray, grass: np.ndarray) -> np.ndarray:
    xx, yy = _unit_grid(res)
    xx, yy = xx[None], yy[None]
    col = lambda v: v.astype(np.float32)[:, None, None]  # noqa: E731  (n,) -> (n, 1, 1)

    # Horse placement: width fraction s, centre (cx, cy), rotation r, horizontal flip f.
    aspect = horse.shape[0] / horse.shape[1]
    s = rng.uniform(0.6, 0.9, n)
    cx = rng.uniform(-1, 1, n) * (1 - s) * 0.9
    cy = rng.uniform(-1, 1, n) * (1 - s * aspect) * 0.9
    r = np.deg2rad(rng.uniform(-10, 10, n))
    f = rng.choice([-1.0, 1.0], n)
    dx, dy = xx - col(cx), yy - col(cy)
    xin = col(f) * (col(np.cos(r)) * dx + col(np.sin(r)) * dy) / col(s)
    yin = (-col(np.sin(r)) * dx + col(np.cos(r)) * dy) / col(s * aspect)
    mask = _sample(horse, xin, yin)[..., None]

    # Background: a random (flipped) crop of the grass texture, tinted green.
    c = rng.uniform(0.25, 0.5, n)
    gx, gy = rng.uniform(-1, 1, n) * (1 - c), rng.uniform(-1, 1, n) * (1 - c)
    gf = rng.choice([-1.0, 1.0], n)
    g = _sample(grass, col(gf * c) * xx + col(gx), col(c) * yy + col(gy))[..., None]
    green = np.array([0.22, 0.50, 0.14], np.float32) + rng.uniform(-0.05, 0.05, (n, 3)).astype(np.float32)
    bg = green[:, None, None] * (0.5 + 0.8 * g)

    if domain == "A":   # smooth brown coat
        brown = np.array([0.48, 0.29, 0.13], np.float32) + rng.uniform(-0.06, 0.06, (n, 3)).astype(np.float32)
        fg = brown[:, None, None] * (0.75 + 0.5 * _lowfreq_noise(rng, n, res))[..., None]
    else:               # black/white stripes, angle and frequency jittered
        ang = rng.uniform(-0.5, 0.5, n)
        freq = rng.uniform(3.0, 5.0, n) / (2 * s)         # 3-5 stripes across the horse
        phase = rng.uniform(0, 2 * math.pi, n)
        u = col(np.cos(ang)) * xx + col(np.sin(ang)) * yy
        v = 0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * math.pi * col(freq) * u + col(phase)))
        fg = (0.06 + 0.88 * v)[..., None] * np.array([1.0, 0.98, 0.95], np.float32)
    return _to_uint8(bg * (1 - mask) + fg * mask)


def build_horse2zebra_synthetic(cfg: dict, download_dir=None) -> dict[str, np.ndarray]:
    import skimage.data

    res = int(cfg["resolution"])
    seed = int(cfg.get("seed", 0))
    n_train, n_test = int(cfg.get("n_train", 1000)), int(cfg.get("n_test", 200))
    # Pre-shrink sources so bilinear sampling is not badly aliased at small resolutions.
    horse = (~skimage.data.horse()).astype(np.float32)
    hw = min(horse.shape[1], 2 * res)
    horse = _area_resize(horse, max(1, round(hw * horse.shape[0] / horse.shape[1])), hw)
    grass = skimage.data.grass().astype(np.float32) / 255.0
    gs = min(grass.shape[0], 4 * res)
    grass = _area_resize(grass, gs, gs)

    out = {}
    for k, domain in enumerate("AB"):
        rng = np.random.default_rng([seed, 0x42, k])
        imgs = _render_domain(rng, n_train + n_test, res, domain, horse, grass)
        out[f"train{domain}"], out[f"test{domain}"] = imgs[:n_train], imgs[n_train:]
    return out
