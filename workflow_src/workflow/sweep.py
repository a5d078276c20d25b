"""The quantile sweep of the paper's Figure 1: qFID of vanilla quantile PTQ as a function of the
activation quantile pair, with the weight quantile pair as a second axis, for every arch.

One job per arch quantizes the generator once per (activation pair, weight pair, weight width),
calibrates on the distillation set and measures qFID against the FP generator, both on the arch's
validation inputs (:func:`.distill.validation_inputs`): never the evaluation inputs or the real
statistics the report scores, so the pair it picks is not chosen on the test set.  It sweeps every
weight width at which the matrix has a method that reads the pair, and at the layer sensitivity's
(:func:`sweep_widths`), and picks
the pair with the lowest validation qFID per width; ``best.json`` holds one pair per width and
``archs.<arch>.quantiles: sweep`` makes those methods use their width's pair.
"""
from __future__ import annotations

import csv as csv_module
from collections import ChainMap
from pathlib import Path
from typing import Any, Dict, List

from tqdm import tqdm

from .. import registry, resume
from ..config import Variant, variants
from ..device import describe_runtime, resolve_device
from ..figures import fig_title
from ..files import atomic_path, write_json
from ..utils import torch_save
from . import tracking
from .artifacts import feature_space, load_distill, make_arch
from .distill import ValidationQFID
from .stages import job_values
from .training import load_generator


def pair_label(pair) -> str:
    return f"{pair[0]:g}/{pair[1]:g}"


def sweep_widths(cfg: Dict[str, Any]) -> List[int]:
    """The weight widths the sweep runs at: every width of the matrix at which some method reads
    the quantile pair (a mixed-precision variant: each width its layers may take), and the layer
    sensitivity's (it quantizes with the swept method), widest first."""
    widths = {b for v in variants(cfg) if (m := registry.method(v.method)).may_need("quantiles") for b in m.layer_widths(cfg, v.w_bits)}
    return sorted(widths | {int(cfg["sensitivity"]["w_bits"])}, reverse=True)


def choose(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per weight width (a string key, as in JSON), the pair with the lowest validation qFID;
    ties go to the pair swept first."""
    best: Dict[str, Dict[str, Any]] = {}
    for r in rows:
        k = str(int(r["w_bits"]))
        if k not in best or r["qfid"] < best[k]["qfid"]:
            best[k] = {"activation": {"upper": r["act_upper"], "lower": r["act_lower"]},
                       "weight": {"upper": r["weight_upper"], "lower": r["weight_lower"]}, "qfid": r["qfid"]}
    return best


def run_sweep(cfg: Dict[str, Any], *, arch: str, fp: str, distill: str, data: str, features: str,
              csv: str, best: str) -> List[Dict[str, Any]]:
    """Quantize ``arch``'s FP generator with the swept method (the registry's ``sweep`` method:
    vanilla quantile PTQ) for every pair and width; qFID of each against the FP generator on the
    validation inputs; the best pair per width."""
    out_csv, out_best = csv, best
    scfg = cfg["sweep"]
    method = registry.swept_method()
    run_method = method.implementation()
    device = resolve_device(cfg)
    g = load_generator(cfg, arch, fp, device)
    distill_set = load_distill(distill, arch)
    a = make_arch(cfg, arch)
    fs = feature_space(cfg, features, device)
    score = ValidationQFID(cfg, arch, g, data, fs)  # the FP generator on the same validation inputs is the reference
    inputs, extras = score.inputs, score.extras
    widths = sweep_widths(cfg)
    if not widths:
        raise ValueError("the quantile sweep has no weight width to run at: no method of 'matrix.methods' reads the quantile pair")
    grid = [(a, w, b) for b in widths for a in scfg["activation"] for w in scfg["weight"]]
    # Resumable: the rows of the pairs done are checkpointed beside the CSV after each pair (a job
    # killed at its wall time resumes at the next pair), resumed only by the same work.
    ckpt = Path(str(out_csv) + ".ckpt.pt")
    fingerprint = resume.job_fingerprint(job_values(cfg, "quantile_sweep", {"arch": arch}), [__name__, ValidationQFID.__module__, *resume.modules_of(a)],
                                         features=fs.name, widths=widths,
                                         inputs=resume.tensor_digest(g.state_dict(), distill_set, inputs, extras))
    saved = resume.load_checkpoint(ckpt, fingerprint)
    rows: List[Dict[str, Any]] = [] if saved is None else list(saved["rows"])
    if rows:
        print(f"resuming the sweep from {ckpt} after {len(rows)} of {len(grid)} variants")

    for a_pair, w_pair, bits in tqdm(grid[len(rows):], initial=len(rows), total=len(grid), desc=f"quantile sweep {arch}", unit="variant"):
        arch_cfg = ChainMap({"quantiles": {"activation": {"upper": a_pair[0], "lower": a_pair[1]},  # the arch's params,
                                           "weight": {"upper": w_pair[0], "lower": w_pair[1]}}}, cfg["archs"][arch])  # this pair over them
        v = Variant(method.name, bool(scfg["per_channel"]), int(bits), 8)
        q, _, _ = run_method(g, distill_set["inputs"], v, arch_cfg, cfg, arch=a, extras=distill_set["extras"])
        rows.append({"arch": arch, "act_upper": a_pair[0], "act_lower": a_pair[1], "weight_upper": w_pair[0],
                     "weight_lower": w_pair[1], "w_bits": int(bits), "a_bits": 8, "per_channel": bool(scfg["per_channel"]),
                     "qfid": score(q), "feature_space": fs.name,
                     "split": "validation", "samples": len(inputs)})
        del q
        if len(rows) < len(grid):
            torch_save({"rows": rows, "fingerprint": fingerprint}, ckpt)
    with atomic_path(out_csv) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv_module.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    with tracking.run("quantile_sweep", cfg, {"arch": arch, "method": method.name}, job_values(cfg, "quantile_sweep", {"arch": arch})) as run:
        run.log_step_metrics([{"step": i, "validation_qfid": r["qfid"]} for i, r in enumerate(rows)])  # step: the pair's place in the CSV
        run.log_metrics({f"best_w{b}_validation_qfid": r["qfid"] for b, r in choose(rows).items()})
        run.log_artifact(out_csv)
    write_json(out_best, {"arch": arch, "w_bits": choose(rows),
                          "selected_on": f"validation qFID against the FP generator on {len(inputs)} validation inputs "
                                         f"({VALIDATION_NOTE[a.input_kind]}), {'per-channel' if scfg['per_channel'] else 'per-tensor'} weights, a8",
                          "environment": describe_runtime(device)})
    resume.finish(ckpt)
    return rows


VALIDATION_NOTE = {"latent": "latents of their own seed, not the evaluation latents",
                   "image": "training images held out of the distillation set, not the test split"}


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
        ax.set_ylabel(f"validation qFID [{sub['feature_space'].iloc[0]}]")
        ax.set_title(arch)
        ax.legend(fontsize=6)
    fig_title(fig, "Figure 1: vanilla PTQ qFID vs activation quantile (lower quantile symmetric), "
                   "on validation inputs (not the evaluation inputs)", fontsize=9)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
