"""Tests for workflow_src.datasets: offline generators, prepared format, real-dataset plumbing.

Real-dataset tests build tiny archives in tmp_path and serve them from a local HTTP server
(tests/local_http.py); tests/test_download.py tests the download paths themselves.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workflow_src.datasets import prepared as data
from workflow_src.datasets import download

DIGITS = {"kind": "digits", "resolution": 16, "seed": 0, "test_fraction": 0.1}
H2Z = {"kind": "horse2zebra-synthetic", "resolution": 32, "seed": 0, "n_train": 40, "n_test": 10}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


def arrays(out: Path, kind: str) -> dict[str, np.ndarray]:
    return {s: np.asarray(data.load_split(out, s)) for s in data.splits_for(kind)}


# ----------------------------------------------------------------------------- offline kinds

@pytest.mark.parametrize("cfg,sizes", [
    (DIGITS, {"train": 1617, "test": 180}),
    ({**DIGITS, "n_train": 2500, "resolution": 24}, {"train": 2500, "test": 180}),
    (H2Z, {"trainA": 40, "trainB": 40, "testA": 10, "testB": 10}),
])
def test_offline_shapes_and_manifest(tmp_path, cfg, sizes):
    m = data.prepare("ds", cfg, tmp_path / "out")
    res = cfg["resolution"]
    assert m["splits"] == sizes and m["kind"] == cfg["kind"] and m["resolution"] == res
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk == m
    for split, n in sizes.items():
        a = data.load_split(tmp_path / "out", split)
        assert a.dtype == np.uint8 and a.shape == (n, res, res, 3)
        assert m["sha256"][split] == sha(tmp_path / "out" / f"{split}.npy")
        assert a.max() - a.min() > 120 and a.std() > 20   # uses the dynamic range
        # colour, not gray: channels differ noticeably
        assert np.abs(a[..., 0].astype(int) - a[..., 1]).mean() > 10
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files


def test_digits_augmented_copies_are_shifted(tmp_path):
    m = data.prepare("d", {**DIGITS, "n_train": 2000}, tmp_path / "d")
    train = np.asarray(data.load_split(tmp_path / "d", "train"))
    assert m["splits"]["train"] == 2000
    # the extra 383 images are not byte copies of any of the originals
    originals = {img.tobytes() for img in train[:1617]}
    assert sum(img.tobytes() in originals for img in train[1617:]) == 0


@pytest.mark.parametrize("cfg", [DIGITS, H2Z])
def test_offline_determinism(tmp_path, cfg):
    for d, seed in (("a", 0), ("b", 0), ("c", 1)):
        data.prepare("a", {**cfg, "seed": seed}, tmp_path / d)
    a, b, c = (arrays(tmp_path / d, cfg["kind"]) for d in "abc")
    for s in a:
        assert np.array_equal(a[s], b[s])
        assert (tmp_path / "a" / f"{s}.npy").read_bytes() == (tmp_path / "b" / f"{s}.npy").read_bytes()
        assert not np.array_equal(a[s], c[s])


def test_prepare_is_idempotent_and_rebuilds_on_config_change(tmp_path):
    out = tmp_path / "out"
    m1 = data.prepare("h", H2Z, out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    m2 = data.prepare("h", dict(H2Z), out)
    assert m2 == m1 and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    m3 = data.prepare("h", {**H2Z, "n_train": 20}, out)
    assert m3["splits"]["trainA"] == 20 and data.load_split(out, "trainA").shape[0] == 20
    # a deleted split file invalidates the manifest
    (out / "testB.npy").unlink()
    data.prepare("h", {**H2Z, "n_train": 20}, out)
    assert data.load_split(out, "testB").shape[0] == 10


def test_synthetic_domains_differ(tmp_path):
    data.prepare("h", {**H2Z, "n_train": 100}, tmp_path)
    A = np.asarray(data.load_split(tmp_path, "trainA")).astype(np.float32)
    B = np.asarray(data.load_split(tmp_path, "trainB")).astype(np.float32)

    def stripe_energy(x):   # mean abs horizontal gradient of luminance
        return np.abs(np.diff(x.mean(-1), axis=2)).mean()

    assert stripe_energy(B) > 1.5 * stripe_energy(A)
    # horses are brown (red > blue); zebras are achromatic, so the red-blue gap shrinks
    assert (A[..., 0] - A[..., 2]).mean() > (B[..., 0] - B[..., 2]).mean() + 5
    # domains are drawn independently (unpaired): the i-th images share no background pixels
    assert (A == B).all(-1).mean() < 0.05


# ----------------------------------------------------------------------------- API edges

def test_unknown_kind_and_helpers(tmp_path):
    with pytest.raises(ValueError, match=r"'nope'.*digits"):
        data.prepare("x", {"kind": "nope", "resolution": 8}, tmp_path)
    with pytest.raises(ValueError, match="nope"):
        data.is_two_domain("nope")
    assert data.is_two_domain("horse2zebra") and not data.is_two_domain("ffhq")
    assert data.splits_for("digits") == ["train", "test"]
    assert data.splits_for("horse2zebra-synthetic") == ["trainA", "trainB", "testA", "testB"]
    assert set(data.DATASET_KINDS) >= {"digits", "horse2zebra-synthetic", "ffhq", "celeba", "horse2zebra"}


def test_load_split_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train\.npy"):
        data.load_split(tmp_path, "train")


def test_to_tensor_range():
    x = np.array([[[[0, 128, 255]]]], dtype=np.uint8)
    t = data.to_tensor(x)
    assert t.shape == (1, 3, 1, 1) and t.dtype == torch.float32
    assert torch.allclose(t.flatten(), torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]), atol=1e-6)


def test_train_batches(tmp_path):
    data.prepare("d", DIGITS, tmp_path / "d")
    it = data.train_batches(tmp_path / "d", "digits", 64, seed=3)
    b = next(it)
    assert set(b) == {"x"} and b["x"].shape == (64, 3, 16, 16) and b["x"].dtype == torch.float32
    assert b["x"].min() >= -1 and b["x"].max() <= 1 and b["x"].min() < -0.5 and b["x"].max() > 0.5
    # same seed -> same stream; different seed -> different
    assert torch.equal(next(data.train_batches(tmp_path / "d", "digits", 64, seed=3))["x"], b["x"])
    assert not torch.equal(next(data.train_batches(tmp_path / "d", "digits", 64, seed=4))["x"], b["x"])

    data.prepare("h", H2Z, tmp_path / "h")
    it = data.train_batches(tmp_path / "h", "horse2zebra-synthetic", 16, seed=0, flip=False)
    train_a = data.to_tensor(np.asarray(data.load_split(tmp_path / "h", "trainA")))
    seen = []
    for _ in range(5):   # 80 draws from 40 images = 2 epochs
        b = next(it)
        assert set(b) == {"A", "B"} and b["A"].shape == b["B"].shape == (16, 3, 32, 32)
        seen.append(b["A"])
    seen = torch.cat(seen)
    # every image appears exactly twice over two epochs, and epochs are ordered differently
    match = (seen[:, None] == train_a[None]).flatten(2).all(-1).int().argmax(1)
    assert torch.bincount(match, minlength=40).tolist() == [2] * 40
    assert not torch.equal(match[:40], match[40:])


def _matches(batch: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per batch image: whether it equals some image of ``images`` exactly."""
    return (batch[:, None] == images[None]).flatten(2).all(-1).any(1)


