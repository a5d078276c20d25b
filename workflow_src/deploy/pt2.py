"""The PyTorch 2 integer path: the fake-quantized generator rewritten with PyTorch's
``quantized_decomposed`` ops, captured by ``torch.export`` and lowered for x86 CPUs by torchao
(``lower_pt2e_quantized_to_x86``: freezing passes that turn ``dequantize -> conv/linear`` groups
into oneDNN int8 kernels with float output, ``onednn.qconv_pointwise``/``qlinear_pointwise``).

The rewrite keeps the fake-quant arithmetic exactly (measured: max |diff| 0 on all three generators,
both weight granularities): each activation quantizer becomes ``quantize_per_tensor`` then
``dequantize_per_tensor`` with its own scale and zero point (``round(x * (1/s))`` like the fused
kernels), each weight its integer tensor from :func:`~workflow_src.quant.quantizer.integers` (int8
storage; 4-bit weights keep the 4-bit range ``[-8, 7]`` in int8 bytes) and ``dequantize_per_channel``
with zero point 0.  Nothing is recalibrated.

oneDNN's int8 kernels add pairs of u8*s8 products in saturating int16 on x86 CPUs without VNNI
(:func:`.runtime.cpu_has_vnni`): there the lowered program differs from the file wherever a pair
exceeds 32767 (measured on tiny-profile generators with full-range 8-bit weights: 12-87% of pixels
within one output step, against 92-100% with 7-bit weights).  The file written is the exported
program (``torch.export.save``) of the rewritten model, its composite ops decomposed; lowering
(Inductor's freezing passes) happens at load time because oneDNN's prepacked weights are
machine-specific.  The same program compiled ahead of time by AOTInductor (:func:`compile_package`)
is the ``inductor-x86`` runtime: a package built for this machine, compiled once and loaded after.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Dict, List

import torch
from torch import nn

from ..quant.modules import QuantConv2d, QuantLinear, QuantOp
from ..quant.quantizer import FakeQuantizer
from ..files import atomic_path
from .onnx_qdq import check_exportable

RUNTIME = "pt2e-x86"
INDUCTOR = "inductor-x86"  # the same program compiled ahead of time by AOTInductor (compile_package)
# Float kernels left in a lowered graph that an all-integer deployment would run on integers.
FLOAT_COMPUTE = {
    "aten.convolution.default", "aten.addmm.default", "aten.mm.default", "aten.bmm.default",
    "aten._native_batch_norm_legit.no_stats", "aten._native_batch_norm_legit_no_training.default",
    "aten._softmax.default", "aten.add.Tensor", "aten.mul.Tensor", "aten.cat.default",
}


def _ops():
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401  registers the x86 lowering patterns

    return torch.ops.quantized_decomposed


class ActQDQ(nn.Module):
    """``dequantize(quantize(x))`` on the unsigned 8-bit grid with fixed Python-scalar qparams."""

    def __init__(self, q: FakeQuantizer):
        super().__init__()
        self.scale, self.zero_point = float(q.scale.reshape(())), int(q.zero_point.reshape(()))
        self.qmin, self.qmax = q.qmin, q.qmax

    def forward(self, x):
        qd = _ops()
        xq = qd.quantize_per_tensor.default(x, self.scale, self.zero_point, self.qmin, self.qmax, torch.uint8)
        return qd.dequantize_per_tensor.default(xq, self.scale, self.zero_point, self.qmin, self.qmax, torch.uint8)


class IntWeight(nn.Module):
    """The integer weight and its dequantization; ignores the (removed) float weight it is given.
    A per-tensor scale is written per channel (the same value repeated: exact), because the x86
    lowering only recognises per-channel weight dequantization."""

    def __init__(self, q: FakeQuantizer, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("int_weight", q.integer(weight.detach()).to(torch.int8))
        self.qmin, self.qmax = q.qmin, q.qmax
        self.register_buffer("scales", q.scale.detach().float().reshape(-1).expand(weight.shape[0]).clone())
        self.register_buffer("zero_points", torch.zeros(weight.shape[0], dtype=torch.int64))

    def forward(self, _unused=None):
        return _ops().dequantize_per_channel.default(self.int_weight, self.scales, self.zero_points, 0, self.qmin, self.qmax, torch.int8)


class _IntConv(nn.Module):
    def __init__(self, m: QuantConv2d):
        super().__init__()
        self.input_quant, self.weight = ActQDQ(m.input_quant), IntWeight(m.weight_quant, m.weight)
        self.bias = None if m.bias is None else nn.Parameter(m.bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation, self.groups = m.stride, m.padding, m.dilation, m.groups
        if m.padding_mode != "zeros":
            self.pad = (m._reversed_padding_repeated_twice, m.padding_mode)
            self.padding = 0
        else:
            self.pad = None

    def forward(self, x):
        if self.pad is not None:  # reflect/replicate padding copies values, so it commutes with quantization:
            x = nn.functional.pad(x, self.pad[0], mode=self.pad[1])  # pad first, so dequant feeds the conv
        x = self.input_quant(x)
        return nn.functional.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class _IntLinear(nn.Module):
    def __init__(self, m: QuantLinear):
        super().__init__()
        self.input_quant, self.weight = ActQDQ(m.input_quant), IntWeight(m.weight_quant, m.weight)
        self.bias = None if m.bias is None else nn.Parameter(m.bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        return nn.functional.linear(self.input_quant(x), self.weight(), self.bias)


class _IntOp(nn.Module):
    def __init__(self, m: QuantOp):
        super().__init__()
        self.op = m.op
        self.operand_quant = nn.ModuleList(ActQDQ(q) for q in m.operand_quant)

    def forward(self, *xs):
        return self.op.compute(*(q(x) for q, x in zip(self.operand_quant, xs)))


def decompose(model: nn.Module) -> nn.Module:
    """A copy of the fake-quantized ``model`` on ``quantized_decomposed`` ops, integer weights only."""
    check_exportable(model)
    model = copy.deepcopy(model).eval()
    _swap(model)
    return model


def _swap(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, QuantConv2d):
            setattr(module, name, _IntConv(child))
        elif isinstance(child, QuantLinear):
            setattr(module, name, _IntLinear(child))
        elif isinstance(child, QuantOp):
            setattr(module, name, _IntOp(child))
        else:
            _swap(child)


def _decompositions() -> Dict:
    """The composite-implicit ATen ops (``conv2d``, ``linear``, ...) and their decompositions: the
    table torchao's x86 lowering decomposes with before its patterns match (a copy of the one built
    per process: building it takes 0.05 s, and an export job asks three times)."""
    return dict(_cia_table())


@functools.lru_cache(maxsize=None)
def _cia_table() -> Dict:
    return {k: v for k, v in torch.export.default_decompositions().items() if torch._export.utils._is_cia_op(k)}


def decomposed(ep: "torch.export.ExportedProgram") -> bool:
    """Whether ``ep`` is already the inference-IR program :func:`_decompositions` gives (dialect
    ``ATEN``, no op left that the table decomposes): decomposing it again changes nothing."""
    table = _decompositions()
    return ep.dialect == "ATEN" and not any(n.op == "call_function" and n.target in table for n in ep.graph.nodes)


def export_program(model: nn.Module, example: torch.Tensor, out: str | Path) -> None:
    """``torch.export`` of ``model`` (the int8 rewrite :func:`decompose` makes, or FP32), lowered to
    the inference IR with the composite ops decomposed (the form :func:`lower_x86` starts from: a program is decomposed once,
    where it is written, not in every job that loads it -- the FP32 baselines in each variant's
    export job), saved to ``out`` (``.pt2``)."""
    with torch.no_grad():
        ep = torch.export.export(model.eval(), (example,)).run_decompositions(_decompositions())
    # Each node records the Python stack that traced it, absolute file paths included: the file's size
    # (results.csv's pt2e_size_ratio) would depend on where the checkout and the venv live.  The
    # decomposition adds each node's provenance (`from_node`), which names the graphs it passed through
    # by their Python object ids: two exports of one model would differ in bytes.
    for module in ep.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                node.meta.pop("stack_trace", None)
                node.meta.pop("from_node", None)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        torch.export.save(ep, fh)


def _tensor_meta(gm: torch.fx.GraphModule) -> None:
    """Each node's ``tensor_meta`` (shape, dtype, strides: what torchao's x86 patterns read), from the
    fake tensor a loaded program keeps in ``val``; a decomposition's retrace records both."""
    from torch.fx.passes.shape_prop import _extract_tensor_metadata

    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and "tensor_meta" not in node.meta:
            node.meta["tensor_meta"] = _extract_tensor_metadata(val)


