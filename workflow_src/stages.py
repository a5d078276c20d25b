"""The workflow's stages, one function each; ``cli.py`` maps ``python -m workflow_src STAGE`` to them.

Artifact paths come from the caller (Snakemake or DVC); nothing here knows the directory layout.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from . import data as datasets
from . import tracking
from .config import FP, Variant, arch_dataset
from .metrics import fid
from .methods import METHOD_PARAMS, QAT_METHODS, get_method
from .methods.qat import qat_params
from .quant import QuantSpec, quantize_model
from .train import load_discriminator, load_generator, make_arch, train
from .utils import seed_everything, torch_load, torch_save, write_json


# ------------------------------------------------------------------ features and real statistics
def train_features(cfg: Dict[str, Any], data_dirs: List[str], out: str, device: torch.device | None = None) -> None:  # issue 15: device passed through
    """Train the tiny feature network on the training splits of ``data_dirs``."""
    from .metrics.featurenet import train_featurenet

    domains = _train_domains(data_dirs)
    fcfg = dict(cfg["features"].get("tinycnn", {}))
    net = train_featurenet(domains, fcfg, seed=cfg["seed"], device=device)  # issue 15: device passed through
    hparams = {"n_classes": 4 * len(domains), "input_size": net.input_size, "width": fcfg.get("width", 32), "dim": fcfg.get("dim", 64)}
    torch_save({"hparams": hparams, "state_dict": net.state_dict()}, out)


def _train_domains(data_dirs: List[str]) -> List[torch.Tensor]:
    """Every training split (one per dataset, two for unpaired datasets) as a float tensor."""
    domains = []
    for d in data_dirs:
        manifest = datasets.read_manifest(d)
        for split in manifest["splits"]:
            if split.startswith("train"):
                domains.append(datasets.to_tensor(datasets.load_split(d, split)))
    return domains


def feature_space(cfg: Dict[str, Any], features_path: str, device: torch.device | None = None) -> fid.FeatureSpace:  # issue 15: device passed through
    return fid.load_feature_space(cfg["features"]["kind"], features_path, device)


def real_stats(cfg: Dict[str, Any], data_dir: str, split: str, features_path: str, out: str, device: torch.device | None = None) -> None:  # issue 15: device passed through
    fs = feature_space(cfg, features_path, device)
    images = datasets.load_split(data_dir, split)
    bs = cfg["eval"]["batch_size"]
    batches = (datasets.to_tensor(images[i : i + bs]) for i in range(0, len(images), bs))
    feats = fs.extract(batches, total=(len(images) + bs - 1) // bs)
    fid.save_stats(out, feats, fs.name)


# ------------------------------------------------------------------ training and inputs
def train_fp(cfg, arch, data_dir, out, ckpt, device) -> None:
    train(cfg, arch, data_dir, out, ckpt, device)


def _inputs(cfg: Dict[str, Any], arch: str, data_dir: str, n: int, generator: torch.Generator, split: str) -> torch.Tensor:
    """``n`` generator inputs: seeded latents, or the first ``n`` images of a shuffled source split."""
    a = make_arch(cfg, arch)
    if a.input_kind == "latent":
        return a.sample_inputs(n, generator)
    images = datasets.load_split(data_dir, split)
    idx = torch.randperm(len(images), generator=generator)[:n].sort().values.numpy()
    return datasets.to_tensor(np.asarray(images[idx]))


def distill(cfg: Dict[str, Any], arch: str, data_dir: str, fp_path: str, out: str, device: torch.device | None = None) -> None:  # issue 15: device passed through
    """The distillation set: inputs (latents or source images) and the FP generator's outputs
    (with the generator's own default extras, e.g. StyleGAN's fixed per-layer noise buffers)."""
    g = torch.Generator().manual_seed(cfg["seed"] + 101)
    inputs = _inputs(cfg, arch, data_dir, cfg["distill"]["size"], g, "train" + ("A" if _two_domain(cfg, arch) else ""))
    outputs = make_arch(cfg, arch).generate(load_generator(cfg, arch, fp_path, device), inputs, cfg["distill"]["batch_size"])  # issue 15: device passed through
    torch_save({"arch": arch, "inputs": inputs, "outputs": outputs.half()}, out)


def eval_inputs(cfg: Dict[str, Any], arch: str, data_dir: str, out: str) -> None:
    """The seeded evaluation inputs shared by FP and every quantized variant (for qFID): latents or
    source images (``inputs``) and the arch's per-sample extras (``extras``, drawn after the
    latents from the same generator; StyleGAN: one noise tensor per noise layer)."""
    two = _two_domain(cfg, arch)
    n = cfg["eval"]["n_samples"]
    if two:
        n = min(n, datasets.read_manifest(data_dir)["splits"][cfg["eval"]["real_split"] + "A"])
    g = torch.Generator().manual_seed(cfg["seed"] + 202)
    inputs = _inputs(cfg, arch, data_dir, n, g, cfg["eval"]["real_split"] + "A" if two else "")
    extras = make_arch(cfg, arch).sample_extras(len(inputs), g)
    torch_save({"arch": arch, "inputs": inputs, "extras": extras}, out)


def load_eval_inputs(path: str, arch: str) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """``(inputs, extras)`` of an eval inputs file written by :func:`eval_inputs` for ``arch``."""
    saved = torch_load(path)
    if saved.get("arch") != arch:
        raise ValueError(f"{path!r} holds eval inputs of arch {saved.get('arch')!r}, expected {arch!r}")
    return saved["inputs"], saved.get("extras", {})


def _two_domain(cfg, arch) -> bool:
    return datasets.is_two_domain(arch_dataset(cfg, arch)["kind"])


# ------------------------------------------------------------------ quantization
def arch_params(cfg: Dict[str, Any], arch: str, sweep_best: str | None = None) -> Dict[str, Any]:
    """``archs.<arch>`` with ``quantiles: sweep`` replaced by the sweep's best pair."""
    acfg = dict(cfg["archs"][arch])
    if acfg["quantiles"] == "sweep":
        if not sweep_best:
            raise ValueError(f"archs.{arch}.quantiles is 'sweep': pass the quantile sweep's best.json (--quantiles)")
        best = json.loads(Path(sweep_best).read_text())
        acfg["quantiles"] = {"activation": best["activation"], "weight": best["weight"]}
    return acfg