def test_flips_are_a_property_of_the_dataset_kind(tmp_path):
    """Digits are never mirrored (a mirrored digit is another glyph); faces and horses are."""
    data.prepare("d", DIGITS, tmp_path / "d")
    train = data.to_tensor(np.asarray(data.load_split(tmp_path / "d", "train")))
    it = data.train_batches(tmp_path / "d", "digits", 64, seed=3)
    for _ in range(4):
        assert _matches(next(it)["x"], train).all()  # every image as stored, none mirrored
    assert not data.flips("digits")
    assert all(data.flips(k) for k in ("ffhq", "celeba", "horse2zebra", "horse2zebra-synthetic"))
    with pytest.raises(ValueError, match="'digits'.*flips"):
        next(data.train_batches(tmp_path / "d", "digits", 8, seed=0, flip=True))
    data.prepare("h", H2Z, tmp_path / "h")
    train_a = data.to_tensor(np.asarray(data.load_split(tmp_path / "h", "trainA")))
    a = torch.cat([next(it_h)["A"] for it_h in [data.train_batches(tmp_path / "h", "horse2zebra-synthetic", 16, seed=0)] for _ in range(5)])
    mirrored = _matches(a, train_a.flip(-1)) & ~_matches(a, train_a)
    assert _matches(a, train_a).any() and mirrored.any() and (_matches(a, train_a) | mirrored).all()


