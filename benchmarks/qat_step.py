"""QAT's overhead: one QAT training step against one FP training step of the same generator.

Both steps are :func:`workflow_src.methods.qat.distill_step` (perceptual content + style loss,
LSGAN adversarial term, one discriminator step) on the same batch, in the same process and thread
count; the FP step trains the float generator, the QAT steps its fake-quantized copy (MA-QAT:
ranges tracked by moving-average quantiles; LSQ-QAT: learned step sizes).  Steps are interleaved
(FP, MA, LSQ, FP, ...) so that machine noise hits all three alike; medians are compared.

    python benchmarks/qat_step.py [--config params.yaml] [--archs stylegan sagan cyclegan] [--steps 30]
    python benchmarks/qat_step.py --config params.yaml --config configs/paper.yaml --archs stylegan --batch 2 --steps 5

Target (issue 5): QAT step <= 1.3x the FP step on CPU for every arch.  Networks are freshly
initialised at the profile's sizes (timing does not depend on trained weights).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workflow_src import config as qcfg  # noqa: E402
from workflow_src.config import Variant  # noqa: E402
from workflow_src.methods.ptq import spec_for  # noqa: E402
from workflow_src.methods.qat import _quant_params, _to_lsq, _weight_params, make_loss, qat_params, set_tracking, distill_step  # noqa: E402
from workflow_src.methods.perceptual import VGG16_CFG, VGGFeatures  # noqa: E402
from workflow_src.quant import calibrate, map_quantizers, quantize_model  # noqa: E402
from workflow_src.workflow.artifacts import make_arch  # noqa: E402


def _opt(params_groups, betas):
    return torch.optim.Adam(params_groups, betas=betas)


def bench_arch(cfg, arch_name: str, steps: int, per_channel: bool, w_bits: int, batch: int | None = None):
    arch = make_arch(cfg, arch_name)
    torch.manual_seed(0)
    state = arch.init_state(torch.device("cpu"))
    G, D = arch.generator(state).eval(), arch.discriminator(state)
    q = qat_params(cfg, arch_name)
    bs = int(batch or q["batch_size"])
    g = torch.Generator().manual_seed(0)
    x = arch.sample_inputs(bs, g) if arch.input_kind == "latent" else torch.rand(bs, 3, arch.resolution, arch.resolution, generator=g) * 2 - 1
    with torch.no_grad():
        y = G(x)
    p = cfg["perceptual"]
    net = VGGFeatures(VGG16_CFG if p["kind"] == "vgg16" else p["tinyvgg"]["layers"])
    loss = make_loss(cfg, q, net)
    w_adv = float(q["loss_weights"].get("adversarial", 0))
    betas = tuple(q["betas"])

    acfg = dict(cfg["archs"][arch_name])
    acfg["quantiles"] = {"activation": {"upper": 0.999, "lower": 0.001}, "weight": {"upper": 0.9999, "lower": 0.0001}}
    spec = spec_for(Variant("lsq-qat", per_channel, w_bits, 8), "quantile", acfg, cfg)
    models = {}
    from workflow_src.archs.layers import bake

    models["fp"] = bake(copy.deepcopy(G)).eval()
    for mode in ("ma-qat", "lsq-qat"):
        qm = quantize_model(G, spec)
        with contextlib.redirect_stderr(io.StringIO()):  # no calibration progress bar in the table
            calibrate(qm, [x])
        if mode == "lsq-qat":
            map_quantizers(qm, _to_lsq)
        else:
            set_tracking(qm, True, q["momentum"])
        models[mode] = qm
    runs = {}
    for name, m in models.items():
        groups = [{"params": _weight_params(m), "lr": 1e-6}]
        if _quant_params(m):
            groups.append({"params": _quant_params(m), "lr": 1e-7})
        runs[name] = (m, copy.deepcopy(D), _opt(groups, betas))
    times = {k: [] for k in runs}
    for i in range(steps + 3):
        for name, (m, d, opt_g) in runs.items():
            opt_d = torch.optim.SGD(d.parameters(), lr=0.0)
            t0 = time.perf_counter()
            distill_step(m, d, x, y, loss, w_adv, opt_g, opt_d)
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=None)
    ap.add_argument("--archs", nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-channel", action="store_true")
    ap.add_argument("--w-bits", type=int, default=4)
    ap.add_argument("--batch", type=int, default=None, help="override qat.batch_size (paper-size models on a CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = qcfg.load(args.config or [ROOT / "params.yaml"])
    archs = args.archs or cfg["matrix"]["archs"]
    print(f"profile {cfg['profile']}, {args.threads} thread(s), {args.steps} timed steps, "
          f"w{args.w_bits}a8 per-{'channel' if args.per_channel else 'tensor'}; median seconds per step")
    print(f"{'arch':10s} {'batch':>5s} {'fp':>9s} {'ma-qat':>9s} {'lsq-qat':>9s} {'ma/fp':>7s} {'lsq/fp':>7s}")
    worst = 0.0
    for a in archs:
        t = bench_arch(cfg, a, args.steps, args.per_channel, args.w_bits, args.batch)
        r_ma, r_lsq = t["ma-qat"] / t["fp"], t["lsq-qat"] / t["fp"]
        worst = max(worst, r_lsq)
        print(f"{a:10s} {args.batch or qat_params(cfg, a)['batch_size']:5d} {t['fp']:9.4f} {t['ma-qat']:9.4f} {t['lsq-qat']:9.4f} {r_ma:7.2f} {r_lsq:7.2f}")
    print(f"worst LSQ-QAT/FP ratio: {worst:.2f} (target <= 1.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