def quantize(cfg: Dict[str, Any], arch: str, variant: str, fp_path: str, distill_path: str, out: str, info_out: str,
             sweep_best: str | None = None, perceptual: str | None = None, losses_out: str | None = None,
             device: torch.device | None = None) -> None:  # issue 15: device passed through
    """Quantize one variant; ``info_out`` (JSON next to the model) records calibration size, time
    and, for block reconstruction, each block's error before/after.  QAT methods also read the FP
    discriminator (from ``fp_path``) and the perceptual network (``perceptual``), and write their
    per-step losses to ``losses_out``."""
    v = Variant.parse(variant)
    method = get_method(v.method)
    acfg = arch_params(cfg, arch, sweep_best) if "archs.{arch}.quantiles" in METHOD_PARAMS[v.method] else cfg["archs"][arch]
    g = load_generator(cfg, arch, fp_path, device)  # issue 15: device passed through
    distill_set = torch_load(distill_path)
    ckpt = Path(str(out) + ".ckpt.pt")
    extra: Dict[str, Any] = {}
    if v.method in QAT_METHODS:
        if not losses_out:
            raise ValueError(f"{v.method} writes per-step losses: pass --losses")
        pnet = None
        if qat_params(cfg, arch)["distill_loss"] == "perceptual":
            if not perceptual:
                raise ValueError(f"{v.method} with qat.distill_loss 'perceptual' needs --perceptual (the perceptual network)")
            from .metrics.perceptual import load_perceptual

            pnet = load_perceptual(cfg["perceptual"]["kind"], perceptual, device)  # issue 15: device passed through
        extra = {"distill": distill_set, "discriminator": load_discriminator(cfg, arch, fp_path, device), "perceptual": pnet,
                 "losses_out": Path(losses_out)}
    with tracking.run("quantize", cfg, _variant_tags(arch, v)) as run:
        t0 = time.time()
        qmodel, spec, info = method(g, distill_set["inputs"], v, acfg, cfg, arch=make_arch(cfg, arch), ckpt=ckpt, tracker=run, **extra)
        info["seconds"] = time.time() - t0
        torch_save({"arch": arch, "variant": v.name, "spec": spec.to_dict(), "state_dict": qmodel.state_dict(), "info": info}, out)
        write_json(info_out, {"arch": arch, "variant": v.name, **info})
        run.log_params(spec.to_dict())
        run.log_metrics({k: x for k, x in info.items() if isinstance(x, (int, float)) and not isinstance(x, bool)})
        if losses_out:
            run.log_artifact(losses_out)
        for rec in info.get("recon", []):
            run.log_metrics({"block_mse_before": rec["mse_before"], "block_mse_after": rec["mse_after"]}, step=rec["block"])
        run.log_artifact(info_out)
    ckpt.unlink(missing_ok=True)


def _variant_tags(arch: str, v: Variant | None) -> Dict[str, Any]:
    if v is None:
        return {"arch": arch, "variant": FP, "method": FP, "per_channel": None, "w_bits": 32, "a_bits": 32}
    return {"arch": arch, "variant": v.name, "method": v.method, "per_channel": v.per_channel, "w_bits": v.w_bits, "a_bits": v.a_bits}


def load_quantized(cfg: Dict[str, Any], arch: str, path: str, device: torch.device | None = None) -> torch.nn.Module:
    """The quantized generator saved at ``path``, in eval mode, on ``device`` (default: the CPU)."""
    saved = torch_load(path)
    if saved.get("arch") != arch:
        raise ValueError(f"{path!r} holds a quantized {saved.get('arch')!r} model, expected {arch!r}")
    qmodel = quantize_model(make_arch(cfg, arch).build_generator().eval(), QuantSpec.from_dict(saved["spec"]))
    qmodel.load_state_dict(saved["state_dict"])
    return qmodel.to(device).eval()


