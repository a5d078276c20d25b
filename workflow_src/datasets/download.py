"""Fetching, checksum verification and safe extraction of dataset archives and weight files.

Transfers go through maintained libraries.  pooch drives every download: it checks a known hash
(sha256, or md5 where only that is published) and renames the file into place only once verified.
gdown moves the bytes: Google Drive's large-file flow (the "can't scan for viruses" confirmation
page) for drive.google.com links, and for every URL timeouts, a progress bar and retries that
resume with an HTTP range request after a transient network error.

A dataset's archive is named after the dataset (``<download_dir>/<name>.archive``), never after its
URL, and its digest is recorded under the dataset's name in ``checksums.lock.json`` of its own
download directory when no sha256 is configured (later downloads must reproduce it).  A reply that
is not a zip or tar archive (Google Drive's HTML pages, an error page) is an error naming the URL
and is never recorded.  Everything that ends up in the download directory is first written under a
hidden temporary name, so an interrupted run never leaves a file or directory that looks finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import urllib.parse
import zipfile
from pathlib import Path
from typing import Callable, Optional

from ..files import atomic_write_text, new_temp_path

LOCK_NAME = "checksums.lock.json"
ARCHIVE_SUFFIX = ".archive"
CHUNK = 1 << 20
TIMEOUT = (30.0, 120.0)  # seconds: to connect, and between two received bytes
RETRIES = 5              # transient network errors, each resuming where the transfer stopped


class DownloadError(RuntimeError):
    """A transfer failed (network, HTTP status, Google Drive refusing the file)."""


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def file_digest(path: str | Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def read_lock(download_dir: Path) -> dict:
    p = Path(download_dir) / LOCK_NAME
    return json.loads(p.read_text()) if p.exists() else {}


def _record_lock(download_dir: Path, key: str, digest: str) -> None:
    lock = read_lock(download_dir)
    if lock.get(key) != digest:
        lock[key] = digest
        atomic_write_text(Path(download_dir) / LOCK_NAME, json.dumps(lock, indent=2, sort_keys=True) + "\n")


def _lock_hint(from_lock: bool) -> str:
    return f" (recorded in {LOCK_NAME}; delete that entry if the new file is intended)" if from_lock else ""


def archive_format(path: str | Path) -> Optional[str]:
    """'zip' or 'tar' by content (never by name), else None."""
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    return None


def _describe(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(512)
    if re.search(rb"<(!doctype html|html|head|body)\b", head, re.IGNORECASE):
        title = re.search(rb"<title>(.*?)</title>", head, re.IGNORECASE | re.DOTALL)
        return "an HTML page" + (f" ({title.group(1).decode('utf-8', 'replace').strip()!r})" if title else "")
    return f"{len(head)}+ bytes starting {head[:16]!r}" if head else "an empty reply"


def _require_archive(url: str) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        if archive_format(path) is None:
            raise ValueError(f"{url} did not return a zip or tar archive but {_describe(path)}; nothing was "
                             "recorded (a Google Drive quota or permission page? download the file by hand and "
                             "set the dataset's path)")
    return check


def _downloader(url: str, check: Optional[Callable[[Path], None]]) -> Callable:
    """A pooch downloader: gdown moves the bytes into pooch's temporary file, then ``check`` may
    refuse them (pooch then deletes the file, nothing is renamed into place)."""
    def transfer(_url: str, output_file: str, _pooch) -> None:
        import gdown
        import requests

        try:
            gdown.download(url, str(output_file), quiet=False, use_cookies=False, timeout=TIMEOUT, retries=RETRIES)
        except (gdown.exceptions.FileURLRetrievalError, gdown.exceptions.DownloadError,
                requests.exceptions.RequestException) as exc:
            raise DownloadError(f"download of {url} failed: {exc}") from exc
        if check is not None:
            check(Path(output_file))
    return transfer


def fetch(url: str, dest: str | Path, sha256: Optional[str] = None, md5: Optional[str] = None,
          check: Optional[Callable[[Path], None]] = None, hint: str = "") -> Path:
    """Make ``dest`` hold the file at ``url``, verified by ``sha256`` (and ``md5`` where given);
    an existing ``dest`` that matches is kept, one that does not is downloaded again.  ``check``
    may refuse a downloaded file before it is renamed into place; ``hint`` follows a mismatch."""
    import pooch

    dest = Path(dest)
    known = f"sha256:{sha256.lower()}" if sha256 else f"md5:{md5.lower()}" if md5 else None
    try:
        pooch.retrieve(url, known_hash=known, fname=dest.name, path=dest.parent,
                       downloader=_downloader(url, check))
    except ValueError as exc:
        if "hash" not in str(exc):
            raise
        raise ValueError(f"{url} -> {dest}: {exc}{hint}") from None
    if sha256 and md5:
        actual = file_digest(dest, "md5")
        if actual != md5.lower():
            dest.unlink()
            raise ValueError(f"{url} -> {dest}: md5 {actual} differs from the published {md5}")
    os.chmod(dest, 0o666 & ~_umask())  # pooch's temporary file was owner-only
    return dest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def verify_local(path: Path, expected: str | None, download_dir: Path, key: str, md5: str | None = None) -> str:
    """Check a user-supplied archive (never deleted) against ``expected``, the lock entry ``key``
    and ``md5``; returns its sha256."""
    lock = read_lock(download_dir)
    want = expected or lock.get(key)
    actual = sha256_file(path)
    if want and actual != want.lower():
        raise ValueError(f"sha256 mismatch for {path}: expected {want}{_lock_hint(not expected)}, got {actual}")
    if md5 and file_digest(path, "md5") != md5.lower():
        raise ValueError(f"md5 mismatch for {path}: expected the published {md5}, got {file_digest(path, 'md5')}")
    if not expected:
        Path(download_dir).mkdir(parents=True, exist_ok=True)
        _record_lock(download_dir, key, actual)
    return actual


def download(url: str, download_dir: str | Path, key: str, expected: str | None = None,
             md5: str | None = None) -> tuple[Path, str]:
    """Download the archive of dataset ``key`` from ``url`` to ``download_dir/<key>.archive`` and
    verify it; returns (path, sha256).

    With ``expected=None`` the digest of the first download is recorded under ``key`` in
    ``checksums.lock.json`` and later downloads must reproduce it.  A reply that is no archive is
    an error naming ``url``, and is neither kept nor recorded."""
    if urllib.parse.urlparse(url).scheme.lower() not in ("http", "https"):
        raise ValueError(f"cannot download {url!r}: only http(s) URLs are fetched (set the dataset's path for a local file)")
    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    want = (expected or read_lock(download_dir).get(key) or "").lower() or None
    dest = fetch(url, download_dir / f"{key}{ARCHIVE_SUFFIX}", want, md5, check=_require_archive(url),
                 hint=_lock_hint(bool(want) and not expected))
    _require_archive(url)(dest)  # a file left by an older version may be anything
    actual = sha256_file(dest)
    if not expected:
        _record_lock(download_dir, key, actual)
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
    fmt = archive_format(archive)
    if fmt == "zip":
        with zipfile.ZipFile(archive) as zf:
            _validate_zip(archive, zf)
    elif fmt == "tar":
        with tarfile.open(archive) as tf:
            _validate_tar(archive, tf)
    else:
        raise ValueError(f"{archive} is neither a zip nor a tar archive")
    return fmt


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract ``archive`` to ``dest`` (all members checked first; temp dir + rename)."""
    archive, dest = Path(archive), Path(dest)
    if dest.is_dir():
        return dest
    fmt = validate_archive(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_path(dest.parent, f".{dest.name}.", ".extracting", directory=True)
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
    for suffix in (ARCHIVE_SUFFIX, ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def obtain(cfg: dict, download_dir: str | Path) -> Path:
    """Return a directory holding the dataset's extracted files.

    ``download_dir`` is the dataset's own download directory (``downloads/<dataset>``: its name
    names the archive and its lock entry).  ``cfg['path']`` (a local archive or an already
    extracted directory) takes precedence over downloading ``cfg['url']``; ``cfg['sha256']``, else
    the lock, and ``cfg['md5']`` (a published checksum) verify the archive.
    """
    download_dir = Path(download_dir)
    key = download_dir.name
    expected = cfg.get("sha256") or None
    local = cfg.get("path")
    if local:
        src = Path(local).expanduser()
        if src.is_dir():
            return src
        if not src.is_file():
            raise FileNotFoundError(f"configured dataset path does not exist: {src}")
        archive, digest = src, verify_local(src, expected, download_dir, key, cfg.get("md5"))
    else:
        url = cfg.get("url")
        if not url:
            raise ValueError("dataset config needs either 'path' or 'url'")
        archive, digest = download(url, download_dir, key, expected, cfg.get("md5"))
    return safe_extract(archive, download_dir / f"{_archive_stem(archive.name)}-{digest[:12]}")
