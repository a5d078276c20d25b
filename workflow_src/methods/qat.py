"""Quantization-aware training (paper section 3.6 and 4.2, appendices A and B): MA-QAT and LSQ-QAT.

The quantized generator ``f_q`` starts from vanilla quantile PTQ (the same calibration as
``ptq-quantile``) and is trained against the FP generator ``f`` on the distillation set (inputs and
the FP outputs ``y = f(x)``):

    L_G = w_adv * 1/2 (D(f_q(x)) - 1)^2 + w_content * ||phi_l(f_q(x)) - phi_l(y)||^2
          + w_style * sum_l ||Gram(phi_l(f_q(x))) - Gram(phi_l(y))||^2
    L_D = 1/2 (D(y) - 1)^2 + 1/2 D(f_q(x))^2                                      (LSGAN)

``D`` starts from the FP training's discriminator and sees FP outputs as real; ``phi`` is the
perceptual network (:mod:`workflow_src.methods.perceptual`).  ``distill_loss: mse`` replaces the two
perceptual terms with ``w_mse * ||f_q(x) - y||^2`` (the appendix B ablation).

* ``ma-qat``: weights (and biases) through the straight-through estimator; every range (weights
  and activations) follows the moving average of its quantiles (``qat.momentum``) during the first
  ``qat.ma_epochs`` epochs and is frozen after.
* ``lsq-qat``: step sizes learned by LSQ (its gradient scale), activation zero points learned
  (LSQ+), PyTorch's fused learnable fake-quant ops; optionally preceded by MA-QAT epochs
  (``qat.lsq_epochs`` < ``qat.epochs``: the paper's CycleGAN schedule).

Adam (``qat.betas``), learning rates ``lr_weights`` / ``lr_qparams`` / ``lr_d`` with cosine
annealing over all steps.  The generator stays in eval mode (frozen batch-norm statistics), and each
step feeds every sample the extra inputs its FP output was made with (StyleGAN: the sample's own
noise, from the distillation set), so its outputs are comparable to the FP outputs it is distilled
from.  A checkpoint after every epoch (model, discriminator, optimisers; the data order is a
function of seed and epoch) makes a killed run resume to exactly the weights an uninterrupted run
reaches.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..config import Variant, deep_merge
from ..device import backward, module_device, restore_rng, rng_state, rows_to_host, to_device
from ..quant import calibrate, map_quantizers, quantize_model
from ..quant.lsq import LSQQuantizer
from ..quant.quantizer import FakeQuantizer
from .. import resume
from ..files import append_rows, copy_atomic, truncate_rows
from ..utils import torch_load, torch_save
from .ptq import sample_batches, sample_feed, spec_for


def qat_params(cfg: Dict[str, Any], arch: str) -> Dict[str, Any]:
    """``qat`` with the arch's ``archs.<arch>.qat`` overrides merged in."""
    return deep_merge(cfg["qat"], cfg["archs"][arch].get("qat") or {})


def _to_lsq(q, kind):
    return LSQQuantizer.from_static(q) if isinstance(q, FakeQuantizer) else q


def _to_static(q, kind):
    return q.to_static() if isinstance(q, LSQQuantizer) else q


def set_tracking(model: nn.Module, on: bool, momentum: float | None = None) -> None:
    """MA-QAT: let every static quantizer follow its observer's moving average (or stop)."""
    for m in model.modules():
        if isinstance(m, FakeQuantizer):
            m.tracking = on
            if momentum is not None and hasattr(m.observer, "momentum"):
                m.observer.momentum = float(momentum)


def _quant_params(model: nn.Module) -> List[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LSQQuantizer) for p in m.parameters(recurse=False)]


def _weight_params(model: nn.Module) -> List[nn.Parameter]:
    q = {id(p) for p in _quant_params(model)}
    return [p for p in model.parameters() if id(p) not in q]