# ------------------------------------------------------------------ evaluation
def evaluate(cfg: Dict[str, Any], arch: str, variant: str, model_path: str, inputs_path: str, features_path: str,
             real_stats_path: str, fp_stats_path: str, out: str, samples_out: str, device: torch.device | None = None) -> None:  # issue 15: device passed through
    """FID against real images and qFID against the FP generator on the same inputs.

    For ``variant == "fp"`` the FP feature statistics are written to ``fp_stats_path``; for a
    quantized variant they are read from it."""
    seed_everything(cfg["seed"])
    fs = feature_space(cfg, features_path, device)  # issue 15: device passed through
    v = None if variant == FP else Variant.parse(variant)
    tags = _variant_tags(arch, v)
    with tracking.run("evaluate", cfg, {**tags, "feature_space": fs.name}, {"eval": cfg["eval"]}) as run:
        metrics = _evaluate(cfg, arch, v, fs, model_path, inputs_path, real_stats_path, fp_stats_path, samples_out, device)  # issue 15: device passed through
        write_json(out, {**tags, **metrics, "feature_space": fs.name, "profile": cfg["profile"]})
        run.log_metrics({k: metrics[k] for k in ("fid", "qfid", "fid_std", "qfid_std", "generate_seconds")})
        run.log_artifact(out)
        run.log_artifact(samples_out)


def _evaluate(cfg, arch, v, fs, model_path, inputs_path, real_stats_path, fp_stats_path, samples_out, device=None) -> Dict[str, Any]:  # issue 15: device passed through
    if v is None:
        model = load_generator(cfg, arch, model_path, device)
    else:
        model = load_quantized(cfg, arch, model_path, device)
    inputs, extras = load_eval_inputs(inputs_path, arch)
    bs = cfg["eval"]["batch_size"]
    t0 = time.time()
    images = make_arch(cfg, arch).generate(model, inputs, bs, extras)
    gen_seconds = time.time() - t0
    feats = fs.extract(images.split(bs), total=(len(images) + bs - 1) // bs)
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
    from .report import save_grid

    save_grid(images[: cfg["eval"]["grid"]], samples_out)
    return {"fid": fid_real, "qfid": qfid, "fid_std": fid_std, "qfid_std": qfid_std, "bootstrap": n_boot,
            "n_samples": int(len(images)), "generate_seconds": gen_seconds}


# ------------------------------------------------------------------ paper profile: FID Inception weights
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + fid.INCEPTION_FILE


def fetch_weights(section: Dict[str, Any], key: str, default_url: str, file_name: str, dest: Path) -> None:
    """Put a published weight file at ``dest``: copied from ``section["path"]`` when set (offline
    compute nodes), else downloaded from ``section["url"]`` (default ``default_url``).  Verified
    by sha256: the configured digest, or the lock file, and always the 8-hex-digit sha256 prefix in
    the published file name (``name-<prefix>.pth``), as torch.hub checks it.  ``key`` names the
    params section in errors."""
    import shutil

    from .data.download import download, sha256_file
    from .utils import atomic_path

    if section.get("path"):
        src = Path(section["path"])
        src = src / file_name if src.is_dir() else src
        if not src.exists():
            raise FileNotFoundError(f"{key}.path: {str(src)!r} does not exist")
        digest = sha256_file(src)
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
    else:
        path, digest = download(section.get("url") or default_url, dest.parent, section.get("sha256"))
        if path != dest:
            path.replace(dest)
    prefix = file_name.rsplit("-", 1)[1].split(".")[0]
    expected = section.get("sha256")
    if (expected and digest != expected) or not digest.startswith(prefix):
        dest.unlink(missing_ok=True)
        raise ValueError(f"{str(dest)!r} ({key}): sha256 {digest} does not match {expected or prefix + '...'}")


def fetch_inception(cfg: Dict[str, Any], out: str) -> None:
    """pytorch-fid's FID Inception weights at ``out/checkpoints/`` (the torch hub layout it loads from)."""
    fetch_weights(cfg["features"].get("inception", {}), "features.inception", FID_WEIGHTS_URL, fid.INCEPTION_FILE,
                  Path(out) / "checkpoints" / fid.INCEPTION_FILE)


def fetch_vgg16(cfg: Dict[str, Any], out: str) -> None:
    """torchvision's ImageNet VGG16 weights (the paper profile's perceptual network) at ``out``."""
    from .metrics.perceptual import VGG16_FILE, VGG16_URL

    fetch_weights(cfg["perceptual"].get("vgg16", {}), "perceptual.vgg16", VGG16_URL, VGG16_FILE, Path(out))


def train_perceptual(cfg: Dict[str, Any], data_dirs: List[str], out: str, device: torch.device | None = None) -> None:  # issue 15: device passed through
    """Train the tiny profile's perceptual network on the training splits of ``data_dirs``."""
    from .metrics.perceptual import train_tiny_vgg

    pcfg = cfg["perceptual"]["tinyvgg"]
    net = train_tiny_vgg(_train_domains(data_dirs), pcfg, seed=cfg["seed"] + 303, device=device)  # issue 15: device passed through
    torch_save({"cfg": net.cfg, "state_dict": net.state_dict()}, out)