# ----------------------------------------------------------------------------- real datasets: fixtures

def _img(path: Path, size: tuple[int, int], colour, inner=None, inner_colour=None):
    im = Image.new("RGB", size, colour)
    if inner:
        im.paste(Image.new("RGB", (inner[2] - inner[0], inner[3] - inner[1]), inner_colour), inner[:2])
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **({"quality": 95, "subsampling": 0} if path.suffix == ".jpg" else {}))


def _zip_dir(src: Path, archive: Path) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(src).as_posix())
    return archive


def ffhq_tree(root: Path, n: int = 10) -> Path:
    for i in range(n):
        _img(root / "thumbnails128x128" / f"{i // 5:05d}" / f"{i:05d}.png", (128, 128), (20 * i, 100, 200))
    return root


@pytest.fixture
def ffhq_zip(tmp_path) -> Path:
    return _zip_dir(ffhq_tree(tmp_path / "src"), tmp_path / "serve" / "thumbnails128x128.zip")


def test_ffhq_download_with_sha(tmp_path, ffhq_zip, http_server):
    cfg = {"kind": "ffhq", "url": http_server.served(ffhq_zip), "sha256": sha(ffhq_zip), "resolution": 32,
           "test_fraction": 0.2}
    dl, out = tmp_path / "dl", tmp_path / "out"
    m = data.prepare("ffhq", cfg, out, download_dir=dl)
    assert m["splits"] == {"train": 8, "test": 2}
    test = data.load_split(out, "test")
    assert test.shape == (2, 32, 32, 3)
    # test split = last files in sorted order, decoded colours intact
    assert np.abs(test.reshape(2, -1, 3).mean(1) - [[160, 100, 200], [180, 100, 200]]).max() < 2
    assert (dl / "ffhq" / "ffhq.archive").read_bytes() == ffhq_zip.read_bytes()  # named after the dataset
    assert not (dl / "ffhq" / download.LOCK_NAME).exists()  # sha given -> no lock entry needed
    assert not [p for p in files_under(dl) if p.name.endswith((".part", ".tmp")) or p.name.startswith("tmp")]
    stamp = (out / "manifest.json").stat().st_mtime_ns
    data.prepare("ffhq", cfg, out, download_dir=dl)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp


def test_real_from_local_archive_and_directory(tmp_path, ffhq_zip):
    base = {"kind": "ffhq", "url": "file:///nonexistent/never-fetched.zip", "sha256": None, "resolution": 16}
    m1 = data.prepare("f", {**base, "path": str(ffhq_zip)}, tmp_path / "o1", download_dir=tmp_path / "dl")
    m2 = data.prepare("f", {**base, "path": str(tmp_path / "src")}, tmp_path / "o2", download_dir=tmp_path / "dl2")
    assert m1["splits"] == m2["splits"] == {"train": 9, "test": 1}
    assert m1["sha256"] == m2["sha256"]                    # same pixels either way
    assert json.loads((tmp_path / "dl" / "f" / download.LOCK_NAME).read_text()) == {"f": sha(ffhq_zip)}
    assert not (tmp_path / "dl2").exists()                 # a directory needs no download dir


