"""Layer sensitivity: which layers break a quantized generator (beyond the paper; issue 20).

One job per arch quantizes the FP generator once with the swept method (vanilla quantile PTQ, the
arch's pair for the sensitivity's weight width) at ``sensitivity.w_bits`` / ``sensitivity.a_bits``,
then turns every quantizer off and scores the generator with one unit's quantizers on at a time:

* per weight layer (conv, linear): ``weight`` (its weights at w bits), ``input`` (the activation
  entering it at a bits) and ``layer`` (both), the damage when only that layer is quantized;
* per quantized operation (residual add, noise injection, AdaIN, attention products, ...):
  ``operands`` (every operand at a bits).

The score is qFID against the FP generator on the first ``sensitivity.samples`` validation inputs
(:class:`.distill.ValidationQFID`: never the evaluation inputs), with its bootstrap spread; a row
``all`` scores every quantizer on.  Rows are checkpointed after each unit, so a killed job resumes.
``sensitivity/<arch>.csv`` holds the rows; :func:`figure` ranks them per arch.
"""
from __future__ import annotations

import csv as csv_module
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from torch import nn
from tqdm import tqdm

from .. import registry, resume
from ..config import Variant
from ..device import describe_runtime, resolve_device
from ..figures import fig_title
from ..files import atomic_path
from ..quant import QuantConv2d, QuantLinear, QuantOp
from ..quant.quantizer import FakeQuantizer
from ..utils import torch_save
from . import tracking
from .artifacts import arch_params, feature_space, load_distill, make_arch
from .distill import ValidationQFID
from .stages import job_values
from .training import load_generator

Unit = Tuple[str, str, str, List[FakeQuantizer]]  # (layer, type, operand, quantizers)


def units(q: nn.Module) -> List[Unit]:
    """Every unit of the quantized generator ``q`` whose damage is measured, in module order."""
    out: List[Unit] = []
    for name, m in q.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            kind = "Conv2d" if isinstance(m, QuantConv2d) else "Linear"
            out += [(name, kind, "weight", [m.weight_quant]), (name, kind, "input", [m.input_quant]),
                    (name, kind, "layer", [m.weight_quant, m.input_quant])]
        elif isinstance(m, QuantOp):
            out.append((name, type(m.op).__name__, "operands", list(m.operand_quant)))
    return out


def _quantizers(q: nn.Module) -> List[FakeQuantizer]:
    return [m for m in q.modules() if isinstance(m, FakeQuantizer)]


def layer_sensitivity(q: nn.Module, score: Callable[[nn.Module], Dict[str, float]], todo: List[Unit],
                      on_row: Callable[[Dict[str, Any]], None] = lambda row: None) -> List[Dict[str, Any]]:
    """``score(q)`` with only each unit of ``todo`` quantized (every other quantizer of ``q`` off),
    one row per unit; ``q``'s quantizers are left as they were."""
    every = _quantizers(q)
    was = [fq.enabled for fq in every]
    rows = []
    try:
        for layer, kind, operand, qs in tqdm(todo, desc="layer sensitivity", unit="unit"):
            for fq in every:
                fq.enabled = False
            for fq in qs:
                fq.enabled = True
            row = {"layer": layer, "type": kind, "operand": operand, **score(q)}
            rows.append(row)
            on_row(row)
    finally:
        for fq, on in zip(every, was):
            fq.enabled = on
    return rows


