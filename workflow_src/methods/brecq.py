"""Block-reconstruction PTQ (paper section 3.5, eq. 3; appendix A): AdaRound-BRECQ and STE-BRECQ.

The generator is first quantized like vanilla quantile PTQ (the same quantile pair initialises the
ranges).  Then, block by block in execution order, the block's quantization parameters (and, for
STE-BRECQ, its weights and biases) are tuned to minimise ``||f_q(X_q) - Y||^2`` (as BRECQ's code
computes it: :func:`reconstruction_loss`): ``X_q`` are the
block's inputs in the partly quantized generator (every earlier block already reconstructed), ``Y``
the full-precision block's outputs on the same calibration inputs.  Every capture and every
reconstruction step feeds each calibration sample its own extra inputs from the distillation set
(StyleGAN's noise): ``X_q``, ``Y`` and the block's own noise layers see sample ``i``'s noise.

* ``ar-brecq``: weights by adaptive rounding (rectified sigmoid, rounding regulariser with annealed
  beta after a warm-up, hard rounding at the end, so the saved weights lie on the integer grid);
  activation step sizes and zero points by LSQ(+).
* ``ste-brecq``: weights and biases through the straight-through estimator, weight and activation
  step sizes by LSQ (learned zero points for activations).

Each finished block is checkpointed (``<out>.ckpt.pt``): a killed job resumes at the next block.
Per-block reconstruction errors before and after are returned (and written next to the model).  A
block whose error the reconstruction did not lower (short schedules, noisy minibatches) keeps its
initial quantization; the record says so (``kept: initial``).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..config import Variant
from ..archs.layers import bake
from ..device import backward, to_device
from ..quant import QuantConv2d, QuantLinear, QuantOp, calibrate, quantize_model
from ..quant.adaround import AdaRoundQuantizer, LinearTempDecay
from ..quant.blocks import Block, capture, capture_outputs, index_record, record_len, split_blocks
from ..quant.lsq import LSQQuantizer
from .. import resume
from ..utils import torch_load, torch_save
from .ptq import sample_batches, sample_feed, spec_for


def spill_folder(ckpt: str | Path) -> Path:
    """Where a BRECQ job with checkpoint ``ckpt`` spills captured block records: the local temporary
    folder (``$TMPDIR``, which SLURM and Snakemake point at node-local storage; else the system's), in
    a folder named after the checkpoint's absolute path, so that a retry of a killed job finds and
    removes what it left, and the shared file system never holds a CycleGAN's tens of GiB of spill."""
    key = hashlib.sha256(str(Path(ckpt).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"qgan-brecq-spill-{key}"


def _quant_layers(block: Block):
    for m in block.modules:
        for sub in m.modules():
            if isinstance(sub, (QuantConv2d, QuantLinear, QuantOp)):
                yield sub


def _make_learnable(block: Block, mode: str, zeta: float, gamma: float):
    """Swap the block's static quantizers for learnable ones; returns (weight params, qparams, adaround quantizers)."""
    weights, qparams, rounders = [], [], []
    for layer in _quant_layers(block):
        if isinstance(layer, QuantOp):
            layer.operand_quant = nn.ModuleList(LSQQuantizer.from_static(q) for q in layer.operand_quant)
            qparams += [p for q in layer.operand_quant for p in q.parameters()]
            continue
        layer.input_quant = LSQQuantizer.from_static(layer.input_quant)
        qparams += list(layer.input_quant.parameters())
        if mode == "ar-brecq":
            layer.weight_quant = AdaRoundQuantizer.from_static(layer.weight_quant, layer.weight.detach(), zeta, gamma)
            rounders.append(layer.weight_quant)
        else:
            layer.weight_quant = LSQQuantizer.from_static(layer.weight_quant)
            qparams += list(layer.weight_quant.parameters())
            weights += [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    return weights, qparams, rounders


@torch.no_grad()
def _make_static(block: Block) -> None:
    for layer in _quant_layers(block):
        if isinstance(layer, QuantOp):
            layer.operand_quant = nn.ModuleList(q.to_static() for q in layer.operand_quant)
            continue
        layer.input_quant = layer.input_quant.to_static()
        if isinstance(layer.weight_quant, AdaRoundQuantizer):
            hard, fq = layer.weight_quant.to_static()
            layer.weight.copy_(hard)
            layer.weight_quant = fq
        else:
            layer.weight_quant = layer.weight_quant.to_static()


def _snapshot(block: Block) -> list:
    """The block's static quantizers and weights, to restore if reconstruction does not help."""
    snap = []
    for layer in _quant_layers(block):
        if isinstance(layer, QuantOp):
            snap.append((layer, {"operand_quant": layer.operand_quant}, None))
        else:
            tensors = {n: p.detach().clone() for n, p in (("weight", layer.weight), ("bias", layer.bias)) if p is not None}
            snap.append((layer, {"input_quant": layer.input_quant, "weight_quant": layer.weight_quant}, tensors))
    return snap


@torch.no_grad()
def _restore(snap: list) -> None:
    for layer, quantizers, tensors in snap:
        for name, q in quantizers.items():
            setattr(layer, name, q)
        for name, t in (tensors or {}).items():
            getattr(layer, name).copy_(t)


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BRECQ's reconstruction objective, as its code computes it (``quant/block_recon.py``
    ``LossFunction`` with ``rec_loss='mse'``, i.e. ``lp_loss(pred, tgt, p=2)`` of ``quant/quant_layer.py``):
    the squared error summed over dim 1 (channels, or features of a linear layer), then averaged over
    the batch and every remaining (spatial) position.  For ``(N, C, H, W)`` outputs that is ``C``
    times the per-element mean; the AdaRound regulariser weight (``reg_weight``, BRECQ's ``weight``
    0.01) is tuned against this scale."""
    return (pred - target).pow(2).sum(1).mean()


def _no_extras(index) -> ContextManager:
    return contextlib.nullcontext()


@torch.no_grad()
def _block_mse(block: Block, x_rec: Any, y: torch.Tensor, bs: int, feed: Callable[[Any], ContextManager] = _no_extras) -> float:
    """The block's reconstruction error on all captured inputs as a per-element mean squared error
    (the ``mse_before``/``mse_after`` of the info record; comparable across blocks of any width,
    unlike the optimised :func:`reconstruction_loss`)."""
    n, total = record_len(x_rec), 0.0
    dev = next(block.parameters()).device
    for i in range(0, n, bs):
        idx = slice(i, min(i + bs, n))
        args, kwargs = index_record(x_rec, idx, dev)
        # summed in float64 on the device and read once: the same sum as adding Python floats
        with feed(idx):
            total = total + F.mse_loss(block(*args, **kwargs), index_record(y, idx, dev), reduction="sum").double()
    return float(total) / y.numel()


def _reconstruct_block(block: Block, x_rec: Any, y: torch.Tensor, mode: str, bcfg: Dict[str, Any], gen: torch.Generator,
                       feed: Callable[[Any], ContextManager] = _no_extras) -> Dict[str, float]:
    """Optimise one block; returns, for AdaRound, the balance of the two terms at the first step of
    the rounding regulariser (start of annealing, ``beta = beta_start``): their values
    (``anneal_rec``, ``anneal_reg``: regulariser times ``reg_weight``) and the norms of their
    gradients with respect to the rounding variables (``anneal_rec_grad``, ``anneal_reg_grad``), and
    the share of rounding variables whose reconstruction gradient outweighs their regulariser
    gradient (``anneal_rec_led``: Adam moves each variable by its own gradient's sign, so this share
    is where the reconstruction still decides the rounding).  ``feed(idx)``: the context in which the
    block sees the extras of samples ``idx``."""
    zeta, gamma = bcfg.get("zeta", 1.1), bcfg.get("gamma", -0.1)
    weights, qparams, rounders = _make_learnable(block, mode, zeta, gamma)
    for p in block.parameters():
        p.requires_grad_(False)
    groups = []
    if rounders:
        groups.append({"params": [r.alpha for r in rounders], "lr": bcfg.get("lr_rounding", 1e-3)})
    if weights:
        groups.append({"params": weights, "lr": bcfg["lr_weights"]})
    if qparams and bcfg.get("lr_qparams", 0) > 0:
        groups.append({"params": qparams, "lr": bcfg["lr_qparams"]})
    train = [p for g in groups for p in g["params"]]
    for p in train:
        p.requires_grad_(True)
    steps = bcfg["ar_steps"] if mode == "ar-brecq" else bcfg["ste_steps"]
    decay = LinearTempDecay(steps, int(bcfg.get("ar_warmup", 0.2 * steps)), *bcfg.get("beta_range", [20, 2])) if rounders else None
    opt = torch.optim.Adam(groups, betas=tuple(bcfg.get("betas", (0.9, 0.999))))
    n, bs = record_len(x_rec), bcfg["batch_size"]
    dev = next(block.parameters()).device
    for m in block.modules:
        m.train(False)
    # every step's sample indices, drawn on the CPU with ``gen`` (the same on every device) and
    # moved once, so that a step indexes records on the device without a host transfer
    idx_cpu = torch.stack([torch.randint(n, (min(bs, n),), generator=gen) for _ in range(steps)]) if steps else None
    idx_dev = to_device(idx_cpu, dev) if steps else None
    bar = tqdm(range(steps), desc=f"{mode} {block.name}", unit="step", leave=False)
    balance: Dict[str, float] = {}
    for t in bar:
        args, kwargs = index_record(x_rec, idx_cpu[t], dev, idx_dev[t])
        with feed(idx_cpu[t]):
            rec = reconstruction_loss(block(*args, **kwargs), index_record(y, idx_cpu[t], dev, idx_dev[t]))
        loss = rec
        if decay is not None and decay.active(t):
            reg = bcfg.get("reg_weight", 0.01) * sum(r.regularizer(decay(t)) for r in rounders)
            if not balance:
                alphas = [r.alpha for r in rounders]
                g_rec, g_reg = [torch.cat([(g if g is not None else torch.zeros_like(a)).flatten() for g, a in
                                           zip(torch.autograd.grad(term, alphas, retain_graph=True, allow_unused=True), alphas)])
                                for term in (rec, reg)]
                values = torch.stack([rec.detach(), reg.detach(), g_rec.norm(), g_reg.norm(), (g_rec.abs() > g_reg.abs()).float().mean()])
                balance = dict(zip(("anneal_rec", "anneal_reg", "anneal_rec_grad", "anneal_reg_grad", "anneal_rec_led"),
                                   values.double().tolist()))  # one host read, once per block
            loss = loss + reg
        opt.zero_grad(set_to_none=True)
        backward(loss)
        opt.step()
        if t % 50 == 0:  # a host read every 50 steps
            bar.set_postfix(rec=f"{rec.item():.2e}")
    for p in train:
        p.requires_grad_(False)
    _make_static(block)
    return balance


def brecq(mode: str):
    def run(generator: nn.Module, calib_inputs: torch.Tensor, variant: Variant, arch_cfg: Dict[str, Any], cfg: Dict[str, Any],
            arch=None, ckpt: Optional[Path] = None, extras: Optional[Dict[str, Any]] = None,
            job_params: Optional[Dict[str, Any]] = None, **_):
        bcfg = cfg["brecq"]
        # a checkpoint is resumed only by the same params, FP weights, calibration inputs and code
        fingerprint = resume.job_fingerprint(job_params or cfg, [__name__, *resume.modules_of(arch)],
                                             quantiles=arch_cfg["quantiles"], inputs=resume.tensor_digest(generator.state_dict(), calib_inputs, extras or {}))
        spec = spec_for(variant, "quantile", arch_cfg, cfg)
        fp = bake(copy.deepcopy(generator)).eval()
        qmodel = quantize_model(generator, spec)
        n = bcfg["calib_images"]
        inputs = calib_inputs[:n]
        bs = bcfg["batch_size"]
        calibrate(qmodel, sample_batches(arch, qmodel, inputs[: cfg["calibration"]["images"]], bs, extras))
        feed = sample_feed(arch, qmodel, extras)
        containers = arch.block_containers
        q_blocks, fp_blocks = split_blocks(qmodel, containers), split_blocks(fp, containers)
        losses: List[Dict[str, Any]] = []
        start = 0
        saved = None if ckpt is None else resume.load_checkpoint(ckpt, fingerprint)
        if saved is not None:  # finished blocks hold static quantizers again: same state layout
            qmodel.load_state_dict(saved["state_dict"])
            start, losses = int(saved["next_block"]), list(saved["losses"])
            print(f"resuming {mode} at block {start}/{len(q_blocks)}")
        gen = torch.Generator().manual_seed(cfg["seed"])
        # block inputs/targets beyond runtime.max_cache_mb go to memory-mapped files in the job's local
        # temporary folder (a killed job's leftovers are removed here, by the next attempt)
        max_bytes = int(cfg.get("runtime", {}).get("max_cache_mb", 4096) * 2**20)
        spill_dir = spill_folder(ckpt) if ckpt is not None else None
        if spill_dir is not None:
            shutil.rmtree(spill_dir, ignore_errors=True)
        targets: Dict[int, torch.Tensor] = {}
        for i in tqdm(range(start, len(q_blocks)), initial=start, total=len(q_blocks), desc=f"{mode} blocks", unit="block"):
            qb, fb = q_blocks[i], fp_blocks[i]
            spill = dict(spill_dir=spill_dir, max_bytes=max_bytes)
            x_rec = capture(qmodel, qb, inputs, bs, "inputs", batches=sample_batches(arch, qmodel, inputs, bs, extras), **spill)
            if i not in targets:  # the FP targets of this block and of the next ones that fit in max_bytes, in one pass
                ys = capture_outputs(fp, fp_blocks[i:], inputs, bs, batches=lambda: sample_batches(arch, fp, inputs, bs, extras), **spill)
                targets = {i + k: t for k, t in enumerate(ys)}
            y = targets.pop(i)
            before = _block_mse(qb, x_rec, y, bs, feed)
            gen.manual_seed(cfg["seed"] * 7919 + i)
            snap = _snapshot(qb)
            balance = _reconstruct_block(qb, x_rec, y, mode, bcfg, gen, feed)
            after = _block_mse(qb, x_rec, y, bs, feed)
            kept = "reconstructed"
            if after > before:  # never leave a block worse than its quantile initialisation
                _restore(snap)
                kept, after = "initial", _block_mse(qb, x_rec, y, bs, feed)
            losses.append({"block": i, "name": qb.name, "mse_before": before, "mse_after": after, "kept": kept, **balance})
            del x_rec, y
            if spill_dir is not None:
                shutil.rmtree(spill_dir, ignore_errors=True)
            if ckpt is not None:
                torch_save({"next_block": i + 1, "state_dict": qmodel.state_dict(), "losses": losses,
                            "fingerprint": fingerprint}, ckpt)
        return qmodel.eval(), spec, {"calibration_images": int(len(inputs)), "blocks": len(q_blocks), "recon": losses}

    run.__name__ = mode.replace("-", "_")
    return run


ar_brecq = brecq("ar-brecq")
ste_brecq = brecq("ste-brecq")


# What these methods are and the params section they own (workflow_src/registry.py reads these
# literals without importing this file).
METHODS = [
    {"name": "ar-brecq", "kind": "reconstruction", "title": "AR-BRECQ", "run": "ar_brecq", "needs": ["quantiles"],
     "reads": ["seed", "brecq.calib_images", "brecq.batch_size", "brecq.betas", "brecq.lr_qparams", "brecq.zeta", "brecq.gamma",
               "brecq.ar_steps", "brecq.ar_warmup", "brecq.lr_rounding", "brecq.reg_weight", "brecq.beta_range"],
     "requires": ["brecq.ar_steps"]},
    {"name": "ste-brecq", "kind": "reconstruction", "title": "STE-BRECQ", "run": "ste_brecq", "needs": ["quantiles"],
     "reads": ["seed", "brecq.calib_images", "brecq.batch_size", "brecq.betas", "brecq.lr_qparams", "brecq.zeta", "brecq.gamma",
               "brecq.ste_steps", "brecq.lr_weights"],
     "requires": ["brecq.ste_steps"]},
]
PARAMS = {
    "sections": {"brecq": {
        "description": "block-reconstruction PTQ hyperparameters (paper section 3.5, appendix A)",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "calib_images": {"$ref": "#/$defs/pos_int"},
            "batch_size": {"$ref": "#/$defs/pos_int"},
            "ar_steps": {"$ref": "#/$defs/pos_int"},
            "ar_warmup": {"type": "integer", "minimum": 0},
            "ste_steps": {"$ref": "#/$defs/pos_int"},
            "lr_weights": {"$ref": "#/$defs/pos_num"},
            "lr_qparams": {"type": "number", "minimum": 0},
            "betas": {"$ref": "#/$defs/betas"},
            "zeta": {"description": "AdaRound's stretch of the sigmoid above 1 (> 1: the rounding reaches 1 exactly)",
                     "type": "number", "exclusiveMinimum": 1},
            "gamma": {"description": "AdaRound's stretch below 0 (< 0: the rounding reaches 0 exactly)", "type": "number", "exclusiveMaximum": 0},
            "reg_weight": {"type": "number", "minimum": 0},
            "lr_rounding": {"$ref": "#/$defs/pos_num"},
            "beta_range": {"type": "array", "items": {"$ref": "#/$defs/pos_num"}, "minItems": 2, "maxItems": 2},
        },
    }},
    "requires": ["brecq.calib_images", "brecq.batch_size", "brecq.lr_weights", "brecq.lr_qparams"],
    "at_most": [["brecq.calib_images", "distill.size", "reconstruction draws from the distillation set"]],
}
