"""Sample figures in the layout of the paper's Figures 2-4: one row per method, samples at 8-bit
and 4-bit weights (8-bit activations, per-tensor weights where the matrix has them) on the same
inputs, FID in each row's caption.

Display only: latent archs use the truncation trick (``figures.truncation``: StyleGAN's psi in W,
SAGAN's bound on |z|) to avoid sampling from extreme regions, as the paper's figures do; FID and
qFID are always computed without it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from ..config import FP, Variant
from ..device import resolve_device
from ..figures import fig_title
from ..files import atomic_path
from ..workflow.artifacts import load_eval_inputs, load_quantized, make_arch
from ..workflow.stages import figure_variants
from ..workflow.training import load_generator
from .tables import FP_TITLE, arch_title, fmt_value, method_title


def _caption(metrics: Dict[str, Any]) -> str:
    std = metrics.get("fid_std")
    return fmt_value(metrics["fid"]) + (f" ± {fmt_value(std)}" if isinstance(std, (int, float)) and std == std else "")


def _strip(images: torch.Tensor) -> torch.Tensor:
    x = ((images.detach().cpu().float().clamp(-1, 1) + 1) / 2)
    return torch.cat(list(x), dim=2).permute(1, 2, 0)  # H x (N W) x 3


@torch.no_grad()
def sample_figure(cfg: Dict[str, Any], *, arch: str, models: List[str], metrics: List[str], fp: str, inputs: str, out: str) -> None:
    """One row per method (``figure_variants``): the quantized ``models`` beside the FP generator
    ``fp`` on the same display inputs, FID from ``metrics`` in the captions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arch_name, fp_path, inputs_path = arch, fp, inputs
    device = resolve_device(cfg)
    model_of = {Path(p).stem: p for p in models}
    metrics_of = {Path(p).stem: p for p in metrics}
    fcfg = cfg["figures"]
    n, trunc = int(fcfg["samples"]), float(fcfg["truncation"])
    arch = make_arch(cfg, arch_name)
    if arch.input_kind == "latent":  # display latents (truncated), and their own per-sample extras
        g = torch.Generator().manual_seed(cfg["seed"] + 505)
        inputs = arch.display_inputs(n, g, trunc)
        extras = arch.sample_extras(n, g)
    else:  # the first eval inputs, with their saved extras
        inputs, extras = load_eval_inputs(inputs_path, arch_name)
        inputs = inputs[:n]

    def show(model) -> torch.Tensor:  # the same inputs and extras for FP and every variant
        with arch.use_extras(model, extras, slice(0, len(inputs))):
            return _strip(arch.display(model, inputs, trunc))

    fp_metrics = json.loads(Path(metrics_of[FP]).read_text())
    rows: List[Tuple[str, List[torch.Tensor]]] = [
        (f"{FP_TITLE}: FID {_caption(fp_metrics)}", [show(load_generator(cfg, arch_name, fp_path, device))])]
    if arch.input_kind == "image":  # what an image-to-image generator translated, above its outputs
        rows.insert(0, ("source images (the generators' inputs)", [_strip(inputs)]))
    by_method: Dict[str, List[Variant]] = {}
    for v in figure_variants(cfg):
        by_method.setdefault(v.method, []).append(v)
    for method, vs in by_method.items():
        strips, fids = [], []
        for v in vs:
            model = load_quantized(cfg, arch_name, model_of[v.name], device)
            strips.append(show(model))
            fids.append(f"w{v.w_bits}: {_caption(json.loads(Path(metrics_of[v.name]).read_text()))}")
        gran = "per-channel" if vs[0].per_channel else "per-tensor"
        rows.append((f"{method_title(method)} ({gran}, a{vs[0].a_bits}) FID " + " / ".join(fids), strips))
    width = max(len(s) for _, s in rows)
    h, w = rows[0][1][0].shape[:2]
    fig, axes = plt.subplots(len(rows), width, figsize=(max(6, width * w / 28), 0.5 + len(rows) * max(0.9, h / 28)), squeeze=False)
    for r, (label, strips) in enumerate(rows):
        for c in range(width):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(strips):
                ax.imshow(strips[c].numpy(), interpolation="nearest")
            else:
                ax.axis("off")
        axes[r, 0].set_title(label, fontsize=7, loc="left", pad=2)
    how = arch.truncation_doc.format(t=trunc)
    fig_title(fig, f"{arch_title(arch_name)}: samples by method, weight widths left to right as each caption lists them; "
                   f"display only: {how} (FID without)", fontsize=8)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
