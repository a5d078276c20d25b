"""Exact ONNX export of a fake-quantized generator: QuantizeLinear/DequantizeLinear pairs with the
scales and zero points the method learned, and integer weights folded in.

How a quantized model (:func:`workflow_src.quant.quantize_model`) becomes an integer ONNX model:

1. every weight quantizer must be symmetric (all zero points 0): nonzero weight zero points are
   rejected (:class:`ExportError`), because compiled integer kernels may silently mishandle them;
2. the model is traced by PyTorch's TorchScript ONNX exporter, which writes each fused fake-quant op
   as a ``QuantizeLinear -> DequantizeLinear`` pair with the same scale and zero point (uint8 for
   the unsigned activation grid ``[0, 255]``, int8 for signed weights).  Weights narrower than 8 bits
   are first snapped to their grid and exported on the int8 grid: the integers are the same;
3. :func:`fold_weights` replaces every ``QuantizeLinear`` of a constant weight by the integer tensor
   itself, so the file holds int8 weights that feed ``DequantizeLinear`` directly; 4-bit weights are
   stored as ONNX ``INT4`` (packed two per byte, which needs opset 21: the graph is converted with
   ``onnx.version_converter``).  No runtime here has an int4 convolution: those weights are
   dequantized to float at load or run time (the report says so);
4. :func:`quantize_before_data_movement` moves each activation quantizer that reads a chain of
   pads, reshapes and slices in front of that chain (exact), so that it runs on uint8;
5. the file is checked (``onnx.checker``) and written atomically.

Nothing is recalibrated: the integers and scales in the file are exactly the quantizers' own.
"""
from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from ..quant.modules import QuantConv2d, QuantLinear
from ..quant.quantizer import FakeQuantizer, fake_quantize, integers
from ..quant.transform import activation_quantizers, weight_quantizers
from ..files import atomic_path

OPSET = 17  # opset of the traced graph; INT4 weights need 21 (converted after folding)
INT4_OPSET = 21


class ExportError(ValueError):
    """A model that cannot be exported exactly (the message names the layer and the value)."""


