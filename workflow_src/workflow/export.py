"""The ``export`` stages: FP32 and integer exports of each generator, checked against the
fake-quantized model and timed against FP32 in the same process.

Runtimes (``export.runtimes``):

* ``onnxruntime``: ONNX QDQ file (:mod:`workflow_src.deploy.onnx_qdq`) on onnxruntime's CPU provider;
* ``pt2e-x86``: ``torch.export`` program on ``quantized_decomposed`` ops (:mod:`workflow_src.deploy.pt2`), lowered to
  oneDNN int8 kernels by Inductor's freezing passes with torchao's x86 patterns;
* ``inductor-x86``: that program compiled ahead of time by AOTInductor (:func:`workflow_src.deploy.pt2.compile_package`):
  a package with the generated code built in, compiled once in the job that writes it (its compile
  seconds recorded apart from the latencies) and loaded by every run after.

Files: ``exports/{arch}/fp/b{B}.{onnx,pt2,aoti.pt2}`` and ``exports/{arch}/{variant}/b{B}.{onnx,pt2,aoti.pt2}``, one
per batch size in ``export.batch_sizes`` (and ``exports/{arch}/{variant}/deployable/b{B}.{onnx,aoti.pt2}``, the
deployable scheme's: :func:`export_variant`) (the graphs have a static batch size: see
:func:`workflow_src.deploy.onnx_qdq.trace`).  The summary JSON holds, per runtime: file size and size ratio, median
latency of FP32 and int8 and their ratio per batch size (interleaved runs after warm-up, the
job's thread count), the integer runtime's outputs against the fake-quant model's on the saved
evaluation inputs (max |diff|, share of pixels within one 8-bit output step 2/255, and qFID between
the two), the float-fallback layers, the per-op-type profile (onnxruntime's profiler, or
torch.profiler's: :func:`workflow_src.deploy.pt2.profile`) and (onnxruntime) the session settings
and where its integer kernels first depart from the file (:func:`workflow_src.deploy.runtime.requantization`).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from ..archs.layers import bake
from ..config import Variant
from ..deploy import onnx_qdq, pt2, runtime as ort_rt, scheme
from ..files import write_json
from ..quality import fid
from ..utils import torch_load
from . import tracking
from .artifacts import feature_space, load_distill, load_quantized, make_arch, variant_tags
from .training import load_generator

OUTPUT_STEP = 2.0 / 255.0  # one level of an 8-bit image in [-1, 1]
EXTENSIONS = {"onnxruntime": "onnx", pt2.RUNTIME: "pt2", pt2.INDUCTOR: "aoti.pt2"}


def _example(inputs: torch.Tensor, b: int) -> torch.Tensor:
    """``b`` inputs in their own storage (a slice would carry the whole input tensor into an export)."""
    return inputs[torch.arange(b) % len(inputs)].clone()


def _write(model: torch.nn.Module, runtime: str, example: torch.Tensor, out: Path, quantized: bool) -> Dict[str, Any]:
    if runtime == "onnxruntime":
        if quantized:
            return onnx_qdq.export_qdq(model, example, out)
        onnx_qdq.export_float(model, example, out)
        return {}
    if runtime == pt2.RUNTIME:
        pt2.export_program(pt2.decompose(model) if quantized else model, example, out)
        return {}
    if runtime == pt2.INDUCTOR:  # compiles the pt2e-x86 file beside it (written first) or, without one, a scratch copy
        program = out.with_name(out.name.removesuffix(EXTENSIONS[runtime]) + EXTENSIONS[pt2.RUNTIME])
        with tempfile.TemporaryDirectory(prefix="aoti-src-") as tmp:
            if not program.is_file():
                program = Path(tmp) / program.name
                _write(model, pt2.RUNTIME, example, program, quantized)
            return pt2.compile_package(program, out)
    raise ValueError(f"export.runtimes: unknown runtime {runtime!r}; known: {sorted(EXTENSIONS)}")


@torch.no_grad()
def write_exports(cfg: Dict[str, Any], model: torch.nn.Module, inputs: torch.Tensor, out_dir: str | Path, quantized: bool,
                  runtimes: List[str] | None = None) -> Dict[str, Any]:
    """One file per runtime (``runtimes``, default ``export.runtimes``) and batch size under
    ``out_dir``; returns what each export wrote."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ecfg = cfg["export"]
    model = model.eval()
    if quantized:
        model(_example(inputs, 1))  # reads each quantizer's `calibrated` flag once, outside tracing
    info: Dict[str, Any] = {}
    for rt in sorted(runtimes or ecfg["runtimes"], key=lambda r: r == pt2.INDUCTOR):  # the package compiles the program file
        for b in ecfg["batch_sizes"]:
            info[f"{rt}/b{b}"] = _write(model, rt, _example(inputs, b), out_dir / f"b{b}.{EXTENSIONS[rt]}", quantized)
    return info


