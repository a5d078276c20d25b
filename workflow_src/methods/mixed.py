"""Mixed precision (beyond the paper; issue 20): per-layer weight widths that meet a size budget.

``mp-quantile`` gives every conv and linear layer a weight width from ``mixed.widths`` so that the
generator's average bits per weight stays within the variant's budget (its ``w_bits``: the budgets are
``mixed.budgets``, in average bits per weight), then calibrates exactly like ``ptq-quantile``: each
layer's weights with the quantile pair the sweep chose for its width, activations with the pair of the
widest width (every variant's activations are a_bits wide).

The allocation (:func:`allocate`) is greedy on the layer sensitivity ranking (rule ``sensitivity``:
each layer's ``weight`` row, the validation qFID with only its weights quantized at
``sensitivity.w_bits``):

* every layer starts at the narrowest width; with ``mixed.keep_ends``, the first and the last weight
  layer (module order) start at the widest when the budget allows that;
* a layer's damage at width ``b`` is modelled as its measured damage times ``4^-(b - b_s)`` (``b_s``:
  the sensitivity's width): uniform quantization noise power falls fourfold per bit, and the qFID of
  a small perturbation grows with its power;
* then, while some layer's next width still fits in the budget, the layer whose step to its next width
  removes the most modelled damage per added bit takes it (ties: the larger step, then module order).

Greedy, because the budget is one linear constraint and the per-layer damages are additive in this
model: the greedy is then within one step of the optimum, costs a sort per step, and needs nothing but
the ranking; it also stops only when no single step fits, so the budget is used as far as the widths
allow.  Layers the sensitivity did not score (``sensitivity.max_units`` cuts the list) count as the
worst scored one.  A budget at the widest width gives every layer that width: the plain
``ptq-quantile`` variant of that width, value for value.
"""
from __future__ import annotations

import csv
from collections import ChainMap
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from torch import nn

from ..config import Variant
from ..quant import calibrate, quantize_model
from ..quant.modules import weight_quantizer
from ..quant.size import weight_layers
from .ptq import sample_batches, spec_for


def allocate(layers: Sequence[Tuple[str, int, float]], widths: Sequence[int], budget: float, *,
             keep_ends: bool = True, damage_bits: int | None = None) -> Dict[str, int]:
    """``{layer: bits}`` whose average over every weight is at most ``budget``.

    ``layers``: ``(name, weights, damage)`` in module order, ``damage`` the layer's measured damage
    with its weights at ``damage_bits`` (default: the narrowest width).  Raises ``ValueError`` when
    the budget is below the narrowest width."""
    widths = sorted({int(b) for b in widths})
    if not layers:
        return {}
    lo, hi = widths[0], widths[-1]
    ref = lo if damage_bits is None else int(damage_bits)
    total = sum(n for _, n, _ in layers)
    cap = budget * total  # bits; integer weights and integer widths: every comparison below is exact for integer budgets
    if lo * total > cap:
        raise ValueError(f"budget {budget} bits per weight is below the narrowest width {lo}")
    bits = {name: lo for name, _, _ in layers}
    used = lo * total
    if keep_ends:
        ends = {layers[0][0]: layers[0][1], layers[-1][0]: layers[-1][1]}
        extra = sum((hi - lo) * n for n in ends.values())
        if used + extra <= cap:
            for name in ends:
                bits[name] = hi
            used += extra
    size = {name: n for name, n, _ in layers}
    damage = {name: float(d) for name, _, d in layers}
    order = {name: i for i, (name, _, _) in enumerate(layers)}

    def modelled(name: str, b: int) -> float:
        return damage[name] * 4.0 ** (ref - b)

    while True:
        best = None
        for name in bits:
            b = bits[name]
            if b == hi:
                continue
            nxt = widths[widths.index(b) + 1]
            cost = (nxt - b) * size[name]
            if used + cost > cap:
                continue
            gain = modelled(name, b) - modelled(name, nxt)
            key = (gain / cost, gain, -order[name])
            if best is None or key > best[0]:
                best = (key, name, nxt, cost)
        if best is None:
            return bits
        _, name, nxt, cost = best
        bits[name] = nxt
        used += cost


