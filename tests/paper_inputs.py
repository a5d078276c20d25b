"""Stand-ins, in the real file formats, for everything the paper profile downloads, and the config
that points the paper profile at them (``configs/paper-smoke.yaml`` is stacked between):

- FFHQ's ``thumbnails128x128.zip`` (``thumbnails128x128/<group>/<id>.png``, 128x128 PNGs);
- CelebA's ``img_align_celeba.zip`` (``img_align_celeba/<id>.jpg``, 178x218 JPEGs);
- ``horse2zebra.zip`` with its ``trainA``/``trainB``/``testA``/``testB`` folders of 256x256 JPEGs;
- rosinality's 128px StyleGAN checkpoint with the published keys (tests/rosinality_layout.py);
- pytorch-fid's FID Inception weight file and torchvision's VGG16 weight file: the real
  architectures with random weights, pinned by their own sha256 in the config.

The images are smooth seeded noise (so the Inception features of two images differ); nothing here
is a real picture or a trained weight, so every score computed from them is meaningless.  Used by
the ``paper`` test (tests/test_paper_smoke.py) and scripts/gpu-check.sh:

    python tests/paper_inputs.py OUT_DIR      # writes the files and OUT_DIR/inputs.yaml
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

# images per folder: enough for every split the smoke config reads (QAT and the sweep hold out a
# fifth of trainA; FID samples configs/paper-smoke.yaml's fid_images)
FFHQ_IMAGES = 24
CELEBA_IMAGES = 24
H2Z_IMAGES = {"trainA": 20, "trainB": 12, "testA": 6, "testB": 6}


def _smooth_image(rng: np.random.Generator, width: int, height: int):
    """A PIL image of seeded low-frequency colour noise with a little fine noise."""
    from PIL import Image

    low = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    fine = rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(low, dtype=np.float64) + fine, 0, 255).astype(np.uint8))


def _zip_images(archive: Path, members: list[tuple[str, int, int]], seed: int) -> Path:
    """``archive`` holding one encoded image per (member name, width, height), written through a
    temporary name."""
    import io

    rng = np.random.default_rng(seed)
    tmp = archive.with_name(archive.name + ".part")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name, w, h in members:
            buf = io.BytesIO()
            img = _smooth_image(rng, w, h)
            if name.endswith(".png"):
                img.save(buf, format="PNG")
            else:
                img.save(buf, format="JPEG", quality=90)
            zf.writestr(name, buf.getvalue())
    tmp.replace(archive)
    return archive


def write_inputs(out: str | Path) -> Path:
    """Write every stand-in under ``out`` and the config ``out/inputs.yaml`` naming them; returns it."""
    import torch
    import torchvision

    from inception_standin import save_random_fid_inception
    from rosinality_layout import write_published_checkpoint
    from workflow_src.datasets.download import sha256_file as _sha256

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ffhq = _zip_images(out / "thumbnails128x128.zip",
                       [(f"thumbnails128x128/{i // 1000:02d}000/{i:05d}.png", 128, 128) for i in range(FFHQ_IMAGES)], seed=1)
    celeba = _zip_images(out / "img_align_celeba.zip",
                         [(f"img_align_celeba/{i + 1:06d}.jpg", 178, 218) for i in range(CELEBA_IMAGES)], seed=2)
    h2z = _zip_images(out / "horse2zebra.zip",
                      [(f"horse2zebra/{split}/n{i:04d}.jpg", 256, 256) for split, n in H2Z_IMAGES.items() for i in range(n)], seed=3)
    checkpoint = out / "stylegan-ffhq-128.model"
    write_published_checkpoint(checkpoint)
    inception = save_random_fid_inception(out / "torchhub")
    torch.manual_seed(4)
    vgg16 = out / "vgg16-standin.pth"
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), vgg16)
    cfg = {
        "datasets": {"ffhq": {"path": str(ffhq), "sha256": _sha256(ffhq)},
                     "celeba": {"path": str(celeba), "sha256": _sha256(celeba), "md5": None},  # not the published md5
                     "horse2zebra": {"path": str(h2z), "sha256": _sha256(h2z)}},
        "archs": {"stylegan": {"fp_checkpoint": {"path": str(checkpoint), "sha256": _sha256(checkpoint)}}},
        "features": {"inception": {"path": str(inception), "sha256": _sha256(inception)}},
        "perceptual": {"vgg16": {"path": str(vgg16), "sha256": _sha256(vgg16)}},
    }
    config = out / "inputs.yaml"
    config.write_text("# written by tests/paper_inputs.py: random stand-ins in the real formats\n" + yaml.safe_dump(cfg, sort_keys=False))
    return config


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for the files and inputs.yaml")
    print(write_inputs(parser.parse_args().out))
