"""Small helpers shared by every stage: atomic writes, seeding, threads, checkpoint I/O."""
from __future__ import annotations

import json
import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A killed or failed job therefore never leaves a file that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def append_rows(path: str | Path, rows) -> None:
    """Append dict rows to the CSV at ``path`` (header from the first row when the file is new)."""
    import csv

    if not rows:
        return
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)


def truncate_rows(path: str | Path, column: str, below: int) -> None:
    """Keep only the rows of the CSV at ``path`` whose integer ``column`` is below ``below`` (a
    resumed run drops what a killed run logged after its last checkpoint)."""
    import csv

    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r[column]) < below]
    path.unlink()
    append_rows(path, rows)


def torch_save(obj: Any, path: str | Path) -> None:
    """Save ``obj`` atomically, every tensor moved to the CPU first (results computed on a device
    come back to the host only here)."""
    from .device import to_cpu

    with atomic_path(path) as tmp:
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