def lower_x86(ep: "torch.export.ExportedProgram", example: torch.Tensor) -> torch.fx.GraphModule:
    """Lower an exported program for x86: decompose the composite ops (unless
    :func:`export_program` did), then run Inductor's
    freezing passes with torchao's x86 patterns registered (int8 weight prepack, ``dequant ->
    conv/linear`` to oneDNN int8 kernels) and fold constants -- the steps of torchao's
    ``lower_pt2e_quantized_to_x86``, applied to the saved program itself instead of a re-export."""
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes

    _ops()
    with torch.no_grad():
        if decomposed(ep):
            gm = ep.module()
            _tensor_meta(gm)
        else:
            gm = ep.run_decompositions(_decompositions()).module()  # which records each node's tensor_meta
        for node in list(gm.graph.nodes):
            if node.target == torch.ops.aten.view.default:  # oneDNN may hand back channels-last outputs
                node.target = torch.ops.aten.reshape.default
            if node.target == torch.ops.aten.t.default:  # aten.t -> permute, which the linear patterns expect
                with gm.graph.inserting_before(node):
                    perm = gm.graph.call_function(torch.ops.aten.permute.default, args=(node.args[0], [1, 0]))
                node.replace_all_uses_with(perm)
                gm.graph.erase_node(node)
        gm.recompile()
        freezing_passes(gm, (example,))
        constant_fold(gm)
    return gm


