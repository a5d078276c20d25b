"""Stages of rules/evaluate.smk: FID against real test images and qFID against the FP generator
on the same saved inputs."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..device import describe_runtime, resolve_device
from .. import resume
from ..config import FP, Variant
from ..files import atomic_path, write_json
from ..quality import fid
from ..quant import size
from ..utils import seed_everything, torch_save
from . import tracking
from .artifacts import feature_space, load_eval_inputs, make_arch, read_quantized, segment_features, segments, variant_tags
from .stages import job_values
from .training import load_generator


def save_grid(images: torch.Tensor, out: str | Path) -> None:
    """One row of [-1, 1] images as a PNG."""
    x = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    row = torch.cat(list(x), dim=2).permute(1, 2, 0).numpy()  # H x (N W) x 3
    with atomic_path(out) as tmp:
        Image.fromarray(row).save(tmp, format="PNG")


def evaluate_fp(cfg: Dict[str, Any], *, arch: str, model: str, inputs: str, features: str, real_stats: str, metrics: str,
                stats: str, samples: str) -> None:
    """FID of the FP generator; its feature statistics (``stats``) are every variant's qFID reference."""
    _evaluate(cfg, arch, None, model, inputs, features, real_stats, stats, metrics, samples)


def evaluate(cfg: Dict[str, Any], *, arch: str, variant: str, model: str, inputs: str, features: str, real_stats: str,
             fp_stats: str, metrics: str, samples: str) -> None:
    """FID and qFID (against the FP statistics ``fp_stats``) of one quantized variant."""
    _evaluate(cfg, arch, Variant.parse(variant), model, inputs, features, real_stats, fp_stats, metrics, samples)


def _evaluate(cfg: Dict[str, Any], arch: str, v: Optional[Variant], model_path: str, inputs_path: str, features_path: str,
              real_stats_path: str, fp_stats_path: str, out: str, samples_out: str) -> None:
    """For the FP generator (``v`` None) the FP feature statistics are written to
    ``fp_stats_path``; for a quantized variant they are read from it."""
    seed_everything(cfg["seed"])
    device = resolve_device(cfg)
    fs = feature_space(cfg, features_path, device)
    tags = variant_tags(arch, v)
    with tracking.run("evaluate", cfg, {**tags, "feature_space": fs.name}, job_values(cfg, *_job(arch, v))) as run:
        metrics = _scores(cfg, arch, v, fs, model_path, inputs_path, real_stats_path, fp_stats_path, samples_out, out, device)
        environment = describe_runtime(device)  # where and how it computed (issue 15)
        write_json(out, {**tags, "seed": cfg["seed"], **metrics, "feature_space": fs.name, "profile": cfg["profile"], "environment": environment})
        run.log_params({"environment": environment})
        run.log_metrics({k: metrics[k] for k in ("fid", "qfid", "fid_std", "qfid_std", "generate_seconds")})
        run.log_artifact(out)
        run.log_artifact(samples_out)


def _job(arch: str, v: Optional[Variant]):
    """The rule and wildcards of the job that evaluates ``v`` (None: the FP generator)."""
    return ("evaluate_fp", {"arch": arch}) if v is None else ("evaluate", {"arch": arch, "variant": v.name})


