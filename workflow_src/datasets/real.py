"""Builders for the real datasets of the paper profile: FFHQ thumbnails, CelebA, horse2zebra.

Each builder obtains the extracted files (``download.obtain``: local ``path`` or
``url`` + ``sha256``) and returns, per split, an :class:`ImageFiles` that decodes
the images straight into the memory-mapped output array.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from .download import obtain

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
Box = tuple[int, int, int, int]


def _center_square(w: int, h: int) -> Box:
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def _center_crop(size: int) -> Callable[[int, int], Box]:
    def box(w: int, h: int) -> Box:
        if w < size or h < size:
            raise ValueError(f"image of size {w}x{h} is smaller than the {size}x{size} crop")
        left, top = (w - size) // 2, (h - size) // 2
        return left, top, left + size, top + size
    return box


def decode_image(path: Path, res: int, crop: Callable[[int, int], Box] = _center_square) -> np.ndarray:
    """Read an image as RGB, crop (default: central square), resize with antialiasing -> uint8 HWC."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow ships with torchvision here
        from skimage.io import imread
        from skimage.transform import resize
        a = imread(path)
        a = np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]
        left, top, right, bottom = crop(a.shape[1], a.shape[0])
        a = resize(a[top:bottom, left:right], (res, res), anti_aliasing=True, preserve_range=True)
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    with Image.open(path) as im:
        im = im.convert("RGB")
        box = crop(*im.size)
        if box != (0, 0, *im.size):
            im = im.crop(box)
        if im.size != (res, res):
            im = im.resize((res, res), Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8)


class ImageFiles:
    """A split that is decoded lazily into a preallocated (memory-mapped) array."""

    def __init__(self, files: list[Path], res: int, crop: Callable[[int, int], Box] = _center_square,
                 workers: int | None = None):
        self.files, self.res, self.crop = list(files), res, crop
        self.workers = workers or min(8, os.cpu_count() or 1)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.res, self.res, 3)

    def fill(self, out: np.ndarray, desc: str = "") -> None:
        decode = lambda p: decode_image(p, self.res, self.crop)  # noqa: E731
        with ThreadPoolExecutor(self.workers) as pool:
            it = pool.map(decode, self.files)  # order preserved -> deterministic output
            for i, img in enumerate(tqdm(it, total=len(self.files), desc=desc, unit="img", disable=None)):
                out[i] = img


def list_images(root: Path) -> list[Path]:
    """Image files under ``root``, sorted by their relative path (hidden and __MACOSX skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__MACOSX"]
        found += [Path(dirpath, f) for f in filenames
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _split_tail(files: list[Path], test_fraction: float) -> tuple[list[Path], list[Path]]:
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_test = int(round(len(files) * test_fraction))
    return files[:len(files) - n_test], files[len(files) - n_test:]


def _limit(files: list[Path], cfg: dict) -> list[Path]:
    m = cfg.get("max_images")
    return files[:int(m)] if m else files


def _require_images(files: list[Path], root: Path, what: str) -> list[Path]:
    if not files:
        raise ValueError(f"no {what} images (png/jpg) found under {root}")
    return files


def build_ffhq(cfg: dict, download_dir: Path) -> dict[str, ImageFiles]:
    root = obtain(cfg, download_dir)
    files = _require_images(list_images(root), root, "FFHQ")
    train, test = _split_tail(files, float(cfg.get("test_fraction", 0.1)))
    res, w = int(cfg["resolution"]), cfg.get("workers")
    return {"train": ImageFiles(_limit(train, cfg), res, workers=w),
            "test": ImageFiles(_limit(test, cfg), res, workers=w)}


def read_celeba_partition(path: str | Path) -> dict[str, int]:
    """list_eval_partition.txt: '<file name> <0|1|2>' per line (train/val/test)."""
    parts = {}
    for ln, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            fields = line.replace(",", " ").split()
            if len(fields) != 2 or fields[1] not in {"0", "1", "2"}:
                if ln == 1:  # tolerate a CSV header such as 'image_id,partition'
                    continue
                raise ValueError(f"{path}:{ln}: expected '<image> <0|1|2>', got {line!r}")
            parts[fields[0]] = int(fields[1])
    return parts


def build_celeba(cfg: dict, download_dir: Path) -> dict[str, ImageFiles]:
    """Aligned CelebA: centre crop (``crop``, default 140 px) then resize.

    With ``partition_file`` the official split is used (0 -> train, 2 -> test;
    the validation partition 1 is left out), otherwise the last ``test_fraction``
    of the sorted file names is the test split.
    """
    root = obtain(cfg, download_dir)
    files = _require_images(list_images(root), root, "CelebA")
    if cfg.get("partition_file"):
        parts = read_celeba_partition(cfg["partition_file"])
        have = {p.name for p in files}
        missing = sorted(set(parts) - have)
        if missing:
            raise ValueError(f"{len(missing)} images listed in {cfg['partition_file']} are missing "
                             f"under {root}, e.g. {missing[:3]}")
        train = [p for p in files if parts.get(p.name) == 0]
        test = [p for p in files if parts.get(p.name) == 2]
    else:
        train, test = _split_tail(files, float(cfg.get("test_fraction", 0.1)))
    res, crop, w = int(cfg["resolution"]), _center_crop(int(cfg.get("crop", 140))), cfg.get("workers")
    return {"train": ImageFiles(_limit(train, cfg), res, crop, w),
            "test": ImageFiles(_limit(test, cfg), res, crop, w)}


def build_horse2zebra(cfg: dict, download_dir: Path) -> dict[str, ImageFiles]:
    root = obtain(cfg, download_dir)
    candidates = [root, *(p.parent for p in sorted(root.rglob("trainA")) if p.is_dir())]
    base = next((d for d in candidates if (d / "trainA").is_dir()), None)
    if base is None:
        raise ValueError(f"no trainA folder found under {root}")
    res, w = int(cfg["resolution"]), cfg.get("workers")
    out = {}
    for split in ("trainA", "trainB", "testA", "testB"):
        if not (base / split).is_dir():
            raise ValueError(f"horse2zebra: missing folder {base / split}")
        files = _require_images(list_images(base / split), base / split, f"horse2zebra {split}")
        out[split] = ImageFiles(_limit(files, cfg), res, workers=w)
    return out
