"""Running exported generators on onnxruntime's CPU provider: loading (checked), latency, the
per-layer profile, and which layers stay in float.

onnxruntime turns a ``DequantizeLinear -> op -> QuantizeLinear`` group into one integer kernel
(``QLinearConv``, ``QLinearMul``, ``QLinearAdd``, ...) only when the op's output is quantized again.
An op whose output stays float (a convolution followed by instance norm, say) keeps running in float
on dequantized inputs: :func:`float_fallbacks` names those layers from the graph onnxruntime actually
runs, and :func:`profile` measures how the time splits between integer and float kernels.
"""
from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

# Kernels that compute on integers (onnxruntime CPU, default and com.microsoft domains).
INT_KERNELS = {
    "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearLeakyRelu", "QLinearSigmoid",
    "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax", "QLinearConvTranspose",
    "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearReduceMean",
    "QLinearWhere", "NhwcQLinearConv",
}
# Float kernels that a full int8 deployment would run on integers (what the report must name).
FLOAT_COMPUTE = {
    "Conv", "FusedConv", "NchwcConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul",
    "InstanceNormalization", "BatchNormalization", "Softmax", "Add", "Mul", "Sum", "Concat", "Resize", "Upsample",
}
# Data movement between domains: not compute, but time.
QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}

RUNTIME = "onnxruntime"
X64_QUANT_PRECISION = "session.x64quantprecision"
# X64_QUANT_PRECISION converts each int8 weight and its zero point to uint8 under a name derived
# from the initializer's, and fails ("Attempt to replace the existing tensor") on an initializer
# two weights share: the files give every weight its own zero point (onnx_qdq._own_zero_points),
# and ConstantSharing, which would merge those equal zero vectors again, is off (it only saves the
# memory of duplicate small constants).
DISABLED_OPTIMIZERS = ["ConstantSharing"]


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (AVX512-VNNI or AVX-VNNI: int8 dot products into int32).  Without
    it, u8s8 int8 kernels (MLAS, oneDNN) add pairs of u8*s8 products in saturating int16."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_vnni", "avx_vnni"} & set(flags.split()))


class ExportFileError(RuntimeError):
    """An export file that is missing, corrupted or not the one the metadata describes."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def runtime_name() -> str:
    import onnxruntime as ort

    return f"{RUNTIME}-{ort.__version__}-cpu"


def check_file(path: str | Path, expected_sha256: str | None = None) -> None:
    """Raise :class:`ExportFileError` naming ``path`` unless it is a valid ONNX model (and, when
    given, has the expected sha256)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportFileError(f"export file {str(path)!r} does not exist")
    if expected_sha256 and sha256(path) != expected_sha256:
        raise ExportFileError(f"export file {str(path)!r}: sha256 {sha256(path)[:12]}... differs from the recorded {expected_sha256[:12]}... (corrupted or replaced)")
    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except Exception as e:  # onnx raises DecodeError, ValidationError, ...: one clear message
        raise ExportFileError(f"export file {str(path)!r} is not a valid ONNX model: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None


def session_settings(threads: int, optimize: bool = True) -> Dict[str, object]:
    """The onnxruntime session settings every export job runs with (and records beside its
    latencies): every graph optimisation on, ``threads`` intra-op threads and one inter-op thread
    (the same thread budget as PyTorch with ``torch.set_num_threads``), sequential execution, the
    exact int8 kernels of ``session.x64quantprecision`` and :data:`DISABLED_OPTIMIZERS`.
    ``optimize=False``: the file op by op as written (the reference semantics of QDQ)."""
    # On x86 CPUs without VNNI, MLAS's u8s8 kernels add pairs of u8*s8 products in saturating int16
    # (vpmaddubsw): measured on such a CPU, QLinearConv outputs were off by up to 35 steps.  This
    # option makes onnxruntime run those ops on u8u8 kernels (exact); on VNNI CPUs it changes nothing.
    return {"graph_optimization_level": "ORT_ENABLE_ALL" if optimize else "ORT_DISABLE_ALL", "intra_op_num_threads": int(threads),
            "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL", "config": {X64_QUANT_PRECISION: "1"},
            "disabled_optimizers": list(DISABLED_OPTIMIZERS), "providers": ["CPUExecutionProvider"]}


def session(path: str | Path, threads: int, optimized_out: str | Path | None = None, profile_prefix: str | None = None,
            expected_sha256: str | None = None, optimize: bool = True, check: bool = True):
    """An onnxruntime CPU session with :func:`session_settings` (``check=False``: a file derived
    here from one :func:`check_file` passed, such as :func:`requantization`'s probe)."""
    import onnxruntime as ort

    if check:
        check_file(path, expected_sha256)
    settings = session_settings(threads, optimize)
    so = ort.SessionOptions()
    so.intra_op_num_threads = settings["intra_op_num_threads"]
    so.inter_op_num_threads = settings["inter_op_num_threads"]
    so.execution_mode = getattr(ort.ExecutionMode, settings["execution_mode"])
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings["graph_optimization_level"])
    so.log_severity_level = 3
    for key, value in settings["config"].items():
        so.add_session_config_entry(key, value)
    if optimized_out:
        so.optimized_model_filepath = str(optimized_out)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), so, providers=settings["providers"], disabled_optimizers=settings["disabled_optimizers"])


