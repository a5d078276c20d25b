"""Datasets behind one interface.

A prepared dataset is a directory holding ``{split}.npy`` (uint8, NHWC, RGB, square at
the configured resolution) for every split of its kind, plus ``manifest.json``::

    {"name", "kind", "resolution", "splits": {split: n}, "sha256": {split: hex},
     "config": <the cfg it was built from>, "format": 1}

Files are written under temporary names and renamed when complete; the manifest
is written last, so its presence means the directory is complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import torch

from . import offline, real
from ..files import new_temp_path
from .download import sha256_file
from .kinds import FLIP_KINDS, check_kind, flips, is_two_domain, splits_for

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

DATASET_KINDS: dict[str, Callable[[dict, Path], dict]] = {
    "digits": offline.build_digits,
    "horse2zebra-synthetic": offline.build_horse2zebra_synthetic,
    "ffhq": real.build_ffhq,
    "celeba": real.build_celeba,
    "horse2zebra": real.build_horse2zebra,
}

__all__ = ["DATASET_KINDS", "FLIP_KINDS", "prepare", "is_two_domain", "flips", "splits_for", "load_split",
           "to_tensor", "train_batches", "read_manifest"]


def _canonical(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True, default=str)


def read_manifest(out_dir: str | Path) -> dict | None:
    p = Path(out_dir) / MANIFEST
    return json.loads(p.read_text()) if p.exists() else None


def _is_current(manifest: dict | None, name: str, cfg: dict, out_dir: Path) -> bool:
    if not manifest or manifest.get("format") != FORMAT_VERSION:
        return False
    if (manifest.get("name"), manifest.get("kind"), manifest.get("resolution")) != \
            (name, cfg["kind"], int(cfg["resolution"])):
        return False
    if _canonical(manifest.get("config")) != _canonical(cfg):
        return False
    for split, n in manifest.get("splits", {}).items():
        f = out_dir / f"{split}.npy"
        if not f.exists() or np.load(f, mmap_mode="r").shape[0] != n:
            return False
    return set(manifest.get("splits", {})) == set(splits_for(cfg["kind"]))


def _tmp_path(out_dir: Path, name: str) -> Path:
    return new_temp_path(out_dir, f".{name}.", ".tmp")


def _write_split(out_dir: Path, split: str, data, res: int) -> tuple[int, str]:
    """Write one split atomically; ``data`` is an array or has ``shape`` and ``fill(out)``."""
    expected = (res, res, 3)
    if tuple(data.shape[1:]) != expected or (isinstance(data, np.ndarray) and data.dtype != np.uint8):
        raise ValueError(f"split {split}: builder produced {getattr(data, 'dtype', '?')} {tuple(data.shape)}, "
                         f"expected uint8 (N, {res}, {res}, 3)")
    tmp = _tmp_path(out_dir, f"{split}.npy")
    try:
        if isinstance(data, np.ndarray):
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(data))
        else:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=tuple(data.shape))
            data.fill(mm, desc=split)
            mm.flush()
            del mm
        digest = sha256_file(tmp)
        os.replace(tmp, out_dir / f"{split}.npy")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return int(data.shape[0]), digest


def prepare(name: str, cfg: dict, out_dir: str | Path, download_dir: str | Path | None = None) -> dict:
    """Build dataset ``name`` from its params section ``cfg`` into ``out_dir``; returns the manifest.

    Does nothing if ``out_dir`` already holds a complete dataset built from the same
    config. ``download_dir`` (real datasets only, each in ``<download_dir>/<name>``) defaults to
    ``<out_dir>/../downloads``.
    """
    if "kind" not in cfg or "resolution" not in cfg:
        raise ValueError(f"dataset {name!r}: config needs 'kind' and 'resolution', got keys {sorted(cfg)}")
    kind, res = check_kind(cfg["kind"]), int(cfg["resolution"])
    if res < 1:
        raise ValueError(f"dataset {name!r}: resolution must be positive, got {res}")
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if _is_current(manifest, name, cfg, out_dir):
        return manifest

    download_dir = Path(download_dir) if download_dir is not None else out_dir.parent / "downloads"
    splits = DATASET_KINDS[kind](cfg, download_dir / name)  # each dataset its own archive and lock entry
    missing = set(splits_for(kind)) ^ set(splits)
    if missing:
        raise ValueError(f"builder for {kind!r} returned splits {sorted(splits)}, expected {splits_for(kind)}")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # directory is incomplete until rewritten
    manifest = {"name": name, "kind": kind, "resolution": res, "splits": {}, "sha256": {},
                "config": json.loads(_canonical(cfg)), "format": FORMAT_VERSION}
    for split in splits_for(kind):
        manifest["splits"][split], manifest["sha256"][split] = _write_split(out_dir, split, splits[split], res)
    tmp = _tmp_path(out_dir, MANIFEST)
    try:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, out_dir / MANIFEST)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest


def load_split(out_dir: str | Path, split: str) -> np.ndarray:
    """Memory-map ``{split}.npy`` of a prepared dataset (uint8 NHWC)."""
    path = Path(out_dir) / f"{split}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"prepared split file not found: {path} (has the dataset been prepared?)")
    return np.load(path, mmap_mode="r")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC (or a single HWC image) -> float32 NCHW (CHW) in [-1, 1]."""
    x = np.asarray(images)
    if not (x.flags.writeable and x.flags.c_contiguous):  # e.g. a read-only memmap
        x = np.array(x)
    t = torch.from_numpy(x)
    t = t.permute(0, 3, 1, 2) if t.ndim == 4 else t.permute(2, 0, 1)
    return t.float().div_(127.5).sub_(1.0)


