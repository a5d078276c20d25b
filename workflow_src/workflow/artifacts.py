"""Reading the workflow's artifacts back: the arch object of the params, the evaluation inputs,
quantized generators, the FID feature space, the sweep's quantile pair, and the tags every
tracked run of a variant carries.  (The FP networks' file is :mod:`.training`'s.)"""
from __future__ import annotations

import json
import time
from collections import ChainMap
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, MutableMapping, Optional, Tuple

import numpy as np
import torch

from .. import registry
from ..config import FP, Variant
from ..device import map_tensors
from ..quality import fid
from ..quant import QuantSpec, quantize_model
from ..utils import torch_load


DEFAULT_SEGMENT = 2048  # runtime.eval_segment


def segments(cfg: Dict[str, Any], n: int, start: int = 0) -> Iterator[slice]:
    """The samples ``start..n`` in segments of ``runtime.eval_segment`` images, rounded down to a
    multiple of ``eval.batch_size`` (so the generator sees the same batches however the run is cut)."""
    bs = int(cfg["eval"]["batch_size"])
    step = max(bs, int(cfg.get("runtime", {}).get("eval_segment", DEFAULT_SEGMENT)) // bs * bs)
    for s in range(start, n, step):
        yield slice(s, min(s + step, n))


def segment_features(cfg: Dict[str, Any], arch, model: torch.nn.Module, inputs: torch.Tensor, extras: Optional[Dict[str, Any]],
                     fs: fid.FeatureSpace, sl: slice, keep: int = 0) -> Tuple[np.ndarray, torch.Tensor, float]:
    """Generate samples ``sl`` (each with its extras) and return their features (float64, on the
    host), the first ``keep`` images (on the CPU) and the generation time: memory holds one
    segment's images, never the whole evaluation set's."""
    bs = int(cfg["eval"]["batch_size"])
    t0 = time.time()
    images = arch.generate(model, inputs[sl], bs, None if extras is None else map_tensors(lambda t: t[sl], extras))
    seconds = time.time() - t0
    feats = fs.extract(images.split(bs), total=(len(images) + bs - 1) // bs)
    return feats, images[:keep].cpu(), seconds


def make_arch(cfg: Dict[str, Any], arch: str):
    """The GANArch of ``arch`` built from its params (``archs.<arch>``)."""
    acfg = cfg["archs"][arch]
    return registry.arch(arch).implementation()(acfg["model"], acfg["train"], acfg["resolution"])


def load_eval_inputs(path: str, arch: str) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """``(inputs, extras)`` of an eval inputs file written by rule eval_inputs for ``arch``."""
    saved = torch_load(path)
    if saved.get("arch") != arch:
        raise ValueError(f"{path!r} holds eval inputs of arch {saved.get('arch')!r}, expected {arch!r}")
    return saved["inputs"], saved.get("extras", {})


def load_distill(path: str, arch: str) -> Dict[str, Any]:
    """The distillation set written by rule distill for ``arch`` (inputs, extras, outputs)."""
    saved = torch_load(path)
    if saved.get("arch") != arch:
        raise ValueError(f"{path!r} holds the distillation set of arch {saved.get('arch')!r}, expected {arch!r}")
    if "extras" not in saved:
        raise ValueError(f"{path!r} has no per-sample extras (written before per-sample StyleGAN noise): rerun distill")
    return saved


def load_quantized(cfg: Dict[str, Any], arch: str, path: str, device: torch.device | None = None) -> torch.nn.Module:
    """A quantized generator written by rule quantize or qat, in eval mode, on ``device`` (default:
    the CPU)."""
    return read_quantized(cfg, arch, path, device)[0]


def read_quantized(cfg: Dict[str, Any], arch: str, path: str, device: torch.device | None = None) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """:func:`load_quantized` and the record the quantize stage saved with the model (``info``)."""
    saved = torch_load(path)
    if saved.get("arch") != arch:
        raise ValueError(f"{path!r} holds a quantized {saved.get('arch')!r} model, expected {arch!r}")
    registry.method(Variant.parse(saved["variant"]).method).implementation()  # its file may register its observers
    qmodel = quantize_model(make_arch(cfg, arch).build_generator().eval(), QuantSpec.from_dict(saved["spec"]))
    qmodel.load_state_dict(saved["state_dict"])
    return qmodel.to(device).eval(), dict(saved.get("info") or {})


def feature_space(cfg: Dict[str, Any], features_path: str, device: torch.device | None = None) -> fid.FeatureSpace:
    return fid.load_feature_space(cfg["features"]["kind"], features_path, device)


def pair_text(pair: Dict[str, Dict[str, float]]) -> str:
    """``a U/L; w U/L``: a quantile pair as results.csv prints it."""
    return "; ".join(f"{k[0]} {pair[k]['upper']:g}/{pair[k]['lower']:g}" for k in ("activation", "weight"))


def arch_params(cfg: Dict[str, Any], arch: str, sweep_best: str | None = None, v: Optional[Variant] = None) -> MutableMapping[str, Any]:
    """``archs.<arch>`` with ``quantiles`` resolved for variant ``v``: the method's own pair if it
    sets one (:func:`registry.own_quantiles`), else the arch's; ``sweep`` is replaced by the quantile sweep's
    pair for ``v``'s weight width.  ``quantiles_from`` says where the pair came from.  A mixed-precision
    variant (registry ``budgets``) gets ``quantiles_by_width`` ({bits: pair}, every width its layers may
    take) and, as ``quantiles``, the widest width's pair."""
    if v is not None and registry.method(v.method).mixed:
        widths = registry.method(v.method).layer_widths(cfg, v.w_bits)
        each = {b: arch_params(cfg, arch, sweep_best, replace(v, method=registry.swept_method().name, w_bits=b)) for b in widths}
        acfg = ChainMap({}, cfg["archs"][arch])
        acfg["quantiles_by_width"] = {b: a["quantiles"] for b, a in each.items()}
        acfg["quantiles"] = each[widths[-1]]["quantiles"]
        froms = [each[b]["quantiles_from"].split(" ", 2) for b in reversed(widths)]
        if all(f[0] == "sweep" and len(f) == 3 and f[2] == froms[0][2] for f in froms):  # "sweep w8/w4 (how it chose)"
            acfg["quantiles_from"] = f"sweep {'/'.join(f[1] for f in froms)} {froms[0][2]}"
        else:
            acfg["quantiles_from"] = "; ".join(dict.fromkeys(" ".join(f) for f in froms))
        return acfg
    acfg: MutableMapping[str, Any] = ChainMap({}, cfg["archs"][arch])  # the resolved pair over the params: none copied (read)
    own, key = registry.own_quantiles(cfg, arch, v.method) if v is not None else (None, "")
    if own is not None:
        acfg["quantiles"], acfg["quantiles_from"] = own, key
    elif acfg["quantiles"] == "sweep":
        if not sweep_best:
            raise ValueError(f"archs.{arch}.quantiles is 'sweep': pass the quantile sweep's best.json (--quantiles)")
        best = json.loads(Path(sweep_best).read_text())
        if "w_bits" not in best:
            raise ValueError(f"{sweep_best!r} holds no pair per weight width (written before the sweep chose one per width "
                             "on validation inputs): rerun quantile_sweep")
        widths = sorted(best["w_bits"], key=int)
        if v is None or str(v.w_bits) not in best["w_bits"]:
            raise ValueError(f"{sweep_best!r} has pairs for weight widths {widths}, not for "
                             f"{'this variant' if v is None else f'{v.name} (w{v.w_bits})'}: rerun quantile_sweep")
        pick = best["w_bits"][str(v.w_bits)]
        acfg["quantiles"] = {"activation": pick["activation"], "weight": pick["weight"]}
        acfg["quantiles_from"] = f"sweep w{v.w_bits} ({best.get('selected_on', 'validation')})"
    else:
        acfg["quantiles_from"] = f"archs.{arch}.quantiles"
    return acfg


def variant_tags(arch: str, v: Variant | None) -> Dict[str, Any]:
    """What identifies a variant's row in results.csv and its runs in MLflow (``None``: FP)."""
    if v is None:
        return {"arch": arch, "variant": FP, "method": FP, "per_channel": None, "w_bits": 32, "a_bits": 32}
    return {"arch": arch, "variant": v.name, "method": v.method, "per_channel": v.per_channel, "w_bits": v.w_bits, "a_bits": v.a_bits}