class DistillLoss(nn.Module):
    """The generator's distillation objective against FP outputs (without the adversarial term)."""

    def __init__(self, kind: str, weights: Dict[str, float], perceptual: Optional[nn.Module]):
        super().__init__()
        if kind == "perceptual" and perceptual is None:
            raise ValueError("qat.distill_loss = 'perceptual' needs the perceptual network (--perceptual)")
        self.kind, self.weights, self.perceptual = kind, weights, perceptual

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.kind == "mse":
            return {"mse": F.mse_loss(out, target)}
        content, style = self.perceptual(out, target)
        return {"content": content, "style": style}

    def total(self, terms: Dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(float(self.weights.get(k, 1.0)) * v for k, v in terms.items())


def _lr_factor(step: int, total: int, schedule: str) -> float:
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


def distill_step(G: nn.Module, D: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: DistillLoss, w_adv: float,
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer) -> Dict[str, torch.Tensor]:
    """One generator step (distillation terms + LSGAN adversarial term) and one LSGAN
    discriminator step (``y`` real, ``G(x)`` fake); returns the losses as detached 0-dim tensors
    on the device (read them once per logging interval: :func:`workflow_src.device.rows_to_host`).
    The same step trains an FP generator in ``benchmarks/qat_step.py``, the baseline of QAT's overhead."""
    out = G(x)
    terms = loss(out, y)
    loss_g = distill = loss.total(terms)
    if w_adv > 0:
        D.requires_grad_(False)
        p_fake = D(out)
        adv = 0.5 * F.mse_loss(p_fake, torch.ones_like(p_fake))
        loss_g = loss_g + w_adv * adv
        D.requires_grad_(True)
    opt_g.zero_grad(set_to_none=True)
    backward(loss_g)
    opt_g.step()
    row = {"loss_g": loss_g.detach(), "distill": distill.detach(), **{k: v.detach() for k, v in terms.items()}}
    if w_adv > 0:
        p_real, p_fake = D(y), D(out.detach())
        loss_d = 0.5 * (F.mse_loss(p_real, torch.ones_like(p_real)) + F.mse_loss(p_fake, torch.zeros_like(p_fake)))
        opt_d.zero_grad(set_to_none=True)
        backward(loss_d)
        opt_d.step()
        row.update(adversarial=adv.detach(), loss_d=loss_d.detach())
    return row


def make_loss(cfg: Dict[str, Any], qcfg: Dict[str, Any], perceptual: Optional[nn.Module]) -> DistillLoss:
    """The distillation loss ``qat.distill_loss`` with the configured weights and layers."""
    kind = qcfg.get("distill_loss", "perceptual")
    pl = None
    if kind == "perceptual":
        from .perceptual import PerceptualLoss

        if perceptual is None:
            raise ValueError("qat.distill_loss = 'perceptual' needs the perceptual network (--perceptual)")
        pcfg = cfg["perceptual"]
        pl = PerceptualLoss(perceptual, pcfg["content_layer"], pcfg["style_layers"])
    return DistillLoss(kind, dict(qcfg["loss_weights"]), pl)


def train_qat(qmodel: nn.Module, D: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, mode: str,
              qcfg: Dict[str, Any], loss: DistillLoss, seed: int, ckpt: Optional[Path] = None,
              losses_out: Optional[Path] = None, tracker=None,
              epoch_hook: Optional[Callable[[int, nn.Module], None]] = None,
              fingerprint: Optional[Dict[str, Any]] = None,
              feed: Optional[Callable[[torch.Tensor], ContextManager]] = None,
              scorer: Optional[Callable[[nn.Module], Dict[str, float]]] = None) -> Dict[str, Any]:
    """Train the calibrated quantized generator ``qmodel`` in place, on its device (``D`` and the
    loss's network on the same one; ``inputs``/``targets`` may stay on the CPU: each batch is moved);
    returns the info record.

    ``mode``: "ma-qat" or "lsq-qat".  ``epoch_hook(epoch, qmodel)`` is called after each epoch.
    ``fingerprint`` (:mod:`..resume`; default: of ``mode``, ``qcfg``, ``seed`` and this code) is what
    a checkpoint must have been made with to be resumed.  ``feed(idx)``: the context in which
    ``qmodel`` sees the extra inputs of samples ``idx`` (see :func:`.ptq.sample_feed`); ``None``: no
    extras.

    ``qat.validation`` holds the last samples of ``inputs`` out of training (and of calibration,
    which reads the first ones): their distillation loss (the perceptual or MSE terms, without the
    adversarial one) is measured at the start and after every epoch, and with ``qat.select: best``
    the model of the epoch, or the quantile-PTQ start, with the lowest one is kept: early stopping
    on a validation split, never on evaluation inputs.  ``scorer(qmodel)`` (optional) adds more
    validation metrics to each of those records (the workflow's: ``qfid``, against the FP generator
    on the validation inputs of :func:`workflow_src.workflow.distill.validation_inputs`);
    ``qat.select_on`` names the one ``select: best`` minimises (``loss``: the held-out
    distillation loss; ``qfid``: the scorer's).  With ``qat.select_spreads`` = k, an epoch replaces
    the model kept so far only if its metric is lower by more than k combined spreads (the records'
    ``<metric>_std``, where the scorer gives one): training must beat its start beyond the
    validation noise to be kept."""
    if fingerprint is None:
        fingerprint = resume.fingerprint({"mode": mode, "qcfg": qcfg, "seed": seed, "loss": loss.kind}, [__name__])
    epochs, bs = int(qcfg["epochs"]), int(qcfg["batch_size"])
    device = module_device(qmodel)
    n_val = int(qcfg.get("validation", 0))  # the last n_val samples: never trained on
    n = len(inputs) - n_val
    if n < bs:
        raise ValueError(f"qat.batch_size = {bs} is larger than the distillation set's {n} training samples "
                         f"({len(inputs)} minus qat.validation = {n_val})")
    select, select_on = qcfg.get("select", "last"), qcfg.get("select_on", "loss")
    key, spreads = SELECT_KEYS[select_on], float(qcfg.get("select_spreads", 0.0))
    if select_on == "loss" and select == "best" and n_val == 0:
        raise ValueError("qat.select = 'best' on the validation loss needs a validation split (qat.validation > 0)")
    if select == "best" and select_on != "loss" and scorer is None:
        raise ValueError(f"qat.select_on = {select_on!r} needs the validation scorer (scorer=...)")
    steps_per_epoch = n // bs
    total = epochs * steps_per_epoch
    ma_epochs = int(qcfg.get("ma_epochs", epochs))
    lsq_start = epochs - int(qcfg.get("lsq_epochs", epochs)) if mode == "lsq-qat" else epochs
    w_adv = float(qcfg["loss_weights"].get("adversarial", 0.0))
    betas = tuple(float(b) for b in qcfg["betas"])
    schedule = qcfg.get("schedule", "cosine")

    def make_opt_g(lsq: bool) -> torch.optim.Optimizer:
        groups = [{"params": _weight_params(qmodel), "lr": float(qcfg["lr_weights"]), "name": "weights"}]
        if lsq and float(qcfg["lr_qparams"]) > 0:
            groups.append({"params": _quant_params(qmodel), "lr": float(qcfg["lr_qparams"]), "name": "qparams"})
        for g in groups:
            g["base_lr"] = g["lr"]
        return torch.optim.Adam(groups, betas=betas)

    lsq = lsq_start <= 0
    if lsq:
        map_quantizers(qmodel, _to_lsq)
    # every weight trains (STE), also those the FP model froze: an EMA generator's parameters do not
    # require gradients, and only the layers the quantization transform rebuilt (convs, linears) came
    # back trainable, leaving StyleGAN's noise weights and constant input, SAGAN's BatchNorm affines and
    # attention gammas frozen
    qmodel.requires_grad_(True)
    opt_g = make_opt_g(lsq)
    opt_d = torch.optim.Adam(D.parameters(), lr=float(qcfg["lr_d"]), betas=betas)
    for g in opt_d.param_groups:
        g["base_lr"] = g["lr"]
    start = 0
    # The loss log grows beside the checkpoint and becomes losses_out at the end: a workflow manager
    # deletes a job's outputs before rerunning it (a SLURM requeue, a retry), never this.
    log = None if losses_out is None else resume.log_beside(ckpt) if ckpt is not None else Path(losses_out)
    saved = None if ckpt is None else resume.load_checkpoint(ckpt, fingerprint)
    validation: List[Dict[str, float]] = []
    best: Optional[Dict[str, Any]] = None  # {"epoch", "loss", "state"}: the static-quantizer state to keep

    def validate(epoch: int) -> None:
        nonlocal best
        record: Dict[str, float] = {"epoch": epoch}
        if n_val:
            record.update(_validation_loss(qmodel, inputs, targets, range(n, n + n_val), bs, loss, feed))
        if scorer is not None:
            record.update(scorer(qmodel))
        validation.append(record)
        std = float(record.get(f"{key}_std", 0.0))
        if select == "best" and (best is None or record[key] + spreads * math.hypot(std, best.get("std", 0.0)) < best["loss"]):
            best = {"epoch": epoch, "loss": record[key], "std": std, "state": _static_state(qmodel)}

    if saved is not None:
        start = int(saved["epoch"])
        validation, best = list(saved.get("validation", [])), saved.get("best")
        if saved["lsq"] and not lsq:
            map_quantizers(qmodel, _to_lsq)
            lsq, opt_g = True, make_opt_g(True)
        qmodel.load_state_dict(saved["model"])
        D.load_state_dict(saved["D"])
        opt_g.load_state_dict(saved["opt_g"])
        opt_d.load_state_dict(saved["opt_d"])
        restore_rng(saved, device)
        print(f"resuming {mode} at epoch {start}/{epochs}")
    elif log is not None:
        log.unlink(missing_ok=True)
    if log is not None:
        truncate_rows(log, "epoch", start)

    qmodel.eval()  # frozen BN statistics: outputs comparable with the FP targets
    D.train()
    validating = bool(n_val) or scorer is not None
    if validating and start == 0:
        validate(-1)  # the starting point (quantile PTQ) competes too
    epoch_means: List[Dict[str, float]] = []
    bar = tqdm(total=total, initial=start * steps_per_epoch, desc=f"{mode}", unit="step")
    for epoch in range(start, epochs):
        if mode == "lsq-qat" and epoch == lsq_start and not lsq:
            set_tracking(qmodel, False)
            map_quantizers(qmodel, _to_lsq)
            lsq = True
            moments = opt_g.state  # keep the weights' Adam moments across the switch
            opt_g = make_opt_g(True)
            for p in opt_g.param_groups[0]["params"]:
                if p in moments:
                    opt_g.state[p] = moments[p]
        set_tracking(qmodel, not lsq and epoch < ma_epochs, qcfg.get("momentum"))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        rows = []
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            factor = _lr_factor(step, total, schedule)
            for opt in (opt_g, opt_d):
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * factor
            idx = perm[i * bs:(i + 1) * bs]  # the data order is drawn on the CPU: the same on every device
            x, y = to_device(inputs[idx], device), to_device(targets[idx], device).float()
            with feed(idx) if feed is not None else contextlib.nullcontext():
                rows.append({"epoch": epoch, "step": step, **distill_step(qmodel, D, x, y, loss, w_adv, opt_g, opt_d)})
            bar.update(1)
        set_tracking(qmodel, False)
        if validating:
            validate(epoch)
        rows = rows_to_host(rows)  # the losses stay on the device during the epoch: one sync per epoch
        epoch_means.append({"epoch": epoch, **{k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k not in ("epoch", "step")}})
        bar.set_postfix(epoch=epoch, loss_g=f"{epoch_means[-1]['loss_g']:.3g}")
        if log is not None:
            append_rows(log, rows)
        if tracker is not None:
            tracker.log_step_metrics([{k: v for k, v in r.items() if k != "epoch"} for r in rows])
        if ckpt is not None and epoch + 1 < epochs:
            torch_save({"epoch": epoch + 1, "lsq": lsq, "model": qmodel.state_dict(), "D": D.state_dict(),
                        "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "fingerprint": fingerprint,
                        "validation": validation, "best": best, **rng_state(device)}, ckpt)
        if epoch_hook is not None:
            epoch_hook(epoch, qmodel)
    bar.close()
    if log is not None and log != Path(losses_out) and log.exists():
        copy_atomic(log, losses_out)  # copied: the log stays beside the checkpoint until that is gone
    if lsq:
        map_quantizers(qmodel, _to_static)
    if best is not None:
        qmodel.load_state_dict(best["state"])
    qmodel.requires_grad_(False)
    return {"epochs": epochs, "steps": total, "steps_per_epoch": steps_per_epoch, "resumed_at_epoch": start,
            "ma_epochs": min(ma_epochs, lsq_start), "lsq_epochs": max(0, epochs - lsq_start), "epoch_losses": epoch_means,
            "train_samples": n, "validation_samples": n_val, "validation": validation, "select": select, "select_on": select_on,
            "selected_epoch": best["epoch"] if best is not None else epochs - 1}


# qat.select_on -> the validation record's key that `select: best` minimises
SELECT_KEYS = {"loss": "distill", "qfid": "qfid"}


def _static_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model``'s state with static quantizers (the layout every saved variant has), on the CPU."""
    static = copy.deepcopy(model)
    map_quantizers(static, _to_static)
    return {k: v.detach().cpu().clone() for k, v in static.state_dict().items()}


@torch.no_grad()
def _validation_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, index: range, bs: int,
                     loss: DistillLoss, feed: Optional[Callable[[torch.Tensor], ContextManager]]) -> Dict[str, float]:
    """Mean distillation terms and their weighted sum (``distill``) of ``model`` against the FP
    targets on samples ``index`` (one host read at the end)."""
    device = module_device(model)
    sums: Dict[str, torch.Tensor] = {}
    for start in range(index.start, index.stop, bs):
        idx = torch.arange(start, min(start + bs, index.stop))
        y = to_device(targets[idx], device).float()
        with feed(idx) if feed is not None else contextlib.nullcontext():
            out = model(to_device(inputs[idx], device))
        terms = loss(out, y)
        for k, v in {**terms, "distill": loss.total(terms)}.items():
            sums[k] = sums.get(k, 0.0) + v.detach() * len(idx)
    return {k: float(v) / len(index) for k, v in sums.items()}