def read_damage(path: str | Path) -> Dict[str, float]:
    """``{layer: qfid}`` of the ``weight`` rows of a sensitivity table (``sensitivity/<arch>.csv``)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("operand") == "weight"]
    if not rows:
        raise ValueError(f"{path}: no 'weight' rows (a layer sensitivity table of rule sensitivity)")
    return {r["layer"]: float(r["qfid"]) for r in rows}


def layer_damages(model: nn.Module, damage: Mapping[str, float]) -> List[Tuple[str, int, float]]:
    """``(layer, weights, damage)`` for every weight layer of the quantized ``model``, in module order;
    a layer the sensitivity did not score gets the worst scored damage."""
    worst = max(damage.values(), default=1.0)
    worst = worst if math.isfinite(worst) else 1.0
    return [(name, int(m.weight.numel()), float(damage.get(name, worst))) for name, m in weight_layers(model)]


def mp_quantile(generator: nn.Module, calib_inputs, variant: Variant, arch_cfg: Dict[str, Any], cfg: Dict[str, Any],
                arch=None, extras: Dict[str, Any] | None = None, sensitivity: str | None = None, **_):
    if not sensitivity:
        raise ValueError(f"{variant.method} allocates widths from the layer sensitivity: pass --sensitivity (sensitivity/<arch>.csv)")
    mcfg = cfg["mixed"]
    widths = sorted(int(b) for b in mcfg["widths"])
    pairs = arch_cfg["quantiles_by_width"]  # {bits: pair}, resolved by the quantize stage (workflow.artifacts.arch_params)
    widest = spec_for(replace(variant, w_bits=widths[-1]), "quantile", ChainMap({"quantiles": pairs[widths[-1]]}, arch_cfg), cfg)
    qmodel = quantize_model(generator, widest)
    damage = read_damage(sensitivity)
    bits = allocate(layer_damages(qmodel, damage), widths, variant.w_bits, keep_ends=bool(mcfg["keep_ends"]),
                    damage_bits=int(cfg["sensitivity"]["w_bits"]))
    w_layers = []
    for name, m in weight_layers(qmodel):
        pair = pairs[bits[name]]["weight"]
        w_layers.append((name, bits[name], float(pair["upper"]), float(pair["lower"])))
        if bits[name] != widest.w_bits:
            m.weight_quant = weight_quantizer(m.weight, replace(widest, w_bits=bits[name], w_quantiles=(w_layers[-1][2], w_layers[-1][3])))
    spec = replace(widest, w_layers=tuple(w_layers))
    n = cfg["calibration"]["images"]
    inputs = calib_inputs[:n]
    bs = cfg["distill"]["batch_size"]
    seen = calibrate(qmodel, sample_batches(arch, qmodel, inputs, bs, extras), total=(len(inputs) + bs - 1) // bs)
    counts = {str(b): sum(1 for x in bits.values() if x == b) for b in widths}
    return qmodel, spec, {"calibration_images": seen, "budget": variant.w_bits, "layers_per_width": counts, "layer_bits": bits,
                          "unscored_layers": sorted(set(bits) - set(damage))}


# What this method is (workflow_src/registry.py reads these literals without importing this file).
METHODS = [
    {"name": "mp-quantile", "kind": "ptq", "title": "mixed precision (quantile PTQ)", "run": "mp_quantile",
     "needs": ["quantiles", "sensitivity"], "reads": ["distill.batch_size", "mixed", "sensitivity.w_bits"], "tables": [],
     "budgets": "mixed.budgets", "widths": "mixed.widths"},
]
PARAMS = {
    "sections": {"mixed": {
        "description": "mixed precision (issue 20): per-layer weight widths from the layer sensitivity, one variant per budget",
        "type": "object",
        "additionalProperties": False,
        "required": ["budgets", "widths", "keep_ends"],
        "properties": {
            "budgets": {"description": "average bits per weight, one variant each (the variant's w_bits)",
                        "type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "integer", "minimum": 2, "maximum": 8}},
            "widths": {"description": "the widths a layer's weights may take", "type": "array", "minItems": 1, "uniqueItems": True,
                       "items": {"type": "integer", "minimum": 2, "maximum": 8}},
            "keep_ends": {"description": "the first and the last weight layer at the widest width when the budget allows",
                          "type": "boolean"},
        },
    }},
    "requires": ["mixed.budgets", "mixed.widths"],
}