def run_sensitivity(cfg: Dict[str, Any], *, arch: str, fp: str, distill: str, data: str, features: str, csv: str,
                    quantiles: str | None = None) -> List[Dict[str, Any]]:
    """The layer sensitivity of ``arch``'s generator (module docstring), written to ``csv``."""
    scfg = cfg["sensitivity"]
    method = registry.swept_method()
    pc, w_bits, a_bits = bool(scfg["per_channel"]), int(scfg["w_bits"]), int(scfg["a_bits"])
    v = Variant(method.name, pc, w_bits, a_bits)
    acfg = arch_params(cfg, arch, quantiles, Variant(method.name, pc, w_bits, 8))  # the pair of the weight width (a8 sweep)
    device = resolve_device(cfg)
    g = load_generator(cfg, arch, fp, device)
    distill_set = load_distill(distill, arch)
    a = make_arch(cfg, arch)
    fs = feature_space(cfg, features, device)
    score = ValidationQFID(cfg, arch, g, data, fs, limit=int(scfg["samples"]))
    q, _, _ = method.implementation()(g, distill_set["inputs"], v, acfg, cfg, arch=a, extras=distill_set["extras"])
    todo = units(q)[:scfg["max_units"]] + [("all", "generator", "all", _quantizers(q))]
    ckpt = Path(str(csv) + ".ckpt.pt")
    job_params = job_values(cfg, "sensitivity", {"arch": arch})
    fingerprint = resume.job_fingerprint(job_params, [__name__, ValidationQFID.__module__, *resume.modules_of(a)], features=fs.name,
                                         quantiles=dict(acfg["quantiles"]), inputs=resume.tensor_digest(g.state_dict(), distill_set, score.digest))
    saved = resume.load_checkpoint(ckpt, fingerprint)
    rows: List[Dict[str, Any]] = [] if saved is None else list(saved["rows"])
    if rows:
        print(f"resuming the layer sensitivity from {ckpt} after {len(rows)} of {len(todo)} units")
    common = {"arch": arch, "w_bits": w_bits, "a_bits": a_bits, "per_channel": pc, "feature_space": fs.name,
              "split": "validation", "samples": len(score.inputs)}

    def keep(row: Dict[str, Any]) -> None:
        rows.append({**common, **row})
        if len(rows) < len(todo):
            torch_save({"rows": rows, "fingerprint": fingerprint}, ckpt)

    layer_sensitivity(q, score.score, todo[len(rows):], keep)
    rank = sorted((r for r in rows if r["operand"] in ("layer", "operands")), key=lambda r: -r["qfid"])
    for i, r in enumerate(rank):
        r["rank"] = i + 1
    fields = list(common) + ["layer", "type", "operand", "qfid", "qfid_std", "rank"]
    with atomic_path(csv) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv_module.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows({k: r.get(k, "") for k in fields} for r in rows)
    with tracking.run("sensitivity", cfg, {"arch": arch, "method": method.name}, job_params) as run:
        run.log_params({"quantiles": dict(acfg["quantiles"]), "quantiles_from": acfg["quantiles_from"], "environment": describe_runtime(device)})
        run.log_metrics({"all_validation_qfid": rows[-1]["qfid"], "units": len(rows) - 1,
                         **({"top_validation_qfid": rank[0]["qfid"]} if rank else {})})
        run.log_artifact(csv)
    resume.finish(ckpt)
    return rows


def figure(cfg: Dict[str, Any], *, tables: List[str], png: str, csv: str) -> None:
    """The layers ranked by the damage they do alone, one panel per arch (the ``sensitivity.top``
    worst of the ``layer`` and ``operands`` rows, with the weight-only and input-only damage of each
    layer beside it and the bootstrap spread), and every arch's rows in one table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.concat([pd.read_csv(p) for p in tables], ignore_index=True)
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    archs = list(dict.fromkeys(df["arch"]))
    top = int(cfg["sensitivity"]["top"])
    fig, axes = plt.subplots(1, len(archs), figsize=(5.2 * len(archs), 0.32 * top + 1.6), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        sub = df[df["arch"] == arch]
        ranked = sub[sub["operand"].isin(["layer", "operands"])].sort_values("qfid", ascending=False).head(top)[::-1]
        y = range(len(ranked))
        ax.barh(y, ranked["qfid"], xerr=ranked["qfid_std"], color="tab:red", alpha=0.75, label="alone: layer / operation")
        for operand, marker in (("weight", "o"), ("input", "s")):
            part = sub[sub["operand"] == operand].set_index("layer")
            xs = [part["qfid"].get(layer, float("nan")) for layer in ranked["layer"]]
            ax.plot(xs, list(y), marker, color="k", markersize=3.5, linestyle="none", label=f"{operand} only")
        ax.set_yticks(list(y))
        ax.set_yticklabels([f"{layer} ({kind})" for layer, kind in zip(ranked["layer"], ranked["type"])], fontsize=6)
        every = sub[sub["operand"] == "all"]["qfid"]
        bits = sub.iloc[0]
        ax.set_title(f"{arch}: w{bits['w_bits']}a{bits['a_bits']}" + (f", all quantized {every.iloc[0]:.3g}" if len(every) else ""), fontsize=8)
        ax.set_xlabel(f"validation qFID [{bits['feature_space']}], only this unit quantized", fontsize=7)
        ax.legend(fontsize=6, loc="lower right")
    fig_title(fig, "Layer sensitivity: qFID when only one layer or operation is quantized (validation inputs; bars: bootstrap std)", fontsize=9)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