def _scores(cfg, arch, v, fs, model_path, inputs_path, real_stats_path, fp_stats_path, samples_out, out, device=None) -> Dict[str, Any]:
    info: Dict[str, Any] = {}
    if v is None:
        model = load_generator(cfg, arch, model_path, device)
    else:
        model, info = read_quantized(cfg, arch, model_path, device)
    inputs, extras = load_eval_inputs(inputs_path, arch)
    a, n, keep = make_arch(cfg, arch), len(inputs), int(cfg["eval"]["grid"])
    # Resumable: after each segment the features so far are checkpointed beside the metrics (a job
    # killed at its wall time resumes at the next segment), resumed only by the same work.
    ckpt = Path(str(out) + ".ckpt.pt")
    fingerprint = resume.job_fingerprint(job_values(cfg, *_job(arch, v)), [__name__, *resume.modules_of(a)], features=fs.name,
                                         inputs=resume.tensor_digest(model.state_dict(), inputs, extras))
    saved = resume.load_checkpoint(ckpt, fingerprint)
    done, chunks, grids, gen_seconds = 0, [], [], 0.0
    if saved is not None:
        done, chunks, grids, gen_seconds = int(saved["done"]), [saved["features"].numpy()], [saved["grid"]], float(saved["generate_seconds"])
        print(f"resuming evaluation from {ckpt} at sample {done} of {n}")
    for sl in tqdm(list(segments(cfg, n, done)), desc=f"evaluate {arch} {v.name if v else FP}", unit="segment"):
        feats, images, seconds = segment_features(cfg, a, model, inputs, extras, fs, sl, keep - sum(len(g) for g in grids))
        chunks.append(feats)
        grids.append(images)
        gen_seconds += seconds
        if sl.stop < n:
            torch_save({"done": sl.stop, "features": torch.from_numpy(np.concatenate(chunks)), "grid": torch.cat(grids),
                        "generate_seconds": gen_seconds, "fingerprint": fingerprint}, ckpt)
    feats = np.concatenate(chunks)
    stats = fid.statistics(feats)
    real = fid.load_stats(real_stats_path, fs.name)
    fid_real = fid.frechet_distance(stats, real)
    n_boot, seed = int(cfg["eval"].get("bootstrap", 0)), cfg["seed"] + 404
    fid_std = fid.bootstrap_std(feats, real, n_boot, seed)
    if v is None:
        fid.save_stats(fp_stats_path, feats, fs.name, keep_features=n_boot > 1)
        qfid, qfid_std = 0.0, 0.0
    else:
        qfid = fid.frechet_distance(stats, fid.load_stats(fp_stats_path, fs.name))
        qfid_std = fid.bootstrap_std(feats, fid.load_features(fp_stats_path), n_boot, seed) if n_boot > 1 else float("nan")
    save_grid(torch.cat(grids), samples_out)
    resume.finish(ckpt)
    return {"fid": fid_real, "qfid": qfid, "fid_std": fid_std, "qfid_std": qfid_std, "bootstrap": n_boot,
            "n_samples": int(n), "generate_seconds": gen_seconds,
            # the quantile pair the method started from and where it came from (methods that read one)
            "quantiles": info.get("quantiles", ""), "quantiles_from": info.get("quantiles_from", ""),
            # trained methods: the epoch kept (qat.select: best picks it on held-out samples; -1: the PTQ start)
            "selected_epoch": info.get("selected_epoch"), "selected_on": selected_on(info), "distill_loss": info.get("distill_loss", ""),
            # the generator's size: bits per quantized weight (32 for FP) and its weights' bytes at their widths (quant/size.py)
            "avg_w_bits": size.avg_w_bits(model), "size_bytes": size.size_bytes(model)}


def selected_on(info: Dict[str, Any]) -> str:
    """What chose a trained model's epoch (its ``info``): ``validation qfid``, ``validation loss`` or
    ``last epoch``; empty for methods that do not train."""
    if "select" not in info:
        return ""
    return f"validation {info.get('select_on', 'loss')}" if info["select"] == "best" else "last epoch"


FLOOR_SEED = 606  # offset from `seed`: the noise floor's fresh latents (distill 101, eval 202, validation 505)


def noise_floor(cfg: Dict[str, Any], *, arch: str, model: str, fp_stats: str, data: str, features: str, real_test: str,
                real_train: str, out: str) -> None:
    """What the feature space cannot tell apart, printed beside every table: ``qfid_floor``, the
    Fréchet distance between the FP generator on the evaluation inputs (``fp_stats``) and the same
    FP generator on other inputs (latents of their own seed and the evaluation count; image-to-image
    GANs: the training images held out for validation), so a qFID below it is indistinguishable from
    FP; and ``fid_floor``, the distance between the real images of the test split and of the
    training split (``real_test`` vs ``real_train``)."""
    from .distill import validation_inputs

    seed_everything(cfg["seed"])
    device = resolve_device(cfg)
    fs = feature_space(cfg, features, device)
    a = make_arch(cfg, arch)
    if a.input_kind == "latent":
        g = torch.Generator().manual_seed(cfg["seed"] + FLOOR_SEED)
        inputs = a.sample_inputs(int(cfg["eval"]["n_samples"]), g)
        extras, other = a.sample_extras(len(inputs), g), f"{len(inputs)} latents of another seed"
    else:
        inputs, extras = validation_inputs(cfg, arch, data)
        other = f"{len(inputs)} training images held out of distillation"
    g_fp = load_generator(cfg, arch, model, device)
    feats = np.concatenate([segment_features(cfg, a, g_fp, inputs, extras, fs, sl)[0]
                            for sl in tqdm(list(segments(cfg, len(inputs))), desc=f"noise floor {arch}", unit="segment")])
    reference = fid.load_stats(fp_stats, fs.name)
    write_json(out, {"arch": arch, "seed": cfg["seed"], "feature_space": fs.name,
                     "qfid_floor": fid.frechet_distance(fid.statistics(feats), reference), "qfid_floor_inputs": other,
                     "fid_floor": fid.frechet_distance(fid.load_stats(real_test, fs.name), fid.load_stats(real_train, fs.name)),
                     "fid_floor_splits": f"{Path(real_test).stem} vs {Path(real_train).stem}",
                     "environment": describe_runtime(device)})