def export_fp(cfg: Dict[str, Any], *, arch: str, model: str, inputs: str, out: str) -> None:
    """FP32 exports of ``arch``'s generator: the baselines every variant's exports are timed against."""
    g = bake(load_generator(cfg, arch, model))
    write_exports(cfg, g, torch_load(inputs)["inputs"], out, quantized=False)


class _Runner:
    """Load one exported file and call it on numpy/torch batches."""

    def __init__(self, runtime: str, path: Path, example: torch.Tensor, threads: int, optimized_out: Path | None = None):
        self.runtime, self.path = runtime, path
        if runtime == "onnxruntime":
            self.sess = ort_rt.session(path, threads, optimized_out=optimized_out)
            self.name = self.sess.get_inputs()[0].name
        elif runtime == pt2.INDUCTOR:
            self.module = pt2.load_package(path)
        else:  # the program as loaded is kept: the file's reference evaluation (_reference) reads it too
            self.program = pt2.load_program(path)
            self.module = pt2.lower_x86(self.program, example)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.runtime == "onnxruntime":
            return torch.from_numpy(self.sess.run(None, {self.name: x.numpy()})[0])
        with torch.no_grad():
            return self.module(x)


def _reference(runner: _Runner, threads: int):
    """The exported file of ``runner`` evaluated as written, without a runtime's integer fusions:
    onnxruntime with graph optimisations off (QDQ op by op), or the saved program's own graph
    (decomposed ops), from the program the runner loaded (lowering works on a copy of its graph; a
    second load of the file cost 0.7 s per tiny StyleGAN export job and gave the same outputs).
    A compiled package has no reading but its own: None (its record repeats the runtime's numbers)."""
    if runner.runtime == pt2.INDUCTOR:
        return None
    if runner.runtime == "onnxruntime":
        sess = ort_rt.session(runner.path, threads, optimize=False)
        name = sess.get_inputs()[0].name
        return lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
    module = runner.program.module()
    return lambda x: module(x)


