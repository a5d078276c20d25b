"""The quantile sweep of the paper's Figure 1: qFID of vanilla quantile PTQ as a function of the
activation quantile pair, with the weight quantile pair as a second axis, for every arch.

One job per arch quantizes the generator once per (activation pair, weight pair, weight bits),
calibrates on the distillation set and measures qFID against the FP generator on the shared
evaluation inputs.  The best pair (lowest mean qFID over the swept bit widths) is written to
``best.json``; ``archs.<arch>.quantiles: sweep`` makes vanilla PTQ and BRECQ use it.
"""
from __future__ import annotations

import csv as csv_module
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from tqdm import tqdm

from .. import registry, resume
from ..config import Variant
from ..device import describe_runtime, resolve_device
from ..files import atomic_path, write_json
from ..quality import fid
from ..utils import torch_save
from .artifacts import feature_space, load_distill, load_eval_inputs, make_arch, segment_features, segments
from .stages import param_values
from .training import load_generator


def pair_label(pair) -> str:
    return f"{pair[0]:g}/{pair[1]:g}"


def run_sweep(cfg: Dict[str, Any], *, arch: str, fp: str, distill: str, inputs: str, features: str, fp_stats: str,
              csv: str, best: str) -> List[Dict[str, Any]]:
    """Quantize ``arch``'s FP generator with the swept method (the registry's ``sweep`` method:
    vanilla quantile PTQ) for every pair; qFID of each on the evaluation inputs; the best pair."""
    out_csv, out_best = csv, best
    scfg = cfg["sweep"]
    method = registry.swept_method()
    run_method = method.implementation()
    device = resolve_device(cfg)
    g = load_generator(cfg, arch, fp, device)
    distill_set = load_distill(distill, arch)
    inputs, extras = load_eval_inputs(inputs, arch)
    a = make_arch(cfg, arch)
    fs = feature_space(cfg, features, device)
    fp_stats = fid.load_stats(fp_stats, fs.name)
    grid = [(a, w, b) for a in scfg["activation"] for w in scfg["weight"] for b in scfg["w_bits"]]
    # Resumable: the rows of the pairs done are checkpointed beside the CSV after each pair (a job
    # killed at its wall time resumes at the next pair), resumed only by the same work.
    ckpt = Path(str(out_csv) + ".ckpt.pt")
    fingerprint = resume.job_fingerprint(param_values(cfg, "quantile_sweep", {"arch": arch}), [__name__, *resume.modules_of(a)],
                                         features=fs.name, inputs=resume.tensor_digest(g.state_dict(), distill_set, inputs, extras))
    saved = resume.load_checkpoint(ckpt, fingerprint)
    rows: List[Dict[str, Any]] = [] if saved is None else list(saved["rows"])
    if rows:
        print(f"resuming the sweep from {ckpt} after {len(rows)} of {len(grid)} variants")
    for a_pair, w_pair, bits in tqdm(grid[len(rows):], initial=len(rows), total=len(grid), desc=f"quantile sweep {arch}", unit="variant"):
        arch_cfg = {**cfg["archs"][arch], "quantiles": {"activation": {"upper": a_pair[0], "lower": a_pair[1]},
                                                         "weight": {"upper": w_pair[0], "lower": w_pair[1]}}}
        v = Variant(method.name, bool(scfg["per_channel"]), int(bits), 8)
        q, _, _ = run_method(g, distill_set["inputs"], v, arch_cfg, cfg, arch=a, extras=distill_set["extras"])
        # generated and scored segment by segment: one segment's images in memory at a time
        feats = np.concatenate([segment_features(cfg, a, q, inputs, extras, fs, sl)[0] for sl in segments(cfg, len(inputs))])
        rows.append({"arch": arch, "act_upper": a_pair[0], "act_lower": a_pair[1], "weight_upper": w_pair[0],
                     "weight_lower": w_pair[1], "w_bits": int(bits), "a_bits": 8, "per_channel": bool(scfg["per_channel"]),
                     "qfid": fid.frechet_distance(fid.statistics(feats), fp_stats), "feature_space": fs.name})
        del q, feats
        if len(rows) < len(grid):
            torch_save({"rows": rows, "fingerprint": fingerprint}, ckpt)
    with atomic_path(out_csv) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv_module.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    # best pair: the lowest qFID averaged over the swept weight bit widths
    scores: Dict[tuple, List[float]] = {}
    for r in rows:
        scores.setdefault((r["act_upper"], r["act_lower"], r["weight_upper"], r["weight_lower"]), []).append(r["qfid"])
    best = min(scores, key=lambda k: sum(scores[k]) / len(scores[k]))
    write_json(out_best, {"arch": arch, "activation": {"upper": best[0], "lower": best[1]},
                          "weight": {"upper": best[2], "lower": best[3]}, "mean_qfid": sum(scores[best]) / len(scores[best]),
                          "environment": describe_runtime(device)})
    resume.finish(ckpt)
    return rows


def figure(cfg: Dict[str, Any], *, sweeps: List[str], png: str, csv: str) -> None:
    """Figure 1: qFID vs the upper activation quantile, one panel per arch, one line per weight pair
    and bit width; also the concatenated table."""
    csv_paths, out_png, out_csv = sweeps, png, csv
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.concat([pd.read_csv(p) for p in csv_paths], ignore_index=True)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    archs = sorted(set(df["arch"]))
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.4), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        sub = df[df["arch"] == arch]
        for (wu, wl, bits), g in sub.groupby(["weight_upper", "weight_lower", "w_bits"]):
            g = g.sort_values("act_upper")
            x = [1 - u for u in g["act_upper"]]  # distance from the maximum, log scale
            x = [max(v, 1e-5) for v in x]
            ax.plot(x, g["qfid"], marker="o", label=f"w{bits}, weights {wu:g}/{wl:g}")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("1 - upper activation quantile (1e-5 = min/max)")
        ax.set_ylabel(f"qFID [{sub['feature_space'].iloc[0]}]")
        ax.set_title(arch)
        ax.legend(fontsize=6)
    fig.suptitle("Figure 1: vanilla PTQ qFID vs activation quantile (lower quantile symmetric)", fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