def qat(mode: str):
    def run(generator: nn.Module, calib_inputs: torch.Tensor, variant: Variant, arch_cfg: Dict[str, Any], cfg: Dict[str, Any],
            arch=None, ckpt: Optional[Path] = None, distill: Optional[Dict[str, torch.Tensor]] = None,
            discriminator: Optional[nn.Module] = None, perceptual: Optional[nn.Module] = None,
            losses_out: Optional[Path] = None, tracker=None, extras: Optional[Dict[str, Any]] = None,
            job_params: Optional[Dict[str, Any]] = None,
            validation=None, **_):
        """``validation``: the workflow's :class:`~workflow_src.workflow.distill.ValidationQFID`
        (its ``score`` is the validation metric, its ``digest`` part of the resume fingerprint)."""
        if distill is None or discriminator is None:
            raise ValueError(f"{mode} needs the distillation set and the FP discriminator")
        qcfg = qat_params(cfg, arch.name)
        inputs_digest = resume.tensor_digest(generator.state_dict(), discriminator.state_dict(), distill["inputs"], extras or {})
        spec = spec_for(variant, "quantile", arch_cfg, cfg)
        qmodel = quantize_model(generator, spec)  # initialised exactly like ptq-quantile
        n_cal = cfg["calibration"]["images"]
        seen = calibrate(qmodel, sample_batches(arch, qmodel, calib_inputs[:n_cal], cfg["distill"]["batch_size"], extras))
        loss = make_loss(cfg, qcfg, perceptual)
        t0 = time.time()
        fingerprint = resume.job_fingerprint(job_params or cfg, [__name__, *resume.modules_of(arch, validation)],
                                             quantiles=arch_cfg["quantiles"], inputs=inputs_digest,
                                             validation=getattr(validation, "digest", None))  # its inputs and reference
        info = train_qat(qmodel, discriminator, distill["inputs"], distill["outputs"], mode, qcfg, loss,
                         cfg["seed"], ckpt=ckpt, losses_out=losses_out, tracker=tracker, fingerprint=fingerprint,
                         feed=sample_feed(arch, qmodel, extras),
                         scorer=None if validation is None else validation.score)
        info.update(calibration_images=seen, train_seconds=time.time() - t0, init="ptq-quantile",
                    distill_loss=loss.kind, distill_images=int(len(distill["inputs"])))
        return qmodel.eval(), spec, info

    run.__name__ = mode.replace("-", "_")
    return run