def _run_all(fn, inputs: torch.Tensor, b: int) -> torch.Tensor:
    n = (len(inputs) // b) * b
    return torch.cat([fn(inputs[i:i + b]) for i in range(0, n, b)])


def _kernels(runtime: str, runner: _Runner, optimized: Path | None, written: Dict[str, Any]) -> Dict[str, Any]:
    if runtime == "onnxruntime":
        return {"float_fallbacks": ort_rt.float_fallbacks(optimized)}
    if runtime == pt2.INDUCTOR:  # what the compile lowered (Inductor's counters); the generated code is not a graph to read
        return {"int_kernels": written["int_kernels"]}
    kinds = pt2.kernel_kinds(runner.module)
    return {"int_kernels": {t: len(p) for t, p in sorted(kinds.items()) if t.startswith("onednn.q")},
            "float_fallbacks": {t: sorted(set(p)) for t, p in sorted(kinds.items()) if t in pt2.FLOAT_COMPUTE}}


def _measure(cfg: Dict[str, Any], rt: str, files: Path, fp_dir: Path, inputs: torch.Tensor, check: torch.Tensor, ref: torch.Tensor,
             ref_stats, fs, threads: int, tmp: Path, written: Dict[str, Any]) -> Dict[str, Any]:
    """One runtime's record of the files under ``files`` (one per batch size; ``written``: what
    :func:`write_exports` returned for them): latency against the FP32 file of the same batch size;
    at the largest batch, the outputs on ``check`` against ``ref`` (the fake-quant model's, whose
    feature statistics are ``ref_stats``), the file evaluated as written, the kernels, the runtime's
    profile (onnxruntime's, or torch.profiler's), the sizes; a compiled package's compile seconds."""
    ecfg = cfg["export"]
    ext = EXTENSIONS[rt]
    b_max = max(ecfg["batch_sizes"])
    res: Dict[str, Any] = {"latency_ms": {}, "fp_latency_ms": {}, "latency_ratio": {}}
    for b in ecfg["batch_sizes"]:
        x = _example(inputs, b)
        path = files / f"b{b}.{ext}"
        opt = tmp / f"{files.name}.b{b}.optimized.onnx" if rt == "onnxruntime" and b == b_max else None
        qr = _Runner(rt, path, x, threads, optimized_out=opt)
        fr = _Runner(rt, fp_dir / f"b{b}.{ext}", x, threads)
        lat = ort_rt.latency({"fp": lambda: fr(x), "int": lambda: qr(x)}, ecfg["repeats"], ecfg["warmup"])
        res["latency_ms"][b], res["fp_latency_ms"][b] = 1e3 * lat["int"], 1e3 * lat["fp"]
        res["latency_ratio"][b] = lat["int"] / lat["fp"]
        if b != b_max:
            continue
        y = _run_all(qr, check, b)
        diff = (y - ref).abs()
        res["max_abs_diff"] = float(diff.max())
        res["within_step"] = float((diff <= OUTPUT_STEP + 1e-6).float().mean())
        res["qfid_vs_fakequant"] = fid.frechet_distance(_statistics(cfg, fs, y), ref_stats)
        as_written = _reference(qr, threads)
        fdiff = diff if as_written is None else (_run_all(as_written, check, b) - ref).abs()
        res["file_max_abs_diff"] = float(fdiff.max())
        res["file_within_step"] = float((fdiff <= OUTPUT_STEP + 1e-6).float().mean())
        res.update(_kernels(rt, qr, opt, written[f"{rt}/b{b}"]))
        if rt == "onnxruntime":
            res["requantization"] = ort_rt.requantization(path, check[:b].numpy(), threads)
            rows = ort_rt.profile(path, x.numpy(), threads, ecfg["profile_runs"])
        else:
            rows = pt2.profile(qr.module, x, ecfg["profile_runs"])
        res["profile"] = rows
        res["profile_share"] = ort_rt.summarize_profile(rows)
        size, fp_size = path.stat().st_size, (fp_dir / f"b{b}.{ext}").stat().st_size
        res.update(size_bytes=size, fp_size_bytes=fp_size, size_ratio=size / fp_size, sha256=ort_rt.sha256(path))
    res["runtime"] = ort_rt.runtime_name() if rt == "onnxruntime" else f"{rt}-torch{torch.__version__.split('+')[0]}"
    if rt == pt2.INDUCTOR:
        res["compile_seconds"] = {b: written[f"{rt}/b{b}"]["compile_seconds"] for b in ecfg["batch_sizes"]}
        res["cpu_capability"] = written[f"{rt}/b{b_max}"]["cpu_capability"]
    if rt == "onnxruntime":
        res["session"] = ort_rt.session_settings(threads)  # what every session above ran with
    return res


def _statistics(cfg: Dict[str, Any], fs, images: torch.Tensor):
    return fid.statistics(fs.extract(images.split(cfg["eval"]["batch_size"])))


@torch.no_grad()
def export_variant(cfg: Dict[str, Any], *, arch: str, variant: str, model: str, fp: str, inputs: str, features: str, distill: str,
                   files: str, summary: str) -> None:
    """Integer exports of one variant (``files``), checked against the fake-quant model and timed
    against the FP32 exports ``fp``; the record (``summary``) feeds results.csv and export.md.

    Under each scheme of ``export.schemes`` (:mod:`workflow_src.deploy.scheme`): ``paper``, the
    method's model on every runtime of ``export.runtimes`` (files in ``files``); ``deployable``, its
    requantized copy (output quantizers calibrated on the first ``calibration.images`` inputs of the
    distillation set ``distill``, never on the evaluation inputs) on ``export.deployable_runtimes``
    (onnxruntime, whose integer fusions it is for, and the paper profile's inductor-x86; files in
    ``files/deployable``), with its quality cost: the qFID between its fake-quant outputs and the
    paper model's on the check inputs."""
    model_path, fp_dir, inputs_path, features_path, out_dir, out = model, Path(fp), inputs, features, Path(files), summary
    ecfg = cfg["export"]
    v = Variant.parse(variant)
    q = load_quantized(cfg, arch, model_path)
    widths = onnx_qdq.check_exportable(q)["widths"]  # one, or a mixed-precision variant's several
    inputs = torch_load(inputs_path)["inputs"]
    threads = torch.get_num_threads()
    with tracking.run("export", cfg, variant_tags(arch, v), {"export": ecfg}) as run:
        t0 = time.time()
        written = write_exports(cfg, q, inputs, out_dir, quantized=True)
        export_seconds = time.time() - t0
        check = inputs[: ecfg["check_samples"]]
        b_max = max(ecfg["batch_sizes"])
        ref = _run_all(q, check, b_max)
        fs = feature_space(cfg, features_path)
        ref_stats = _statistics(cfg, fs, ref)
        schemes: Dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="ort-") as tmp:  # onnxruntime's optimised graphs, read for the fallbacks
            results = {rt: _measure(cfg, rt, out_dir, fp_dir, inputs, check, ref, ref_stats, fs, threads, Path(tmp), written) for rt in ecfg["runtimes"]}
            if "deployable" in ecfg["schemes"]:
                schemes["deployable"] = _deployable(cfg, arch, q, inputs, check, distill, out_dir / "deployable", fp_dir, ref_stats, fs, threads, Path(tmp))
        best = min(results, key=lambda r: results[r]["latency_ratio"][b_max])
        summary = {**variant_tags(arch, v), "seed": cfg["seed"], "threads": threads, "cpu_vnni": ort_rt.cpu_has_vnni(), "batch_sizes": ecfg["batch_sizes"], "check_samples": int(len(ref)),
                   "export_seconds": export_seconds, "written": written, "runtimes": results, "best_runtime": best, "schemes": schemes,
                   "weight_storage": f"{onnx_qdq.weight_storage(widths)} in ONNX; int8 bytes in the PT2 program" if 4 in widths else "int8"}
        write_json(out, summary)
        logged = [(rt, res) for rt, res in results.items()] + [(f"{name}.{rt}", sch[rt]) for name, sch in schemes.items() for rt in EXTENSIONS if rt in sch]
        for key, res in logged:
            run.log_metrics({f"{key}.latency_ratio_b{b}": r for b, r in res["latency_ratio"].items()})
            run.log_metrics({f"{key}.size_ratio": res["size_ratio"], f"{key}.within_step": res["within_step"],
                             f"{key}.qfid_vs_fakequant": res["qfid_vs_fakequant"]})
        run.log_metrics({f"{name}.qfid_vs_paper": sch["qfid_vs_paper"] for name, sch in schemes.items()})
        run.log_artifact(out)


