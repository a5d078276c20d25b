"""Downloads against a local HTTP server (tests/local_http.py): names per dataset, Google Drive's
confirmation flow, replies that are not archives, resuming after a dropped connection, timeouts,
published checksums, file modes."""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workflow_src.datasets import download
from workflow_src.datasets import prepared as data


def _zip_of_images(path: Path, colour, n: int = 4, size: int = 32, padding: int = 0) -> Path:
    """``n`` plain-colour PNGs in a zip, plus ``padding`` random bytes stored in a non-image member."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        if padding:
            zf.writestr("README.bin", np.random.default_rng(0).bytes(padding))
        for i in range(n):
            png = path.parent / f".{path.stem}-{i}.png"
            Image.new("RGB", (size, size), colour).save(png)
            zf.write(png, f"images/{i:03d}.png")
            png.unlink()
    return path


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _mean_colour(out: Path) -> np.ndarray:
    return np.asarray(data.load_split(out, "train")).reshape(-1, 3).mean(0)


def _no_lock_entries(dl: Path) -> bool:
    return not any(json.loads(p.read_text()) for p in dl.rglob(download.LOCK_NAME))


def test_two_datasets_whose_urls_end_alike_get_their_own_archive_and_lock_entry(tmp_path, http_server):
    """Both Google Drive URLs of the paper config end in ``uc``: named after the URL tail, FFHQ and
    CelebA shared one file and one lock entry, and CelebA was built from the FFHQ archive."""
    red = _zip_of_images(tmp_path / "a" / "uc", (250, 0, 0))
    blue = _zip_of_images(tmp_path / "b" / "uc", (0, 0, 250))
    dl = tmp_path / "downloads"
    ffhq = {"kind": "ffhq", "url": http_server.served(red) + "?id=1", "sha256": None, "resolution": 16, "test_fraction": 0.25}
    celeba = {"kind": "ffhq", "url": http_server.served(blue) + "?id=2", "sha256": None, "resolution": 16, "test_fraction": 0.25}
    data.prepare("ffhq", ffhq, tmp_path / "data" / "ffhq", download_dir=dl)
    data.prepare("celeba", celeba, tmp_path / "data" / "celeba", download_dir=dl)
    assert _mean_colour(tmp_path / "data" / "ffhq")[0] > 240
    assert _mean_colour(tmp_path / "data" / "celeba")[2] > 240, "CelebA built from another dataset's archive"
    assert (dl / "ffhq" / "ffhq.archive").read_bytes() == red.read_bytes()
    assert (dl / "celeba" / "celeba.archive").read_bytes() == blue.read_bytes()
    assert json.loads((dl / "ffhq" / download.LOCK_NAME).read_text()) == {"ffhq": hashlib.sha256(red.read_bytes()).hexdigest()}
    assert json.loads((dl / "celeba" / download.LOCK_NAME).read_text()) == {"celeba": hashlib.sha256(blue.read_bytes()).hexdigest()}


def test_google_drive_confirmation_page_is_followed(tmp_path, http_server, monkeypatch):
    """A large Drive file answers ``uc?id=`` with the "can't scan for viruses" page; gdown submits
    its form and receives the archive, which is what gets recorded and extracted."""
    archive = _zip_of_images(tmp_path / "serve" / "img_align_celeba.zip", (0, 200, 0))
    http_server.reroute_google(monkeypatch)
    url = http_server.drive("0B7EVK8r0v71pZjFTYXZWM3FlRnM", archive)
    cfg = {"kind": "ffhq", "url": url, "sha256": None, "md5": _md5(archive), "resolution": 16, "test_fraction": 0.25}
    dl = tmp_path / "downloads"
    data.prepare("celeba", cfg, tmp_path / "out", download_dir=dl)
    assert _mean_colour(tmp_path / "out")[1] > 190
    assert json.loads((dl / "celeba" / download.LOCK_NAME).read_text()) == {"celeba": hashlib.sha256(archive.read_bytes()).hexdigest()}
    paths = [p for p, _ in http_server.requests_seen]
    assert paths == ["/gdrive/uc", "/gdrive-content/download"], paths  # the page, then its form's target


@pytest.mark.parametrize("source", ["portal", "drive-quota"])
def test_a_reply_that_is_no_archive_is_an_error_naming_the_url_and_never_recorded(tmp_path, http_server, monkeypatch, source):
    """With ``sha256: null`` the first download is trusted and recorded: an HTML page (a portal's
    sign-in page, Drive's quota page) must be refused before that, and named."""
    if source == "portal":
        url = http_server.url("page", "thumbnails128x128.zip")
    else:
        http_server.reroute_google(monkeypatch)
        http_server.quota_ids.add("1tg-Ur7d4vk1T8Bn0pPpUSQPxlPGBlGfv")
        url = "https://drive.google.com/uc?id=1tg-Ur7d4vk1T8Bn0pPpUSQPxlPGBlGfv"
    cfg = {"kind": "ffhq", "url": url, "sha256": None, "resolution": 16}
    dl = tmp_path / "downloads"
    with pytest.raises(Exception) as e:
        data.prepare("ffhq", cfg, tmp_path / "out", download_dir=dl)
    assert url in str(e.value), e.value
    assert ("HTML page" in str(e.value)) if source == "portal" else ("Too many users" in str(e.value))
    assert _no_lock_entries(dl), "a page was recorded as the dataset's checksum"
    assert not (dl / "ffhq" / "ffhq.archive").exists() and not (tmp_path / "out" / "manifest.json").exists()


def test_a_dropped_connection_is_resumed_where_it_stopped(tmp_path, http_server):
    # gdown reads 512 KiB chunks: the server drops the connection after half of 3 MiB, past two chunks
    archive = _zip_of_images(tmp_path / "serve" / "thumbnails128x128.zip", (10, 20, 30), padding=3 << 20)
    cfg = {"kind": "ffhq", "url": http_server.served(archive, "flaky"), "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
           "resolution": 16, "test_fraction": 0.25}
    data.prepare("ffhq", cfg, tmp_path / "out", download_dir=tmp_path / "dl")
    assert (tmp_path / "dl" / "ffhq" / "ffhq.archive").read_bytes() == archive.read_bytes()
    ranges = [r for _, r in http_server.requests_seen]
    assert len(ranges) == 2 and ranges[0] is None, ranges
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))  # the retry continues, it does not start over
    assert 0 < resumed_at <= archive.stat().st_size // 2, ranges


