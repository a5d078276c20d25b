"""Full-precision GAN training: one generic loop for every architecture, with tqdm progress,
periodic checkpoints written atomically, and resumption from the last checkpoint after a kill."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn
from tqdm import tqdm

from ..datasets import prepared as datasets
from ..config import arch_dataset
from ..device import describe_runtime, restore_rng, rng_state, rows_to_host
from .. import resume
from . import tracking
from ..files import append_rows, copy_atomic, truncate_rows
from ..utils import seed_everything, torch_load, torch_save
from .artifacts import make_arch
from .stages import job_values


def _state_dicts(state: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v.state_dict() for k, v in state.items() if isinstance(v, (nn.Module, torch.optim.Optimizer))}


def _load_state_dicts(state: Dict[str, Any], saved: Dict[str, Any]) -> None:
    for k, v in state.items():
        if isinstance(v, (nn.Module, torch.optim.Optimizer)):
            if k not in saved:
                raise KeyError(f"checkpoint has no entry {k!r} (has {sorted(saved)})")
            v.load_state_dict(saved[k])


def train(cfg: Dict[str, Any], arch_name: str, data_dir: str | Path, out: str | Path, ckpt: str | Path, device: torch.device) -> Path:
    """Train ``arch_name`` on the prepared dataset in ``data_dir``; write the final weights of every
    network to ``out``.  ``ckpt`` is the resumable checkpoint (deleted once ``out`` exists)."""
    out, ckpt = Path(out), Path(ckpt)
    arch = make_arch(cfg, arch_name)
    tcfg = cfg["archs"][arch_name]["train"]
    seed_everything(cfg["seed"])
    state = arch.init_state(device)
    step = 0
    # The loss log grows beside the checkpoint and becomes out's .losses.csv at the end: a workflow
    # manager deletes a job's outputs before rerunning it (a SLURM requeue, a retry), never this.
    log_path = resume.log_beside(ckpt)
    kind = arch_dataset(cfg, arch_name)["kind"]
    batches = datasets.train_batches(data_dir, kind, tcfg["batch_size"], seed=cfg["seed"] * 1_000_003)
    # resumed only by the same params, data and code (else started over, saying why)
    fingerprint = resume.job_fingerprint(job_values(cfg, "train_fp", {"arch": arch_name}), [__name__, *resume.modules_of(arch)],
                                         data=(datasets.read_manifest(data_dir) or {}).get("sha256"))
    saved = resume.load_checkpoint(ckpt, fingerprint)
    if saved is None:
        log_path.unlink(missing_ok=True)  # a fresh run starts a fresh loss log
    else:
        _load_state_dicts(state, saved["state"])
        step = int(saved["step"])
        restore_rng(saved, device)
        batches.load_state_dict(saved["data"])  # the same batches and flips as an uninterrupted run
        truncate_rows(log_path, "step", step)  # rows a killed run logged after its last checkpoint
        print(f"resuming {arch_name} from {ckpt} at step {step}")
    rows = []
    every = cfg["train"]["checkpoint_every"]
    acfg = cfg["archs"][arch_name]
    tags = {"arch": arch_name, "method": "fp", "resumed_at": step}
    params = {"model": acfg["model"], "train": tcfg, "resolution": acfg["resolution"], "dataset": acfg["dataset"], "seed": cfg["seed"],
              "environment": describe_runtime(device)}
    with tracking.run("train", cfg, tags, params) as run:
        bar = tqdm(range(step, tcfg["steps"]), initial=step, total=tcfg["steps"], desc=f"train {arch_name}", unit="step")
        for step in bar:
            losses = arch.train_step(state, batches, step)
            rows.append({"step": step, **losses})
            if step % 10 == 0:
                bar.set_postfix({k: f"{v:.3f}" for k, v in rows_to_host([losses])[0].items()})
            if (step + 1) % every == 0 and step + 1 < tcfg["steps"]:
                rows = rows_to_host(rows)  # the losses stay on the device until here: one sync per interval
                append_rows(log_path, rows)
                torch_save({"state": _state_dicts(state), "step": step + 1, **rng_state(device),
                            "data": batches.state_dict(), "fingerprint": fingerprint}, ckpt)
                run.log_step_metrics(rows)
                rows = []
        rows = rows_to_host(rows)
        append_rows(log_path, rows)
        run.log_step_metrics(rows)
        torch_save({"arch": arch_name, "steps": tcfg["steps"], "state": _state_dicts(state)}, out)
        final_log = out.with_suffix(".losses.csv")
        if log_path.exists():  # copied, not moved: the log stays beside the checkpoint until that is gone
            copy_atomic(log_path, final_log)
        run.log_artifact(final_log)
    resume.finish(ckpt, log_path)
    return out


def load_fp_state(cfg: Dict[str, Any], arch_name: str, fp_path: str | Path, device: torch.device | None = None) -> Dict[str, Any]:
    """Every network of the trained FP GAN ``arch_name`` (see ``GANArch.init_networks``; not its
    optimisers), on ``device`` (default: the CPU)."""
    arch = make_arch(cfg, arch_name)
    saved = torch_load(fp_path)
    if saved.get("arch") != arch_name:
        raise ValueError(f"{str(fp_path)!r} holds a {saved.get('arch')!r} model, expected {arch_name!r}")
    state: Dict[str, Any] = arch.init_networks(torch.device(device or "cpu"))
    _load_state_dicts(state, saved["state"])
    if saved.get("imported"):  # a published checkpoint (workflow_src.workflow.fp.import_fp)
        state["imported"] = saved["imported"]
    return state


def load_generator(cfg: Dict[str, Any], arch_name: str, fp_path: str | Path, device: torch.device | None = None) -> nn.Module:
    """The trained FP generator of ``arch_name`` in eval mode, on ``device`` (default: the CPU)."""
    return make_arch(cfg, arch_name).generator(load_fp_state(cfg, arch_name, fp_path, device)).eval()


def load_discriminator(cfg: Dict[str, Any], arch_name: str, fp_path: str | Path, device: torch.device | None = None) -> nn.Module:
    """The trained FP discriminator that judges the generator's outputs, on ``device`` (default: the CPU)."""
    state = load_fp_state(cfg, arch_name, fp_path, device)
    if "imported" in state and state["imported"].get("discriminator") is None:
        raise ValueError(f"{str(fp_path)!r} was imported from {state['imported']['file']!r} without a discriminator "
                         f"(archs.{arch_name}.fp_checkpoint.discriminator is null): QAT cannot start its adversarial loss")
    return make_arch(cfg, arch_name).discriminator(state)