def _deployable(cfg: Dict[str, Any], arch: str, q: torch.nn.Module, inputs: torch.Tensor, check: torch.Tensor, distill_path: str,
                out_dir: Path, fp_dir: Path, paper_stats, fs, threads: int, tmp: Path) -> Dict[str, Any]:
    """The ``deployable`` scheme's model of ``q``, its files for ``export.deployable_runtimes`` and
    their records (one per runtime, under its name)."""
    ecfg = cfg["export"]
    b_max = max(ecfg["batch_sizes"])
    d = load_distill(distill_path, arch)
    calib = d["inputs"][: cfg["calibration"]["images"]]
    a = make_arch(cfg, arch)
    t0 = time.time()
    paper_file = out_dir.parent / f"b{b_max}.onnx"  # the paper scheme's, when onnxruntime is one of the runtimes
    dm, layers = scheme.deployable(q, _example(inputs, b_max), lambda m: a.batches(m, calib, cfg["distill"]["batch_size"], d["extras"]),
                                   weight_bits=ecfg["deployable_weight_bits"], exported=paper_file if paper_file.is_file() else None)
    written = write_exports(cfg, dm, inputs, out_dir, quantized=True, runtimes=ecfg["deployable_runtimes"])
    seconds = time.time() - t0
    ref = _run_all(dm, check, b_max)
    stats = _statistics(cfg, fs, ref)
    return {**{rt: _measure(cfg, rt, out_dir, fp_dir, inputs, check, ref, stats, fs, threads, tmp, written) for rt in ecfg["deployable_runtimes"]},
            "qfid_vs_paper": fid.frechet_distance(stats, paper_stats), "requantized_convs": layers,
            "weight_bits": ecfg["deployable_weight_bits"], "calibration_images": int(len(calib)), "seconds": seconds}