def test_a_stalled_server_times_out(tmp_path, http_server, monkeypatch):
    """A server that sends headers and then nothing: without a timeout the download would hang."""
    archive = _zip_of_images(tmp_path / "serve" / "x.zip", (1, 2, 3))
    monkeypatch.setattr(download, "TIMEOUT", (1.0, 0.5), raising=False)
    monkeypatch.setattr(download, "RETRIES", 1, raising=False)
    http_server.stall_seconds = 3.0
    url = http_server.served(archive, "stall")
    with pytest.raises(Exception, match=r"stall/serve/x.zip failed: .*timed out"):
        data.prepare("x", {"kind": "ffhq", "url": url, "sha256": None, "resolution": 16}, tmp_path / "out",
                     download_dir=tmp_path / "dl")
    assert len(http_server.requests_seen) == 2  # the first try and one retry
    assert _no_lock_entries(tmp_path / "dl")


def test_the_published_md5_is_checked(tmp_path, http_server):
    """CelebA publishes md5s (torchvision's CelebA.file_list): a different file is refused, for a
    download and for a local copy, and nothing is recorded."""
    archive = _zip_of_images(tmp_path / "serve" / "img_align_celeba.zip", (5, 5, 5))
    cfg = {"kind": "ffhq", "url": http_server.served(archive), "sha256": None, "md5": "0" * 32, "resolution": 16}
    dl = tmp_path / "dl"
    with pytest.raises(ValueError, match="0{32}"):
        data.prepare("celeba", cfg, tmp_path / "out", download_dir=dl)
    assert _no_lock_entries(dl) and not (dl / "celeba" / "celeba.archive").exists()
    with pytest.raises(ValueError, match="md5 mismatch"):
        data.prepare("celeba", {**cfg, "path": str(archive)}, tmp_path / "out", download_dir=dl)
    assert _no_lock_entries(dl)
    m = data.prepare("celeba", {**cfg, "md5": _md5(archive), "test_fraction": 0.25}, tmp_path / "out", download_dir=dl)
    assert m["splits"] == {"train": 3, "test": 1}


def test_only_http_urls_are_fetched(tmp_path):
    with pytest.raises(ValueError, match="only http"):
        download.download((tmp_path / "a.zip").as_uri(), tmp_path / "dl" / "a", "a")


def test_downloads_and_extracted_files_follow_the_umask(tmp_path, http_server):
    """mkstemp/mkdtemp (and pooch's temporary file) are owner-only; the final files are not."""
    import os

    archive = _zip_of_images(tmp_path / "serve" / "x.zip", (9, 9, 9))
    old = os.umask(0o022)
    try:
        data.prepare("f", {"kind": "ffhq", "url": http_server.served(archive), "sha256": None, "resolution": 16,
                           "test_fraction": 0.25}, tmp_path / "out", download_dir=tmp_path / "dl")
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "dl" / "f" / "f.archive") == 0o644
    assert mode(tmp_path / "dl" / "f" / download.LOCK_NAME) == 0o644
    extracted = next((tmp_path / "dl" / "f").glob("f-*"))
    assert mode(extracted) == 0o755
    assert mode(tmp_path / "out" / "train.npy") == mode(tmp_path / "out" / "manifest.json") == 0o644
