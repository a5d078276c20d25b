"""Integer inference against FP32: latency and file size of each runtime's int8 export of a
generator, in one process, printing the ratios (issue 9 target: w8a8 <= 0.5x FP32 latency at batch
8 for StyleGAN and CycleGAN, size <= 0.27x).

Generators are freshly initialised at the chosen profile's sizes (latency does not depend on
trained weights), quantized with vanilla min-max PTQ w8a8 calibrated on a few of their own inputs,
then exported exactly as the workflow's ``export`` rule does (:mod:`workflow_src.deploy`), under each
scheme of ``--schemes`` (:mod:`workflow_src.deploy.scheme`: the paper's, and the deployable one that
requantizes the conv outputs the paper's leaves in float, calibrated on the same inputs, and narrows
8-bit weights to 7 bits).  FP32 and
int8 are timed interleaved on the same runtime with the same thread count.

    python benchmarks/int8_latency.py                                   # tiny profile, every arch
    python benchmarks/int8_latency.py --config params.yaml --config configs/paper.yaml --archs stylegan cyclegan --repeats 5
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workflow_src import config as qcfg  # noqa: E402
from workflow_src.deploy import pt2  # noqa: E402
from workflow_src.deploy import runtime as rt  # noqa: E402
from workflow_src.deploy import scheme  # noqa: E402
from workflow_src.workflow.export import EXTENSIONS, _Runner, write_exports  # noqa: E402
from workflow_src.archs.layers import bake  # noqa: E402
from workflow_src.quant import QuantSpec, quantize_model  # noqa: E402
from workflow_src.quant.transform import calibrate  # noqa: E402
from workflow_src.workflow.artifacts import make_arch  # noqa: E402


def inputs_for(arch, n: int, res: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if arch.input_kind == "latent":
        return arch.sample_inputs(n, g)
    return torch.rand(n, 3, res, res, generator=g) * 2 - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=None)
    ap.add_argument("--archs", nargs="+", default=None)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-channel", action="store_true", default=True)
    ap.add_argument("--schemes", nargs="+", default=list(scheme.SCHEMES), choices=scheme.SCHEMES,
                    help="paper: the method's model as the tables score it; deployable: conv outputs left in float requantized "
                         "(workflow_src/deploy/scheme.py)")
    ap.add_argument("--profile", action="store_true", help="also print each runtime's per-op profile at the largest batch")
    ap.add_argument("--runtimes", nargs="+", default=None, choices=sorted(EXTENSIONS),
                    help="the runtimes to time (default: the config's export.runtimes; the paper profile's include inductor-x86, "
                         "whose compile seconds, int8 and FP32, end its rows)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = qcfg.load(args.config or [str(ROOT / "params.yaml")])
    cfg["export"]["batch_sizes"] = args.batch
    if args.runtimes:
        cfg["export"]["runtimes"] = args.runtimes
    spec = QuantSpec(w_bits=8, a_bits=8, per_channel=args.per_channel)
    print(f"torch {torch.__version__}, {rt.runtime_name()}, threads {args.threads}, profile {cfg['profile']}, w8a8 min-max PTQ "
          f"({'per-channel' if args.per_channel else 'per-tensor'}), median of {args.repeats} interleaved runs")
    print("int share: the runtime's time in integer kernels at the largest batch (onnxruntime's profile; torch.profiler for the others)")
    print(f"{'arch':10} {'scheme':10} {'runtime':12} {'batch':>5} {'fp32 ms':>10} {'int8 ms':>10} {'latency ratio':>14} {'size ratio':>11} {'int share':>10}")
    for name in args.archs or cfg["matrix"]["archs"]:
        arch = make_arch(cfg, name)
        res = cfg["archs"][name]["resolution"]
        g = bake(arch.build_generator().eval())
        x_all = inputs_for(arch, max(8, max(args.batch)), res)
        q = quantize_model(g, spec)
        calibrate(q, x_all.split(4))
        models = {"paper": q}
        if "deployable" in args.schemes:
            models["deployable"], layers = scheme.deployable(q, x_all[:max(args.batch)], x_all.split(4))
            print(f"  {name}: the deployable scheme requantizes {len(layers)} conv outputs")
        with tempfile.TemporaryDirectory() as tmp:
            fp_dir = Path(tmp) / "fp"
            written = {"fp": write_exports(cfg, g, x_all, fp_dir, quantized=False)}
            for kind in args.schemes:
                q_dir = Path(tmp) / kind
                written[kind] = write_exports(cfg, models[kind], x_all, q_dir, quantized=True)
                for runtime in cfg["export"]["runtimes"]:
                    ext = EXTENSIONS[runtime]
                    rows = None
                    if runtime == "onnxruntime":
                        rows = rt.profile(q_dir / f"b{max(args.batch)}.onnx", x_all[:max(args.batch)].numpy(), args.threads, 2)
                    for b in args.batch:
                        x = x_all[:b].clone()
                        fr = _Runner(runtime, fp_dir / f"b{b}.{ext}", x, args.threads)
                        qr = _Runner(runtime, q_dir / f"b{b}.{ext}", x, args.threads)
                        fns = {"fp": lambda: fr(x), "int": lambda: qr(x)}
                        with torch.no_grad():
                            lat = rt.latency(fns, args.repeats, args.warmup)
                        if runtime != "onnxruntime" and b == max(args.batch):  # torch.profiler's view of the program or package
                            rows = pt2.profile(qr.module, x, 2)
                        size = (q_dir / f"b{b}.{ext}").stat().st_size / (fp_dir / f"b{b}.{ext}").stat().st_size
                        share = f"{rt.summarize_profile(rows).get('int', 0.0):10.2f}" if rows and b == max(args.batch) else f"{'-':>10}"
                        compiled = {k: written[k][f"{runtime}/b{b}"].get("compile_seconds") for k in ("fp", kind)}
                        tail = f"  compile s: int8 {compiled[kind]:.1f}, fp32 {compiled['fp']:.1f}" if compiled[kind] is not None else ""
                        print(f"{name:10} {kind:10} {runtime:12} {b:5d} {1e3 * lat['fp']:10.2f} {1e3 * lat['int']:10.2f} "
                              f"{lat['int'] / lat['fp']:14.3f} {size:11.3f} {share}{tail}", flush=True)
                    if args.profile and rows:
                        print(f"  {runtime} profile:", ", ".join(f"{r['op']} ({r['kind']}) {100 * r['share']:.0f}%" for r in rows[:8]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