def run(sess, x: np.ndarray, batch: int) -> np.ndarray:
    """Outputs for ``x`` in chunks of ``batch`` (the graph takes any batch size)."""
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def latency(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int) -> Dict[str, float]:
    """Median seconds of each callable, measured interleaved (one call of each per round) after
    ``warmup`` rounds, so that drifting machine load hits every candidate alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def layer_path(node_name: str) -> str:
    """The module path a TorchScript-exported node's name encodes: ``/blocks.0/conv1/Conv`` ->
    ``blocks.0.conv1``.  A container's child is written with its parent's name in front
    (``/net/net.10/body/body.1/Conv``): such a scope replaces its parent's, giving ``net.10.body.1``."""
    parts = [p.strip() for p in node_name.removeprefix("fused ").split("/") if p.strip()]
    if len(parts) < 2:
        return node_name
    path: List[str] = []
    for scope in parts[:-1]:
        if path and scope.startswith(path[-1] + "."):
            path[-1] = scope
        else:
            path.append(scope)
    return ".".join(path)


def kernel_kinds(optimized_path: str | Path) -> Dict[str, List[str]]:
    """Op types of the graph onnxruntime runs, each with the layers (module paths) that use it."""
    import onnx

    kinds: Dict[str, List[str]] = defaultdict(list)
    for node in onnx.load(str(optimized_path)).graph.node:
        kinds[node.op_type].append(layer_path(node.name))
    return dict(kinds)


def float_fallbacks(optimized_path: str | Path) -> Dict[str, List[str]]:
    """Float compute kernels left in the optimised graph, by op type, with their layers."""
    return {op: sorted(set(layers)) for op, layers in kernel_kinds(optimized_path).items() if op in FLOAT_COMPUTE}


def profile(path: str | Path, x: np.ndarray, threads: int, runs: int) -> List[Dict[str, object]]:
    """onnxruntime's per-node profile over ``runs`` calls on ``x``, summed by op type: rows of
    ``op``, ``kind`` (int / float / qdq / other), ``ms`` (mean per call) and ``share``."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, threads, profile_prefix=str(Path(tmp) / "ort"))
        name = sess.get_inputs()[0].name
        sess.run(None, {name: x})  # warm-up: profiled too, and part of the mean below
        for _ in range(runs):
            sess.run(None, {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_run: Dict[str, List[float]] = defaultdict(list)
    node_events = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    for e in node_events:
        per_run[e["args"].get("op_name", "?")].append(float(e["dur"]) / 1000.0)
    total_calls = runs + 1
    rows = []
    for op, durs in per_run.items():
        ms = sum(durs) / total_calls
        kind = "int" if op in INT_KERNELS else "float" if op in FLOAT_COMPUTE else "qdq" if op in QDQ else "other"
        rows.append({"op": op, "kind": kind, "ms": ms})
    total = sum(r["ms"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["ms"] / total
    return sorted(rows, key=lambda r: -r["ms"])


def requantization(path: str | Path, x: np.ndarray, threads: int) -> Dict[str, object]:
    """Where onnxruntime's integer kernels depart from the file run op by op: every quantized
    activation (each QuantizeLinear output, in graph order) computed both ways on ``x``, compared in
    steps of its own grid.  Returns how many there are and differ, the first that differs (every
    tensor before it agreeing exactly, so its difference is that kernel's own rounding) and the one
    that differs most.  A kernel that rounds its requantization differently from the float reference
    moves a value by one step; layers after it carry and amplify that (an instance norm rescales each
    channel by its spread), so the output can differ by more although no kernel does."""
    import onnx

    check_file(path)
    model = onnx.load(str(path))
    names = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    layers = {n.output[0]: layer_path(n.name) for n in model.graph.node}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.UINT8, None) for t in names)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save(model, str(probe))
        runs = []
        for optimize in (True, False):
            sess = session(probe, threads, optimize=optimize, check=False)
            outs = sess.run(names, {sess.get_inputs()[0].name: x})
            runs.append(outs)
    rows = []
    for t, a, b in zip(names, *runs):
        steps = np.abs(a.astype(np.int32) - b.astype(np.int32))
        rows.append({"tensor": layers[t], "share": float((steps > 0).mean()), "max_steps": int(steps.max())})
    differing = [r for r in rows if r["max_steps"] > 0]
    return {"tensors": len(rows), "differing": len(differing), "first": differing[0] if differing else None,
            "worst": max(differing, key=lambda r: (r["max_steps"], r["share"])) if differing else None}


def summarize_profile(rows: Sequence[Dict[str, object]]) -> Dict[str, float]:
    """Share of kernel time by kind (int, float, qdq, other)."""
    out: Dict[str, float] = defaultdict(float)
    for r in rows:
        out[str(r["kind"])] += float(r["share"])
    return dict(out)