def load_program(path: str | Path) -> "torch.export.ExportedProgram":
    """A saved program, as written (its ops registered first); an error names the file."""
    _ops()
    try:
        return torch.export.load(str(path))
    except Exception as e:
        raise RuntimeError(f"export file {str(path)!r} cannot be loaded as a torch.export program: {type(e).__name__}: {str(e)[:200]}") from None


def load_lowered(path: str | Path, example: torch.Tensor) -> torch.nn.Module:
    """Load a saved program and lower it for x86 (oneDNN int8 kernels where the graph is quantized)."""
    return lower_x86(load_program(path), example)


def cpu_capability() -> str:
    """The instruction set PyTorch's CPU kernels (and Inductor's generated code) target here:
    ``AVX512``, ``AVX2``, ...  A compiled package is built for it (``-march=native``)."""
    return torch.backends.cpu.get_cpu_capability()


def compile_package(program: str | Path, out: str | Path) -> Dict[str, object]:
    """AOTInductor: the saved program ``program`` (:func:`export_program`) compiled ahead of time
    into a package ``out`` (``.pt2``: the generated C++ built into a shared library, the weights
    frozen in -- int8 weights prepacked for oneDNN, the ``dequantize -> conv/linear -> quantize``
    groups lowered to its int8 kernels by the patterns :func:`lower_x86` uses, the element-wise work
    between them fused into generated kernels).  The compiled artifact: a job compiles a program once
    and every later run loads the library (:func:`load_package`).  It is machine-specific (built for
    :func:`cpu_capability`).  Returns the compile seconds and how many int8 kernels were lowered
    (Inductor's pattern counters).  Written under a temporary folder beside ``out`` (the package
    names its folder after the file) and renamed, so that a killed job leaves no package."""
    import os
    import tempfile
    import time

    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ep = load_program(program)
    counters["inductor"].clear()
    t0 = time.perf_counter()
    # compile_threads=1: one process (export jobs run in forked workers); enable_kernel_profile: each generated kernel
    # records itself for torch.profiler (:func:`profile`), a flag test per kernel when no profiler runs
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp, torch.no_grad(), \
            inductor_config.patch({"freezing": True, "compile_threads": 1, "cpp.enable_kernel_profile": True}):
        built = Path(tmp) / out.name
        torch._inductor.aoti_compile_and_package(ep, package_path=str(built))
        os.replace(built, out)
    lowered = {k.removesuffix("_lower_count"): int(v) for k, v in sorted(counters["inductor"].items()) if k.endswith("_lower_count")}
    return {"compile_seconds": time.perf_counter() - t0, "int_kernels": lowered, "cpu_capability": cpu_capability()}


def load_package(path: str | Path):
    """A compiled package (:func:`compile_package`), callable on a batch; an error names the file."""
    try:
        return torch._inductor.aoti_load_package(str(path))
    except Exception as e:
        raise RuntimeError(f"export file {str(path)!r} cannot be loaded as an AOTInductor package: {type(e).__name__}: {str(e)[:200]}") from None


