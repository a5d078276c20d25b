"""Torch-side helpers shared by every stage: checkpoint I/O, seeding, threads, the device."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import atomic_path


def torch_save(obj: Any, path: str | Path) -> None:
    """Save ``obj`` atomically and durably (fsync before the rename), every tensor moved to the CPU
    first (results computed on a device come back to the host only here): checkpoints and models."""
    from .device import to_cpu

    with atomic_path(path, fsync=True) as tmp:
        torch.save(to_cpu(obj), tmp)


def torch_load(path: str | Path) -> Any:
    """Load a checkpoint safely (``weights_only=True``); errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted or foreign file
        raise RuntimeError(f"cannot load checkpoint {str(path)!r}: {exc}") from exc


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(n: int | None) -> None:
    """Use ``n`` intra-op threads (Snakemake's ``{threads}``), one inter-op thread."""
    if n:
        torch.set_num_threads(int(n))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set, or parallel work has started
            pass