def test_corrupted_archive_rejected(tmp_path, ffhq_zip, http_server):
    bad = "0" * 64
    cfg = {"kind": "ffhq", "url": http_server.served(ffhq_zip), "sha256": bad, "resolution": 16}
    dl, out = tmp_path / "dl", tmp_path / "out"
    with pytest.raises(ValueError) as e:
        data.prepare("f", cfg, out, download_dir=dl)
    msg = str(e.value)
    assert "thumbnails128x128.zip" in msg and bad in msg and sha(ffhq_zip) in msg
    assert files_under(dl) == [] and files_under(out) == []
    assert http_server.requests_seen, "the archive was downloaded (and then refused)"
    # same for a local copy given via path:, which must be left untouched
    with pytest.raises(ValueError, match="thumbnails128x128.zip"):
        data.prepare("f", {**cfg, "path": str(ffhq_zip)}, out, download_dir=dl)
    assert ffhq_zip.exists() and files_under(dl) == [] and files_under(out) == []


def test_lock_file_flow(tmp_path, ffhq_zip, http_server):
    cfg = {"kind": "ffhq", "url": http_server.served(ffhq_zip), "sha256": None, "resolution": 16}
    dl = tmp_path / "dl"
    data.prepare("f", cfg, tmp_path / "o1", download_dir=dl)
    good = sha(ffhq_zip)
    assert json.loads((dl / "f" / "checksums.lock.json").read_text()) == {"f": good}
    # the upstream file changes; a fresh download must not match the recorded digest
    (dl / "f" / "f.archive").unlink()
    ffhq_zip.write_bytes(ffhq_zip.read_bytes() + b"tampered")
    before = set(files_under(dl))
    with pytest.raises(ValueError, match=rf"thumbnails128x128\.zip.*{good}.*{sha(ffhq_zip)}"):
        data.prepare("f", cfg, tmp_path / "o2", download_dir=dl)
    assert set(files_under(dl)) == before and not (dl / "f" / "f.archive").exists()
    assert files_under(tmp_path / "o2") == []


def test_celeba_crop_and_partition(tmp_path, http_server):
    src = tmp_path / "src"
    # 178x218 with the centred 140x140 red and the border blue: the crop must keep only red
    for i in range(1, 7):
        _img(src / "img_align_celeba" / f"{i:06d}.jpg", (178, 218), (0, 0, 255), (19, 39, 159, 179), (255, 0, 0))
    archive = _zip_dir(src, tmp_path / "img_align_celeba.zip")
    part = tmp_path / "list_eval_partition.txt"
    part.write_text("".join(f"{i:06d}.jpg {p}\n" for i, p in zip(range(1, 7), [0, 0, 0, 1, 2, 2])))
    cfg = {"kind": "celeba", "url": http_server.served(archive), "sha256": sha(archive), "resolution": 64,
           "partition_file": str(part)}
    m = data.prepare("celeba", cfg, tmp_path / "out", download_dir=tmp_path / "dl")
    assert m["splits"] == {"train": 3, "test": 2}
    x = np.asarray(data.load_split(tmp_path / "out", "train")).astype(int)
    assert x.shape == (3, 64, 64, 3)
    assert (x[..., 0] > x[..., 2] + 50).all()                # no blue border survived the crop
    assert x[:, 8:-8, 8:-8, 0].min() > 220 and x[:, 8:-8, 8:-8, 2].max() < 40
    m = data.prepare("celeba", {**cfg, "partition_file": None, "test_fraction": 0.5}, tmp_path / "o2",
                     download_dir=tmp_path / "dl")
    assert m["splits"] == {"train": 3, "test": 3}


