"""The device policy: where every stage computes, and what it records about it.

* ``runtime.device`` in the params: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or
  ``cuda:N``; :func:`resolve_device` turns it into a ``torch.device``.  Like every ``runtime``
  setting it is not a param of any job: changing it reruns nothing.
* Models, feature and perceptual networks are placed on that device when loaded; library functions
  that take a model move their inputs to the model's device (:func:`module_device`,
  :func:`to_device`) batch by batch.  Results go back to the CPU only to be saved
  (:func:`to_cpu`, used by ``utils.torch_save``).
* Seeded draws (latents, eval noise, data order, BRECQ's sample indices) are made with CPU
  ``torch.Generator``\\ s and then moved, so they are the same numbers on every device and the CPU
  results of the tiny profile do not depend on where the later compute runs.  (CUDA's generators
  produce different streams from the CPU's for the same seed.)
* :func:`describe_runtime` is what each job records: device, GPU, torch/CUDA versions and the
  TF32/cuDNN settings that change GPU numerics.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping

import torch
from torch import nn

KEY = "runtime.device"
_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(cfg_or_spec: Mapping[str, Any] | str | None = None) -> torch.device:
    """The device ``runtime.device`` names (``cfg_or_spec``: the params, or the setting itself;
    missing means ``auto``).  A CUDA device that is absent is an error naming the key."""
    spec = cfg_or_spec
    if spec is None or isinstance(spec, Mapping):
        spec = ((spec or {}).get("runtime") or {}).get("device", "auto")
    spec = str(spec)
    if not _SPEC.match(spec):
        raise ValueError(f"{KEY} = {spec!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"{KEY} = {spec!r}, but CUDA is not available here (torch {torch.__version__}, "
                               f"built for CUDA {torch.version.cuda}); set {KEY}: auto or cpu, or run on a GPU node")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"{KEY} = {spec!r}, but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` lives: the device of its first parameter (else buffer; else the CPU)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def to_device(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """``t`` on ``device`` (``None``: unchanged).  A CPU tensor bound for CUDA is copied through
    pinned memory without blocking: a plain copy from pageable memory synchronises the stream,
    which would stall the GPU once per batch."""
    if device is None:
        return t
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """``obj`` (nested dicts, lists and tuples) with ``fn`` applied to every tensor in it; state
    dicts keep their ``_metadata``."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        out = type(obj)((k, map_tensors(fn, v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(map_tensors(fn, v) for v in obj)
    return obj


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor on the CPU (a CPU tensor is returned as it is)."""
    return map_tensors(torch.Tensor.cpu, obj)


def rows_to_host(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Log rows whose values are 0-dim tensors (losses left on the device by the training steps)
    as rows of Python floats, read from the device in one transfer: one host sync per logging
    interval instead of one per value and step."""
    keys = [(i, k) for i, r in enumerate(rows) for k, v in r.items() if isinstance(v, torch.Tensor)]
    if not keys:
        return rows
    values = torch.stack([rows[i][k].detach().reshape(()).double() for i, k in keys]).tolist()
    out = [dict(r) for r in rows]
    for (i, k), v in zip(keys, values):
        out[i][k] = v
    return out


def rng_state(device: torch.device | None = None) -> Dict[str, Any]:
    """The RNG state a resumable checkpoint carries: the CPU generator's (``rng``) and, when
    ``device`` is a CUDA device, every CUDA generator's (``cuda_rng``)."""
    state: Dict[str, Any] = {"rng": torch.get_rng_state()}
    if device is not None and torch.device(device).type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(saved: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` saved (the CUDA states only when resuming on CUDA)."""
    if "rng" in saved:
        torch.set_rng_state(saved["rng"])
    if saved.get("cuda_rng") is not None and device is not None and torch.device(device).type == "cuda":
        states = saved["cuda_rng"]
        if len(states) != torch.cuda.device_count():
            raise RuntimeError(f"checkpoint holds the RNG states of {len(states)} CUDA devices, "
                               f"{torch.cuda.device_count()} are visible: resume with the same devices")
        torch.cuda.set_rng_state_all(states)


def describe_runtime(device: torch.device | str) -> Dict[str, Any]:
    """Where and how a job computed, for its JSON record and MLflow run: the device, the GPU's name,
    torch and CUDA/cuDNN versions, and the settings that change GPU numerics (TF32 for matmuls and
    convolutions, cuDNN benchmark/deterministic)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    info: Dict[str, Any] = {
        "device": str(device),
        "gpu_name": torch.cuda.get_device_name(device) if cuda else None,
        "torch_version": str(torch.__version__),  # a plain str: TorchVersion is no safe global of weights_only loads
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "threads": torch.get_num_threads(),
    }
    if cuda:
        index = device.index if device.index is not None else torch.cuda.current_device()
        info["gpu_memory_mb"] = torch.cuda.get_device_properties(index).total_memory // 2**20
    return info


def backward(loss: torch.Tensor) -> None:
    """``loss.backward()``; on the CPU with one intra-op thread.  oneDNN reduces convolution weight
    and bias gradients in an order that depends on the thread count on some CPUs (measured on an AMD
    EPYC: 1 and 2 threads gave different conv weight gradients, while forward passes, input
    gradients, linear and batch-norm layers were bit-identical), so a job that trains would learn
    other weights with other ``{threads}``.  With one thread for the backward pass the thread count
    changes no result; forward passes keep every thread.  On CUDA nothing changes."""
    n = torch.get_num_threads()
    if loss.device.type != "cpu" or n == 1:
        loss.backward()
        return
    torch.set_num_threads(1)
    try:
        loss.backward()
    finally:
        torch.set_num_threads(n)


__all__ = ["backward", "resolve_device", "module_device", "to_device", "map_tensors", "to_cpu", "rows_to_host", "rng_state", "restore_rng",
           "describe_runtime"]