def _named_weight_quantizers(model: nn.Module) -> List[Tuple[str, FakeQuantizer]]:
    return [(name, m.weight_quant) for name, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def check_exportable(model: nn.Module) -> Dict[str, int]:
    """Raise :class:`ExportError` unless every quantizer can be written as ONNX Q/DQ exactly.

    Weights: symmetric, zero point 0, 2..8 bits, one width per layer (mixed precision: several per
    model).  Activations: 8-bit unsigned (ONNX uint8).  Returns ``{"w_bits": the widest, "widths": every width}``."""
    bits = set()
    for name, q in _named_weight_quantizers(model):
        if not isinstance(q, FakeQuantizer):
            raise ExportError(f"{name}.weight_quant is a {type(q).__name__}: export needs static quantizers (FakeQuantizer)")
        zp = q.zero_point
        if not q.symmetric or bool((zp != 0).any()):
            bad = int(zp.ne(0).sum())
            raise ExportError(f"{name}: weight zero points must all be 0 (symmetric weights); {bad} of {zp.numel()} are nonzero "
                              f"(e.g. {int(zp[zp.ne(0)][0]) if bad else 0}) -- integer kernels can silently mishandle them")
        if not 2 <= q.bits <= 8:
            raise ExportError(f"{name}: {q.bits}-bit weights cannot be stored in int8")
        bits.add(q.bits)
    for i, q in enumerate(activation_quantizers(model)):
        if not isinstance(q, FakeQuantizer):
            raise ExportError(f"activation quantizer {i} is a {type(q).__name__}: export needs static quantizers")
        if q.symmetric or (q.qmin, q.qmax) != (0, 255):
            raise ExportError(f"activation quantizer {i}: {q.bits}-bit {'symmetric' if q.symmetric else 'affine'} grid "
                              f"[{q.qmin}, {q.qmax}]; ONNX export supports 8-bit unsigned activations only")
        if not bool(q.calibrated):
            raise ExportError(f"activation quantizer {i} is not calibrated")
    return {"w_bits": max(bits, default=8), "widths": sorted(bits) or [8]}


@torch.no_grad()
def on_int8_grid(model: nn.Module) -> nn.Module:
    """A copy whose sub-8-bit weights are snapped to their grid and re-expressed on the int8 grid
    (same integers, same scales): what the TorchScript exporter can write."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quant.bits < 8:
            q = m.weight_quant
            m.weight.copy_(fake_quantize(m.weight, q.scale, q.zero_point, q.qmin, q.qmax, q.axis))
            q.qmin, q.qmax = -128, 127
    return model


def trace(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Trace at the batch size of ``example``.  The batch size is static: with a symbolic batch the
    TorchScript exporter loses the channel count of StyleGAN's broadcast noise and constant input
    and cannot write instance norm, and the dynamo exporter cannot trace fused fake-quant ops."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["output"], do_constant_folding=True)


def _constants(graph) -> Dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:  # the exporter shares constants this way
            values[node.output[0]] = values[node.input[0]]
    return values


def fold_weights(model_proto, int4: bool) -> int:
    """Replace each ``QuantizeLinear`` whose input is a constant by its integer tensor (constant
    folding of the quantization: weights, and constant operands such as StyleGAN's noise strengths).

    Signed (int8 zero point) nodes are weights, on the int8 grid (:func:`on_int8_grid` snapped the
    narrower ones to their own grid first); with ``int4`` (a model with 4-bit layers, opset 21) a weight
    whose integers all lie in ``[-8, 7]`` is stored as INT4.  That is exactly the 4-bit layers: the
    symmetric range puts every 6- and 8-bit layer's largest weight at 2^(b-1) - 1 or -2^(b-1).
    Unsigned nodes (constant activation operands) are stored on ``[0, 255]`` as uint8.  The integers are
    :func:`~workflow_src.quant.quantizer.integers`: exactly those PyTorch's fake-quant kernels use,
    also at ties such as the symmetric range's end ``amax / s = 127.5``.  Returns the number folded."""
    from onnx import numpy_helper

    g = model_proto.graph
    consts = _constants(g)
    consumers = _read_counts(g)
    lo, hi = -128, 127
    keep, new_inits, dropped, folded, weights = [], [], set(), 0, {}
    for node in g.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in consts:
            keep.append(node)
            continue
        w, scale = consts[node.input[0]].astype(np.float32), consts[node.input[1]].astype(np.float32)
        zp = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        signed = zp.dtype == np.int8  # weights are signed; constant activation operands (e.g. noise strengths) uint8
        if signed and np.any(zp != 0):
            raise ExportError(f"{node.name}: weight zero point {zp.ravel()[:4]} is not 0")
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if scale.size > 1 else None
        name = node.output[0]  # the DequantizeLinear keeps reading this name: now an initializer
        # PyTorch's fake-quant integers (float32 x * (1/s), half to even), so ties round alike
        ints = integers(torch.from_numpy(w), torch.from_numpy(scale), torch.from_numpy(zp.astype(np.int32)),
                        lo if signed else 0, hi if signed else 255, axis).numpy()
        if signed and int4 and ints.min(initial=0) >= -8 and ints.max(initial=0) <= 7:
            import ml_dtypes  # onnx's own dependency: numpy int4, packed two per byte by from_array

            t = numpy_helper.from_array(ints.astype(ml_dtypes.int4), name)
            weights[name] = ml_dtypes.int4
        else:
            t = numpy_helper.from_array(ints.astype(zp.dtype), name)
            if signed:
                weights[name] = np.int8
        new_inits.append(t)
        folded += 1
        for src in node.input:  # drop the float weight when nothing else reads it
            consumers[src] -= 1
            if consumers[src] == 0:
                dropped.add(src)
    del g.node[:]
    g.node.extend(n for n in keep if not (n.op_type == "Constant" and n.output[0] in dropped))
    inits = [i for i in g.initializer if i.name not in dropped]
    del g.initializer[:]
    g.initializer.extend(inits + new_inits)
    folded_names = {t.name for t in new_inits}  # now initializers: drop stale inferred types (int8 vs INT4)
    infos = [vi for vi in g.value_info if vi.name not in folded_names]
    del g.value_info[:]
    g.value_info.extend(infos)
    _own_zero_points(model_proto, weights)
    return folded


# Ops that only move, copy or insert elements (Pad: zeros, or copies at the border): they commute with
# an element-wise quantizer, and onnxruntime runs them on uint8 as on float.
DATA_MOVEMENT = {"Pad", "Reshape", "Slice", "Unsqueeze", "Squeeze", "Transpose", "Flatten"}


def quantize_before_data_movement(model_proto) -> int:
    """Move each activation ``QuantizeLinear`` in front of the chain of data-movement ops
    (:data:`DATA_MOVEMENT`) that feeds it alone, so that the chain runs on uint8:
    ``x -> Pad -> Reshape -> Q`` becomes ``x -> Q -> Pad -> Reshape``.  Exact: quantization acts
    element by element; these ops copy elements, and the only values they create, a ``Pad``'s zeros
    (other constants stop the chain), become quantize(0), the zero point, the uint8 Pad's constant.
    onnxruntime then moves a quarter of the bytes, and the integers reach its integer conv without a
    float tensor between them (measured at paper size, batch 8, deployable scheme: CycleGAN's reflection
    padding went from 8% to 3% of onnxruntime's kernel time, and the file measured 0.57x, then 0.50x of
    FP32 latency (one benchmark run each); StyleGAN's zero insertion took about 120 ms per call on uint8 as on float).  Returns the
    number of ops moved to uint8."""
    from onnx import numpy_helper

    g = model_proto.graph
    consts = _constants(g)
    consumers = _read_counts(g)
    producer = {out: node for node in g.node for out in node.output}
    graph_outputs = {o.name for o in g.output}
    before: Dict[int, object] = {}  # id(first op of a chain) -> the QuantizeLinear to put in front of it
    moved_q, retyped, n_ops = set(), set(), 0
    for q in g.node:
        if q.op_type != "QuantizeLinear" or len(q.input) < 3 or q.input[2] not in consts or consts[q.input[2]].dtype != np.uint8:
            continue
        chain = []  # last op first
        node = producer.get(q.input[0])
        while (node is not None and node.op_type in DATA_MOVEMENT and consumers.get(node.output[0], 0) == 1
               and node.output[0] not in graph_outputs and _commutes(node, consts, producer)):
            chain.append(node)
            node = producer.get(node.input[0])
        if not chain:
            continue
        zp = consts[q.input[2]].reshape(()).astype(np.uint8)
        first, last, q_out = chain[-1], chain[0], q.output[0]
        for op in chain:
            retyped.add(op.output[0])
            if op.op_type == "Pad":
                pads = _constant_value(op.input[1], consts, producer)
                if pads is not None:  # static pads: a constant for onnxruntime, not shape arithmetic at run time
                    op.input[1] = _add_initializer(g, numpy_helper, pads.astype(np.int64), op.output[0] + "_pads")
                mode = next((a.s.decode() for a in op.attribute if a.name == "mode"), "constant")
                if mode == "constant":
                    value = _add_initializer(g, numpy_helper, zp, op.output[0] + "_pad_value")
                    del op.input[2:]
                    op.input.append(value)
        q.input[0], q.output[0] = first.input[0], q_out + "_early"
        first.input[0] = q.output[0]
        last.output[0] = q_out  # the DequantizeLinear that read the quantizer reads the chain's end
        before[id(first)] = q
        moved_q.add(id(q))
        n_ops += len(chain)
    if before:
        nodes = []
        for node in g.node:
            if id(node) in moved_q:
                continue
            if id(node) in before:
                nodes.append(before[id(node)])
            nodes.append(node)
        del g.node[:]
        g.node.extend(nodes)
        _drop_dead_nodes(g)  # the Pads' shape arithmetic
        infos = [vi for vi in g.value_info if vi.name not in retyped]  # float before, uint8 now
        del g.value_info[:]
        g.value_info.extend(infos)
    return n_ops


def _commutes(node, consts, producer) -> bool:
    """Whether a data-movement op commutes with quantization: any but a ``Pad`` that writes a
    nonzero constant, or whose mode is not constant, reflect or edge, or that has an ``axes`` input."""
    if node.op_type != "Pad":
        return True
    mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
    if mode not in ("constant", "reflect", "edge") or (len(node.input) > 3 and node.input[3]):
        return False
    if mode != "constant" or len(node.input) < 3 or not node.input[2]:
        return True
    value = _constant_value(node.input[2], consts, producer)
    return value is not None and not np.any(np.asarray(value) != 0)


def _add_initializer(graph, numpy_helper, value: np.ndarray, name: str) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _constant_value(name: str, consts: Dict[str, np.ndarray], producer: Dict[str, object], depth: int = 16):
    """The value of ``name`` if it depends on constants only (the TorchScript exporter computes a
    Pad's pads with a chain of shape ops on constants), evaluated node by node with onnx's reference
    evaluator; None if it reads a graph input."""
    if name in consts:
        return consts[name]
    node = producer.get(name)
    if node is None or depth == 0:
        return None
    feeds = {}
    for i in node.input:
        if i:
            v = _constant_value(i, consts, producer, depth - 1)
            if v is None:
                return None
            feeds[i] = v
    from onnx.reference import ReferenceEvaluator

    for out, value in zip(node.output, ReferenceEvaluator(node).run(None, feeds)):
        consts[out] = np.asarray(value)
    return consts[name]


def _drop_dead_nodes(graph) -> None:
    """Remove nodes none of whose outputs is read (ONNX ops have no side effects)."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        keep = [n for n in graph.node if any(o in read for o in n.output)]
        if len(keep) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(keep)


def _read_counts(graph) -> Dict[str, int]:
    """How many node inputs read each tensor name."""
    return Counter(name for node in graph.node for name in node.input)


def _own_zero_points(model_proto, weights: Dict[str, object]) -> None:
    """Give each ``DequantizeLinear`` of a folded weight a zero point of its own, in the weight's
    type (``weights``: name -> numpy dtype; DequantizeLinear wants INT4 zero points for INT4 input).
    The TorchScript exporter shares one int8 zero-point constant among many weights, and
    onnxruntime's s8 -> u8 weight conversion (``session.x64quantprecision``) then fails on the
    second weight ("Attempt to replace the existing tensor")."""
    from onnx import numpy_helper

    g = model_proto.graph
    consts = _constants(g)
    replaced = set()
    for node in g.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in weights and len(node.input) > 2 and node.input[2]:
            name = node.input[0] + "_zero_point"
            g.initializer.append(numpy_helper.from_array(np.zeros(consts[node.input[2]].shape, weights[node.input[0]]), name))
            replaced.add(node.input[2])
            node.input[2] = name
    used = {i for node in g.node for i in node.input}
    inits = [i for i in g.initializer if i.name in used or i.name not in replaced]
    del g.initializer[:]
    g.initializer.extend(inits)


def export_qdq(model: nn.Module, example: torch.Tensor, out: str | Path) -> Dict[str, object]:
    """Export the fake-quantized ``model`` to ``out`` (ONNX, QDQ, integer weights).  Returns what
    was written: opset, weight bits, number of folded weights and Q/DQ pairs."""
    import onnx

    info = check_exportable(model)
    int4 = 4 in info["widths"]
    with atomic_path(out) as tmp:
        trace(on_int8_grid(model), example, tmp)
        proto = onnx.load(str(tmp))
        opset = OPSET
        if int4:  # INT4 tensors exist from opset 21 on: convert while the weights are still float
            proto = _convert_opset(proto, INT4_OPSET)
            opset = INT4_OPSET
        folded = fold_weights(proto, int4)
        uint8_ops = quantize_before_data_movement(proto)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    n_q = sum(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    return {"opset": opset, "w_bits": int(info["w_bits"]), "widths": info["widths"], "folded_weights": folded, "activation_qdq": n_q,
            "uint8_data_movement": uint8_ops,
            "weight_storage": weight_storage(info["widths"])}


def weight_storage(widths) -> str:
    """How the ONNX file stores weights of these widths (ONNX has INT4 and INT8 tensors, nothing between)."""
    widths = sorted(set(widths))
    if widths == [4]:
        return "int4 packed (2 per byte)"
    if 4 in widths:
        return "int4 packed (2 per byte) for the 4-bit layers, int8 for the " + "/".join(f"{b}-bit" for b in widths if b != 4) + " layers"
    return "int8"


def _convert_opset(proto, opset: int):
    """Upgrade the graph's default-domain opset (the INT4 weights are already in place)."""
    from onnx import version_converter

    return version_converter.convert_version(proto, opset)


def export_float(model: nn.Module, example: torch.Tensor, out: str | Path) -> None:
    """The FP32 baseline through the same exporter and opset."""
    with atomic_path(out) as tmp:
        trace(copy.deepcopy(model).eval(), example, tmp)