def summary_row(path: str | Path) -> Dict[str, Any]:
    """The ``results.csv`` columns of one export summary: the runtime with the lowest int8/FP32
    latency ratio at the largest batch, and each runtime's own ratios."""
    s = json.loads(Path(path).read_text())
    b_max = str(max(s["batch_sizes"]))
    best = s["runtimes"][s["best_runtime"]]
    row = {"arch": s["arch"], "method": s["method"], "per_channel": s["per_channel"], "w_bits": s["w_bits"], "a_bits": s["a_bits"],
           "seed": s["seed"], "runtime": best["runtime"], "size_ratio": best["size_ratio"], "latency_ratio": best["latency_ratio"][b_max],
           "export_within_step": best["within_step"], "export_qfid": best["qfid_vs_fakequant"]}
    b_min = str(min(s["batch_sizes"]))
    row["latency_ratio_b1" if b_min == "1" else f"latency_ratio_b{b_min}"] = best["latency_ratio"][b_min]
    for rt, res in s["runtimes"].items():
        key = rt.split("-")[0]
        row[f"{key}_latency_ratio"] = res["latency_ratio"][b_max]
        row[f"{key}_size_ratio"] = res["size_ratio"]
        if "compile_seconds" in res:
            row[f"{key}_compile_seconds"] = res["compile_seconds"][b_max]
    dep = s.get("schemes", {}).get("deployable")
    if dep:
        r = dep["onnxruntime"]
        row.update(deployable_latency_ratio=r["latency_ratio"][b_max], deployable_size_ratio=r["size_ratio"],
                   deployable_within_step=r["within_step"], deployable_qfid_vs_paper=dep["qfid_vs_paper"])
        for rt in EXTENSIONS:
            if rt != "onnxruntime" and rt in dep:
                key = rt.split("-")[0]
                row.update({f"deployable_{key}_latency_ratio": dep[rt]["latency_ratio"][b_max], f"deployable_{key}_within_step": dep[rt]["within_step"]})
    return row
