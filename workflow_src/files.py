"""Files written atomically (temp name + rename), JSON and CSV rows.  No torch: config and the
Snakefile's parse use it too."""
from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def new_temp_path(dir: str | Path, prefix: str, suffix: str, directory: bool = False) -> Path:
    """Create a fresh, uniquely named empty file (or ``directory``) in ``dir`` whose permissions
    follow the umask like any ``open``/``mkdir`` (``tempfile.mkstemp``/``mkdtemp`` make them
    owner-only, which the final rename would carry over to every output)."""
    dir = Path(dir)
    for _ in range(100):
        path = dir / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            if directory:
                path.mkdir(mode=0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {str(dir)!r}")


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a directory's) data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A killed or failed job therefore never leaves a file that looks complete.  With ``fsync`` the
    data reach the disk before the rename and the rename before returning (checkpoints: a power
    loss must not leave a complete-looking file with missing blocks)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = new_temp_path(path.parent, f".{path.name}.", ".tmp")
    try:
        yield tmp_path
        if fsync:
            fsync_path(tmp_path)
        os.replace(tmp_path, path)
        if fsync:
            fsync_path(path.parent)
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
    resumed run drops what a killed run logged after its last checkpoint).  A last line without its
    line end is a row torn by a kill mid-write and is dropped whatever it holds; the file is
    rewritten atomically, so a second kill cannot lose the rows kept."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="") as fh:
        text = fh.read()
    text = text[:text.rfind("\n") + 1]  # a torn last line, if any, goes
    rows = [r for r in csv.DictReader(io.StringIO(text, newline=""))
            if None not in r.values() and int(r[column]) < below]
    with atomic_path(path) as tmp:
        append_rows(tmp, rows)


def copy_atomic(src: str | Path, dest: str | Path) -> None:
    """Copy ``src`` to ``dest`` under a temporary name, renamed into place when complete."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