ma_qat = qat("ma-qat")
lsq_qat = qat("lsq-qat")


# What these methods are and the params section they own (workflow_src/registry.py reads these
# literals without importing this file).  The perceptual network is needed unless the arch's QAT
# uses the pixel MSE ablation (appendix B).
METHODS = [
    {"name": "ma-qat", "kind": "qat", "title": "MA-QAT", "run": "ma_qat", "reads": ["seed", "distill.batch_size", "qat", "archs.{arch}.qat"],
     "needs": ["quantiles", "discriminator", "distill", {"need": "perceptual", "when": {"qat.distill_loss": "perceptual"}},
               {"need": "validation", "when": {"qat.select": "best", "qat.select_on": "qfid"}}]},
    {"name": "lsq-qat", "kind": "qat", "title": "LSQ-QAT", "run": "lsq_qat", "reads": ["seed", "distill.batch_size", "qat", "archs.{arch}.qat"],
     "needs": ["quantiles", "discriminator", "distill", {"need": "perceptual", "when": {"qat.distill_loss": "perceptual"}},
               {"need": "validation", "when": {"qat.select": "best", "qat.select_on": "qfid"}}]},
]
PARAMS = {
    "sections": {"qat": {
        "description": "quantization-aware training (paper section 3.6, 4.2, appendix A); archs.<arch>.qat overrides keys",
        "type": "object",
        "additionalProperties": False,
        "required": ["epochs", "ma_epochs", "batch_size", "lr_weights", "lr_qparams", "lr_d", "betas", "schedule", "momentum",
                     "distill_loss", "loss_weights"],
        "properties": {
            "epochs": {"$ref": "#/$defs/pos_int"},
            "ma_epochs": {"description": "MA-QAT: ranges follow the moving average during the first ma_epochs epochs",
                          "type": "integer", "minimum": 0},
            "lsq_epochs": {"description": "LSQ-QAT: LSQ in the last lsq_epochs epochs, MA-QAT before (default: all)",
                           "type": "integer", "minimum": 0},
            "batch_size": {"$ref": "#/$defs/pos_int"},
            "lr_weights": {"$ref": "#/$defs/pos_num"},
            "lr_qparams": {"type": "number", "minimum": 0},
            "lr_d": {"type": "number", "minimum": 0},
            "betas": {"$ref": "#/$defs/betas"},
            "schedule": {"enum": ["cosine", "constant"]},
            "momentum": {"$ref": "#/$defs/prob"},
            "distill_loss": {"enum": ["perceptual", "mse"]},
            "validation": {"description": "the last N distillation samples, held out of training and calibration: their distillation "
                                          "loss is measured at the start and after every epoch", "type": "integer", "minimum": 0},
            "select": {"description": "last: the final model; best: the epoch, or the quantile-PTQ start, with the lowest "
                                      "validation metric (select_on)", "enum": ["last", "best"]},
            "select_on": {"description": "what select: best minimises: loss, the distillation loss of the held-out samples "
                                         "(needs validation > 0); qfid, qFID against the FP generator on the validation inputs "
                                         "(sweep.validation_samples, never the evaluation inputs) in the FID feature space",
                          "enum": ["loss", "qfid"]},
            "select_spreads": {"description": "select: best keeps an epoch over the model kept so far only if its metric is lower by more "
                                              "than this many combined bootstrap spreads (qfid: eval.bootstrap resamples of the "
                                              "validation inputs; the loss has none); 0: any lower value", "type": "number", "minimum": 0},
            "quantiles": {"description": "the quantile pair QAT's quantile-PTQ start calibrates with: ptq (the arch's PTQ pair, "
                                         "archs.<arch>.quantiles) or its own {activation, weight} pair (the paper's MA-QAT pairs "
                                         "differ from its PTQ pairs, section 4.2)",
                          "oneOf": [{"const": "ptq"},
                                    {"type": "object", "additionalProperties": False, "required": ["activation", "weight"],
                                     "properties": {"activation": {"$ref": "#/$defs/quantile_pair"}, "weight": {"$ref": "#/$defs/quantile_pair"}}}]},
            "loss_weights": {"type": "object", "additionalProperties": False, "properties": {
                "adversarial": {"type": "number", "minimum": 0}, "content": {"type": "number", "minimum": 0},
                "style": {"type": "number", "minimum": 0}, "mse": {"type": "number", "minimum": 0}}},
        },
    }},
    "always": ["qat"],  # the report reads qat.distill_loss (which paper rows compare)
    "per_arch": ["qat"],
    "at_most": [["qat.lsq_epochs", "qat.epochs", ""],
                ["qat.batch_size", "distill.size", "QAT trains on the distillation set"]],
}
