"""Fetching, checksum verification and safe extraction of dataset archives.

Everything that ends up in ``download_dir`` is first written under a hidden
temporary name and renamed into place only once it is complete and verified,
so an interrupted run never leaves a file or directory that looks finished.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

LOCK_NAME = "checksums.lock.json"
CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_lock(download_dir: Path) -> dict:
    p = Path(download_dir) / LOCK_NAME
    return json.loads(p.read_text()) if p.exists() else {}


def _record_lock(download_dir: Path, key: str, digest: str) -> None:
    lock = read_lock(download_dir)
    if lock.get(key) != digest:
        lock[key] = digest
        _atomic_write_text(Path(download_dir) / LOCK_NAME, json.dumps(lock, indent=2, sort_keys=True) + "\n")


def _mismatch(path: Path, expected: str, actual: str, from_lock: bool) -> ValueError:
    where = f" (recorded in {LOCK_NAME}; delete that entry if the new file is intended)" if from_lock else ""
    return ValueError(f"sha256 mismatch for {path}: expected {expected}{where}, got {actual}")


def filename_from_url(url: str) -> str:
    name = posixpath.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if not name or name in (".", ".."):
        raise ValueError(f"cannot derive a file name from url {url!r}")
    return name


def verify_local(path: Path, expected: str | None, download_dir: Path) -> str:
    """Check a user-supplied archive (never deleted); returns its digest."""
    lock = read_lock(download_dir)
    want = expected or lock.get(path.name)
    actual = sha256_file(path)
    if want and actual != want.lower():
        raise _mismatch(path, want, actual, from_lock=not expected)
    if not expected:
        Path(download_dir).mkdir(parents=True, exist_ok=True)
        _record_lock(download_dir, path.name, actual)
    return actual


def download(url: str, download_dir: str | Path, expected: str | None = None) -> tuple[Path, str]:
    """Stream ``url`` into ``download_dir`` and verify it; returns (path, sha256).

    With ``expected=None`` the digest of the first download is recorded in
    ``checksums.lock.json`` and later downloads must reproduce it.
    """
    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    name = filename_from_url(url)
    dest = download_dir / name
    lock_digest = read_lock(download_dir).get(name)
    want = (expected or lock_digest or "").lower() or None

    if dest.exists():
        actual = sha256_file(dest)
        if want is None or actual == want:
            if not expected:
                _record_lock(download_dir, name, actual)
            return dest, actual
        log.warning("existing %s does not match %s; downloading again", dest, want)
        dest.unlink()

    fd, tmp_name = tempfile.mkstemp(dir=download_dir, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as resp:
            total = resp.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                      desc=name, disable=None) as bar:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
        actual = h.hexdigest()
        if want and actual != want:
            raise _mismatch(dest, want, actual, from_lock=not expected)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not expected:
        _record_lock(download_dir, name, actual)
    return dest, actual


# ----------------------------------------------------------------------------- extraction

_DRIVE = re.compile(r"^[A-Za-z]:")


def _inside(rel: str) -> bool:
    norm = posixpath.normpath(rel)
    return not (norm == ".." or norm.startswith("../") or norm.startswith("/"))


def _check_name(archive: Path, name: str) -> str:
    rel = name.replace("\\", "/")
    if rel.startswith("/") or _DRIVE.match(rel):
        raise ValueError(f"unsafe member {name!r} in {archive}: absolute path")
    if not _inside(rel):
        raise ValueError(f"unsafe member {name!r} in {archive}: path escapes the destination")
    return rel


def _check_link(archive: Path, name: str, rel: str, target: str, hard: bool) -> None:
    target = target.replace("\\", "/")
    if target.startswith("/") or _DRIVE.match(target):
        raise ValueError(f"unsafe member {name!r} in {archive}: link to absolute path {target!r}")
    # Hard links are relative to the archive root, symlinks to the member's directory.
    joined = target if hard else posixpath.join(posixpath.dirname(rel), target)
    if not _inside(joined):
        raise ValueError(f"unsafe member {name!r} in {archive}: link target {target!r} escapes the destination")


def _validate_zip(archive: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        rel = _check_name(archive, info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            _check_link(archive, info.filename, rel, zf.read(info).decode("utf-8", "replace"), hard=False)


def _validate_tar(archive: Path, tf: tarfile.TarFile) -> None:
    for m in tf.getmembers():
        rel = _check_name(archive, m.name)
        if m.issym() or m.islnk():
            _check_link(archive, m.name, rel, m.linkname, hard=m.islnk())
        elif not (m.isfile() or m.isdir()):
            raise ValueError(f"unsafe member {m.name!r} in {archive}: special file type")


def validate_archive(archive: str | Path) -> str:
    """Raise ValueError if any member would land outside the destination; returns 'zip' or 'tar'."""
    archive = Path(archive)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            _validate_zip(archive, zf)
        return "zip"
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            _validate_tar(archive, tf)
        return "tar"
    raise ValueError(f"{archive} is neither a zip nor a tar archive")


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract ``archive`` to ``dest`` (all members checked first; temp dir + rename)."""
    archive, dest = Path(archive), Path(dest)
    if dest.is_dir():
        return dest
    fmt = validate_archive(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".extracting"))
    try:
        if fmt == "zip":
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tf.extractall(tmp, **kwargs)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # lost a race only if someone else finished it
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _archive_stem(name: str) -> str:
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def obtain(cfg: dict, download_dir: str | Path) -> Path:
    """Return a directory holding the dataset's extracted files.

    ``cfg['path']`` (a local archive or an already extracted directory) takes
    precedence over downloading ``cfg['url']``.
    """
    download_dir = Path(download_dir)
    expected = cfg.get("sha256") or None
    local = cfg.get("path")
    if local:
        src = Path(local).expanduser()
        if src.is_dir():
            return src
        if not src.is_file():
            raise FileNotFoundError(f"configured dataset path does not exist: {src}")
        archive, digest = src, verify_local(src, expected, download_dir)
    else:
        url = cfg.get("url")
        if not url:
            raise ValueError("dataset config needs either 'path' or 'url'")
        archive, digest = download(url, download_dir, expected)
    return safe_extract(archive, download_dir / f"{_archive_stem(archive.name)}-{digest[:12]}")
