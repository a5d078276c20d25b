"""Feature-extraction throughput for FID: qgan-bench's in-memory path against pytorch-fid's CLI path.

Both use pytorch-fid's FID InceptionV3 with the same weights on the same images, in one process:

* pytorch-fid: ``fid_score.calculate_activation_statistics`` on PNG files (what
  ``python -m pytorch_fid DIR1 DIR2`` runs: decode, ToTensor, DataLoader, resize inside the net);
* qgan-bench: ``FeatureSpace.extract`` on [-1, 1] tensors already in memory (what the workflow does
  with generator outputs: no PNG round trip).

It prints images/s of each, their ratio (issue target: >= 2x) and the FID between two image sets
computed both ways (they must agree).  The two pipelines run in alternation for ``--rounds``
rounds and each keeps its fastest round, so that load from other processes on a shared machine
hits both alike.  A stage breakdown follows: pytorch-fid's PNG decode + DataLoader alone, and its
network (resize inside) on the decoded tensors; nearly all of its time is the network at 299x299,
so the ratio is the speed-up of our network path (BatchNorm folded, channels_last, inference mode).  Without ``--inception`` (a directory holding
``checkpoints/pt_inception-2015-12-05-6726825d.pth``) a random-weight stand-in with the same
architecture is used: timings are the same, FID values meaningless but still comparable.

    python benchmarks/fid_throughput.py [--n 200] [--size 64] [--batch 50] [--threads 2] [--rounds 2] [--inception DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the random Inception stand-in is a test helper

from inception_standin import save_random_fid_inception  # noqa: E402
from workflow_src.quality import fid  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="images per set (two sets)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (Inception resizes to 299)")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="pytorch-fid DataLoader workers")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; each pipeline keeps its fastest")
    ap.add_argument("--inception", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from PIL import Image
    from pytorch_fid.fid_score import calculate_activation_statistics
    from pytorch_fid.inception import InceptionV3

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hub = Path(args.inception) if args.inception else tmp / "hub"
        if not args.inception:
            save_random_fid_inception(hub)
        os.environ["TORCH_HOME"] = str(hub.parent)
        if hub.name != "hub":
            (hub.parent / "hub").symlink_to(hub, target_is_directory=True)
        rng = np.random.default_rng(0)
        sets = []
        a = rng.integers(0, 256, size=(args.n, args.size, args.size, 3), dtype=np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-90, 90, size=a.shape), 0, 255).astype(np.uint8)  # a nonzero distance
        for name, imgs in (("a", a), ("b", b)):
            d = tmp / name
            d.mkdir()
            files = []
            for i, im in enumerate(imgs):
                files.append(str(d / f"{i:05d}.png"))
                Image.fromarray(im).save(files[-1])
            sets.append((imgs, files))

        space = fid.load_feature_space("inception", hub)
        ref_model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()  # pytorch-fid's own construction
        # contiguous NCHW, as generator outputs are (a permuted NHWC view would run the network in
        # channels_last by accident, which the workflow's tensors never did)
        to_t = lambda x: (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1).contiguous()

        def ours(imgs):
            return fid.statistics(space.extract(to_t(imgs).split(args.batch)))

        def theirs(files):
            return calculate_activation_statistics(files, ref_model, batch_size=args.batch, dims=2048, device="cpu", num_workers=args.workers)

        ours(sets[0][0][: args.batch])  # warm-up (oneDNN primitives), both pipelines
        theirs(sets[0][1][: args.batch])
        pipelines = (("pytorch-fid (PNG files)", theirs, 1), ("qgan-bench (in memory)", ours, 0))
        times = {label: float("inf") for label, _, _ in pipelines}
        stats = {}
        for _ in range(max(1, args.rounds)):
            for label, fn, key in pipelines:
                t0 = time.perf_counter()
                stats[label] = [fn(s[key]) for s in sets]
                times[label] = min(times[label], time.perf_counter() - t0)
        print(f"{2 * args.n} images of {args.size}x{args.size}, batch {args.batch}, {args.threads} thread(s), "
              f"best of {max(1, args.rounds)} round(s), weights: {'FID Inception' if args.inception else 'random stand-in'}")
        fids = []
        for label, t in times.items():
            fids.append(fid.frechet_distance(*stats[label]))
            print(f"  {label:26s} {2 * args.n / t:8.1f} images/s   FID(a, b) = {fids[-1]:.6f}")
        (l1, t1), (l2, t2) = times.items()
        print(f"ratio qgan-bench / pytorch-fid: {t1 / t2:.2f}x (target >= 2x); FID relative difference {abs(fids[1] - fids[0]) / max(abs(fids[0]), 1e-12):.1e}")

        # where pytorch-fid's time goes: decoding vs its network
        import torchvision.transforms as TF
        from pytorch_fid.fid_score import ImagePathDataset

        loader = lambda files: torch.utils.data.DataLoader(ImagePathDataset(files, transforms=TF.ToTensor()), batch_size=args.batch,
                                                           num_workers=args.workers)
        t0 = time.perf_counter()
        decoded = [torch.cat(list(loader(s[1]))) for s in sets]
        t_decode = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            for x in decoded:
                for b in x.split(args.batch):
                    ref_model(b)
        t_net = time.perf_counter() - t0
        print(f"  pytorch-fid stages: PNG decode + ToTensor + DataLoader {2 * args.n / t_decode:8.1f} images/s ({t_decode:.2f} s), "
              f"network incl. resize {2 * args.n / t_net:.1f} images/s ({t_net:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