# What the runtimes' profiles call each kind of work (torch.profiler's names for the lowered program's ops
# and the package's kernels): oneDNN's int8 convs and matrix products (``onednn::qconv_pointwise``,
# ``aoti_torch_cpu__qconv_pointwise_tensor``, ...), the quantize/dequantize ops left unfused, Inductor's
# generated C++ kernels (the element-wise work between the int8 kernels, quantization included).
INT_MARKS = ("qconv", "qlinear")
QDQ_PREFIX = "quantized_decomposed::"
GENERATED_MARK = "cpp_fused"


def profile(fn, x: torch.Tensor, runs: int) -> List[Dict[str, object]]:
    """torch.profiler's view of ``runs`` calls of ``fn`` (a lowered program or a loaded package) on
    ``x`` after one warm-up call: the time of each top-level op or kernel (its children included),
    summed by name, as rows of ``op``, ``kind`` (int / qdq / generated / float / other), ``ms`` (mean
    per call) and ``share``, like :func:`.runtime.profile`'s."""
    from collections import defaultdict

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch.no_grad():
        fn(x)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                fn(x)
    per_op: Dict[str, float] = defaultdict(float)
    for e in prof.events():
        if e.cpu_parent is None:
            per_op[e.name] += e.cpu_time_total / 1000.0 / runs
    total = sum(per_op.values()) or 1.0
    rows = []
    for op, ms in per_op.items():
        kind = ("int" if any(m in op for m in INT_MARKS) else "qdq" if op.startswith(QDQ_PREFIX) else "generated" if GENERATED_MARK in op
                else "float" if _aten_name(op) in _FLOAT_ATEN else "other")
        rows.append({"op": op, "kind": kind, "ms": ms, "share": ms / total})
    return sorted(rows, key=lambda r: -r["ms"])


def _aten_name(op: str) -> str:
    """``aten::bmm`` (lowered program) and ``aoti_torch_cpu_bmm_out`` (a package's fallback call) -> ``bmm``."""
    if op.startswith("aoti_torch_cpu_"):
        return op.removeprefix("aoti_torch_cpu_").removesuffix("_out").lstrip("_")
    return op.removeprefix("aten::").split(".")[0]


_FLOAT_ATEN = {t.split(".")[1] for t in FLOAT_COMPUTE} | {"conv2d", "linear", "mkldnn_convolution", "_convolution", "softmax", "instance_norm",
                                                           "batch_norm", "native_batch_norm", "upsample_nearest2d", "upsample_bilinear2d"}


def warm_up() -> float:
    """Export, save, load and lower a two-layer 8-bit model once; the seconds it took.  A process's
    first ``torch.export`` and first lowering pay one-time set-up (tracing machinery, Inductor's
    pattern tables) whatever the model: measured on the tiny profile's SAGAN, 1.65 s for a first
    export of a one-conv model, then 0.3-0.4 s per generator.  The warm process calls this once, so
    that its forked export jobs start past that set-up.  Writes only a scratch file, removed here."""
    import tempfile
    import time

    from ..quant import QuantSpec, calibrate, quantize_model

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.Tanh())
    x = torch.randn(2, 3, 8, 8, generator=gen)
    q = quantize_model(net, QuantSpec(w_bits=8, a_bits=8, per_channel=True))
    calibrate(q, [x])
    with torch.no_grad():
        q(x[:1])
    with tempfile.TemporaryDirectory(prefix="pt2-warm-") as tmp:
        for model in (net, decompose(q)):
            export_program(model, x[:1].clone(), Path(tmp) / "m.pt2")
            with torch.no_grad():
                load_lowered(Path(tmp) / "m.pt2", x[:1].clone())(x[:1])
    return time.perf_counter() - t0


def kernel_kinds(lowered: torch.nn.Module) -> Dict[str, List[str]]:
    """Call targets of the lowered graph (``onednn.qconv_pointwise`` = integer kernel), each with
    the module paths (from ``torch.export``'s ``nn_module_stack``) of the nodes that call it."""
    kinds: Dict[str, List[str]] = {}
    for n in lowered.graph.nodes:
        if n.op == "call_function":
            stack = n.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else n.name
            kinds.setdefault(str(n.target), []).append(path)
    return kinds