class _IndexStream:
    """Endless batches of indices; a fresh permutation each epoch, batches may span epochs.  Its
    position (the permutation and the place in it) is part of a training checkpoint."""

    def __init__(self, n: int, batch_size: int, g: torch.Generator):
        if n == 0:
            raise ValueError("cannot draw batches from an empty split")
        self.n, self.batch_size, self.g = n, batch_size, g
        self.perm: torch.Tensor | None = None  # drawn at the first batch
        self.pos = 0

    def __next__(self) -> np.ndarray:
        if self.perm is None:
            self.perm, self.pos = torch.randperm(self.n, generator=self.g), 0
        take = []
        while sum(len(t) for t in take) < self.batch_size:
            if self.pos == self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.g), 0
            k = min(self.batch_size - sum(len(t) for t in take), self.n - self.pos)
            take.append(self.perm[self.pos:self.pos + k])
            self.pos += k
        return torch.cat(take).numpy()


def _batch(arr: np.ndarray, idx: np.ndarray, g: torch.Generator, flip: bool) -> torch.Tensor:
    order = np.argsort(idx, kind="stable")       # sorted reads are kinder to the memmap
    x = np.empty((len(idx), *arr.shape[1:]), np.uint8)
    x[order] = arr[idx[order]]
    t = to_tensor(x)
    if flip:
        m = torch.rand(len(idx), generator=g) < 0.5
        t[m] = t[m].flip(-1)
    return t


class TrainBatches:
    """Infinite shuffled training batches: {"x": NCHW} or, for two-domain kinds, {"A", "B"}.

    Values are float32 in [-1, 1]; each domain is shuffled independently and reshuffled every
    epoch; ``flip`` applies random horizontal flips (default: the kind's own choice, :func:`flips`;
    ``False`` turns them off for any kind).  ``state_dict``/``load_state_dict`` capture
    where the stream is (its generator, each domain's permutation and position), so a run resumed
    from a checkpoint draws exactly the batches an uninterrupted run would have drawn."""

    def __init__(self, out_dir: str | Path, kind: str, batch_size: int, seed: int, flip: bool | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if flip is None:
            flip = flips(kind)
        elif flip and not flips(kind):
            raise ValueError(f"dataset kind {kind!r}: horizontal flips change what its images show; "
                             f"flipped kinds are {sorted(FLIP_KINDS)}")
        self.keys = {"A": "trainA", "B": "trainB"} if is_two_domain(kind) else {"x": "train"}
        self.g = torch.Generator().manual_seed(int(seed))
        self.flip = flip
        self.arrays = {k: load_split(out_dir, s) for k, s in self.keys.items()}
        self.streams = {k: _IndexStream(len(a), batch_size, self.g) for k, a in self.arrays.items()}

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self) -> Dict[str, torch.Tensor]:
        return {k: _batch(self.arrays[k], next(self.streams[k]), self.g, self.flip) for k in self.keys}

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.g.get_state(),
                "streams": {k: {"perm": s.perm, "pos": s.pos} for k, s in self.streams.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state["streams"]) != set(self.streams):
            raise ValueError(f"data stream state for domains {sorted(state['streams'])}, expected {sorted(self.streams)}")
        self.g.set_state(state["generator"])
        for k, s in state["streams"].items():
            if s["perm"] is not None and len(s["perm"]) != self.streams[k].n:
                raise ValueError(f"data stream state for {len(s['perm'])} images, the split {self.keys[k]} has {self.streams[k].n}")
            self.streams[k].perm, self.streams[k].pos = s["perm"], int(s["pos"])


def train_batches(out_dir: str | Path, kind: str, batch_size: int, seed: int,
                  flip: bool | None = None) -> TrainBatches:
    """Infinite shuffled training batches (see :class:`TrainBatches`)."""
    return TrainBatches(out_dir, kind, batch_size, seed, flip)
