"""Quantization schemes for integer deployment (issue 22).

``paper`` is the model a method produced, as the paper's tables score it: activations are quantized
where a layer or an operation reads them (the input of every conv and linear layer, the operands of
additions, products and concatenations).  A conv whose output goes to a normalisation, an
activation function or the generator's output is therefore never followed by a quantizer, and an
integer runtime cannot fuse ``DequantizeLinear -> Conv -> QuantizeLinear`` into one integer conv:
onnxruntime runs it as a float conv on dequantized inputs (measured: most of the convs of every
paper-size generator).

``deployable`` adds one 8-bit affine quantizer on the output of each such conv (a
:class:`Requantize` operation after it), calibrated on data with min-max over the quantized model's
own outputs.  Which convs: those whose output the exported QDQ graph of the ``paper`` model does
not feed to a ``QuantizeLinear`` alone, read from that graph (what the runtime sees).

It also narrows 8-bit weights to 7 bits (``weight_bits``; onnxruntime's quantizer calls this
``reduce_range``): each such layer's weights, as the method's own quantizer rounds them, are
quantized again, symmetric min-max on the same axis, onto ``[-64, 63]``.  Why: on x86 CPUs without
VNNI, onnxruntime's exact int8 mode (``session.x64quantprecision``, which every export session uses)
keeps a layer on the fast u8s8 kernels only when all its weights lie in ``[-64, 63]``, where no
int16 sum of two u8*s8 products can saturate (2 * 255 * 64 = 32640 < 32767); wider weights are
converted to uint8 and run on u8u8 kernels, measured slower than float at paper size.  Narrower
layers (4-bit, 6-bit) are untouched.  Activation quantizers the method calibrated or learned keep
their scales.  The extra roundings are the scheme's quality cost; the workflow measures it as qFID
against the ``paper`` model.
"""
from __future__ import annotations

import copy
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, List, Tuple

import torch
from torch import nn

from ..archs.ops import FloatOp
from ..device import module_device, to_device
from ..quant.modules import QuantConv2d, QuantLinear, QuantOp, QuantSpec, weight_quantizer
from . import onnx_qdq
from .runtime import layer_path

SCHEMES = ("paper", "deployable")
WEIGHT_BITS = 7  # the widest weights onnxruntime's u8s8 kernels take without int16 saturation on non-VNNI x86


class Requantize(FloatOp):
    """The identity on one operand: as a :class:`~workflow_src.quant.modules.QuantOp` it quantizes a
    conv's output for the next layer (exported as a QuantizeLinear/DequantizeLinear pair)."""

    n_inputs = 1

    def compute(self, x):
        return x


def float_output_convs(model: nn.Module, example: torch.Tensor, exported: str | Path | None = None) -> List[str]:
    """Module paths of the quantized convs of ``model`` whose output its exported QDQ graph does not
    quantize at once (some consumer of the Conv node is not a QuantizeLinear, or the output is the
    graph's).  ``exported``: the model's file as :func:`onnx_qdq.export_qdq` wrote it, if there is
    one (else it is exported to a temporary file at the batch size of ``example``)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="scheme-") as tmp:
        path = Path(exported) if exported else Path(tmp) / "paper.onnx"
        if not exported:
            onnx_qdq.export_qdq(model, example, path)
        graph = onnx.load(str(path)).graph
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node.op_type)
    outputs = {o.name for o in graph.output}
    convs = {name for name, m in model.named_modules() if isinstance(m, QuantConv2d)}
    found = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        out = node.output[0]
        if out in outputs or not consumers[out] or any(op != "QuantizeLinear" for op in consumers[out]):
            layer = layer_path(node.name)
            if layer not in convs:
                raise ValueError(f"exported Conv node {node.name!r} names no quantized conv of the model ({layer!r}; "
                                 f"e.g. {sorted(convs)[:3]}): cannot place its output quantizer")
            found.append(layer)
    return found


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)


@torch.no_grad()
def narrow_weights(model: nn.Module, bits: int) -> List[str]:
    """In place: every conv and linear layer of ``model`` with weights wider than ``bits`` gets its
    weights as its quantizer rounds them, quantized again by a symmetric min-max ``bits``-bit
    quantizer on the same axis.  Returns the layers changed."""
    changed = []
    for name, m in model.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quant.bits > bits:
            old = m.weight_quant
            if old.axis not in (None, 0):
                raise ValueError(f"{name}: weight quantizer on axis {old.axis}; narrow_weights() handles per-tensor and axis 0")
            m.weight.copy_(old(m.weight))
            m.weight_quant = weight_quantizer(m.weight, QuantSpec(w_bits=bits, per_channel=old.axis == 0, w_observer="minmax"))
            changed.append(name)
    return changed


@torch.no_grad()
def deployable(model: nn.Module, example: torch.Tensor, batches: Iterable[torch.Tensor] | Callable[[nn.Module], Iterable[torch.Tensor]],
               weight_bits: int = WEIGHT_BITS, exported: str | Path | None = None) -> Tuple[nn.Module, List[str]]:
    """A copy of the quantized ``model`` under the ``deployable`` scheme: weights wider than
    ``weight_bits`` narrowed (:func:`narrow_weights`), then the new output quantizers calibrated
    (min-max) on ``batches`` run through the copy (or on ``batches(copy)``: e.g. ``GANArch.batches``,
    which feeds each sample its distillation extras); returns it and the convs it requantizes.
    ``example``: an input of the exported batch size, for the graph analysis (or ``exported``, the
    model's ONNX file, see :func:`float_output_convs`)."""
    model = model.eval()
    model(example[:1])  # reads each quantizer's `calibrated` flag once, outside tracing
    layers = float_output_convs(model, example, exported)
    dm = copy.deepcopy(model).eval()
    narrow_weights(dm, weight_bits)
    device = module_device(dm)
    spec = QuantSpec(a_bits=8, a_observer="minmax")
    added = []
    for path in layers:
        op = QuantOp(Requantize(), spec, device=device)
        _replace(dm, path, nn.Sequential(dm.get_submodule(path), op))
        added.append(op.operand_quant[0])
    for q in added:
        q.observing = True
    seen = 0
    for batch in (batches(dm) if callable(batches) else batches):
        dm(to_device(batch, device))
        seen += len(batch)
    if added and not seen:
        raise ValueError("deployable(): no calibration batch was given")
    for q in added:
        q.freeze()
    return dm, layers