def test_horse2zebra_tar_gz(tmp_path, http_server):
    src = tmp_path / "src"
    counts = {"trainA": 3, "trainB": 2, "testA": 2, "testB": 1}
    for split, n in counts.items():
        for i in range(n):
            _img(src / "horse2zebra" / split / f"n{i}.jpg", (256, 256), (150, 80, 30) if "A" in split else (240,) * 3)
    archive = tmp_path / "horse2zebra.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "horse2zebra", arcname="horse2zebra")
    cfg = {"kind": "horse2zebra", "url": http_server.served(archive), "sha256": sha(archive), "resolution": 32}
    m = data.prepare("h2z", cfg, tmp_path / "out", download_dir=tmp_path / "dl")
    assert m["splits"] == counts
    assert data.load_split(tmp_path / "out", "testB").shape == (1, 32, 32, 3)
    b = next(data.train_batches(tmp_path / "out", "horse2zebra", 4, seed=0))
    assert b["A"].shape == b["B"].shape == (4, 3, 32, 32)


# ----------------------------------------------------------------------------- unsafe archives

def _evil_zip(path: Path, member: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok/a.png", b"fine")
        zf.writestr(zipfile.ZipInfo(member), b"escaped")
    return path


def _evil_tar(path: Path, member: str, link: str | None = None, hard: bool = False) -> Path:
    with tarfile.open(path, "w") as tf:
        ok = tarfile.TarInfo("ok/a.png")
        ok.size = 4
        tf.addfile(ok, io.BytesIO(b"fine"))
        info = tarfile.TarInfo(member)
        if link is None:
            info.size = 7
            tf.addfile(info, io.BytesIO(b"escaped"))
        else:
            info.type, info.linkname = (tarfile.LNKTYPE if hard else tarfile.SYMTYPE), link
            tf.addfile(info)
    return path


@pytest.mark.parametrize("make,why", [
    (lambda p: _evil_zip(p / "evil.zip", "../x"), "escapes"),
    (lambda p: _evil_zip(p / "evil.zip", "/tmp/qgan_bench_abs_x"), "absolute"),
    (lambda p: _evil_zip(p / "evil.zip", "ok/../../x"), "escapes"),
    (lambda p: _evil_tar(p / "evil.tar", "../x"), "escapes"),
    (lambda p: _evil_tar(p / "evil.tar", "/tmp/qgan_bench_abs_x"), "absolute"),
    (lambda p: _evil_tar(p / "evil.tar", "ok/link", link="../../x"), "link target"),
    (lambda p: _evil_tar(p / "evil.tar", "ok/link", link="/etc/passwd"), "link to absolute"),
    (lambda p: _evil_tar(p / "evil.tar", "ok/hard", link="../x", hard=True), "link target"),
], ids=["zip-dotdot", "zip-abs", "zip-nested-dotdot", "tar-dotdot", "tar-abs", "tar-symlink",
        "tar-abs-symlink", "tar-hardlink"])
def test_unsafe_archives_rejected(tmp_path, make, why, http_server):
    (tmp_path / "in").mkdir()
    archive = make(tmp_path / "in")
    dl, out = tmp_path / "dl" / "sub", tmp_path / "out"
    cfg = {"kind": "ffhq", "url": http_server.served(archive), "sha256": sha(archive), "resolution": 16}
    with pytest.raises(ValueError, match=rf"unsafe member .*{why}") as e:
        data.prepare("f", cfg, out, download_dir=dl)
    assert "f.archive" in str(e.value) and ("'ok/" in str(e.value) or "x'" in str(e.value))
    assert files_under(dl) == [dl / "f" / "f.archive"]     # only the verified download itself
    assert not (tmp_path / "dl" / "x").exists() and not (tmp_path / "x").exists()
    assert not Path("/tmp/qgan_bench_abs_x").exists()
    assert files_under(out) == []
    with pytest.raises(ValueError, match="unsafe member"):   # the helper alone, too
        download.safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_internal_links_are_allowed(tmp_path):
    archive = _evil_tar(tmp_path / "ok.tar", "ok/link", link="a.png")
    assert download.validate_archive(archive) == "tar"
    dest = download.safe_extract(archive, tmp_path / "dest")
    assert (dest / "ok" / "link").read_bytes() == b"fine"
