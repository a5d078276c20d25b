"""A checking device: a second device on a CPU-only machine, so that a tensor left on the CPU fails
a test here as it would fail on a GPU.

Why not PyTorch's ``meta`` device alone (measured with torch 2.14, /work/shared/STACK.md): the fused
fake-quant ops have no Meta kernels, ``conv2d`` with a meta input and a CPU weight does not raise,
and meta tensors carry no values, so nothing value-dependent can run on them (calibrated ranges,
``.item()`` at a logging interval, BRECQ's kept/initial decision, saving a result).

What this module builds instead: tensors that *report* the ``meta`` device but hold a real CPU
tensor (:class:`OnDevice`, a wrapper subclass), and a :class:`DeviceCheck` dispatch mode that
intercepts every aten op:

* an op whose tensor arguments sit on different devices raises :class:`DevicePlacementError`
  naming the op, the devices and the shapes.  As on CUDA, a 0-dim CPU tensor may take part in a
  pointwise op (``torch.Tag.pointwise``: TensorIterator's CPU scalars); copies between devices
  (``copy_``, ``_to_copy``: what ``.to()`` does) are allowed and recorded;
* an op asked to create a tensor on ``meta`` (``torch.zeros(..., device=meta)``, ``x.to(meta)``)
  runs on the CPU and returns an :class:`OnDevice`; an op on :class:`OnDevice` arguments runs on
  their CPU tensors and wraps its results; ``.cpu()``/``.to("cpu")`` returns a plain CPU tensor;
* a random op on the device given a CPU ``torch.Generator`` raises, as CUDA does;
* every host synchronisation a GPU would have (``.item()``, ``bool()``, a copy from the device to
  the CPU) and every copy onto the device is recorded in :attr:`DeviceCheck.events`, so tests can
  assert that a hot path has none.

The values are the CPU's own, bit for bit: a run on the checking device can be compared exactly with
the same run on the CPU.  ``.numpy()`` of an :class:`OnDevice` fails as it fails for a CUDA tensor.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

DEVICE = torch.device("meta")
aten = torch.ops.aten

# ops that move data between devices by design (what ``.to()``/``.cpu()``/``copy_`` run)
_COPIES = {aten.copy_.default, aten._to_copy.default, aten._copy_from.default, aten._copy_from_and_resize.default}
# ops whose result is a Python value read from the tensor: a host synchronisation on a GPU
_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default}


class DevicePlacementError(RuntimeError):
    """An op mixed tensors on different devices, or drew on the device from a CPU generator."""


class OnDevice(torch.Tensor):
    """A CPU tensor (``elem``) that reports the checking device."""

    elem: torch.Tensor
    __slots__ = ["elem"]

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device=DEVICE, requires_grad=False)
        r.elem = elem
        return r

    def __repr__(self) -> str:  # noqa: D105
        return f"OnDevice({self.elem!r})"

    def tolist(self):  # a host read, as on CUDA
        return self.cpu().tolist()

    def __format__(self, spec: str) -> str:  # f"{loss:.3f}" reads the value, as on CUDA
        return self.cpu().__format__(spec)

    def numpy(self, *args, **kwargs):  # CUDA tensors refuse too
        raise TypeError("can't convert a tensor on the checked device to numpy: use Tensor.cpu() to copy it to the host first")

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func}: a checking-device tensor was used outside DeviceCheck")


def _device_of(a: torch.Tensor) -> str:
    return "meta (checked device)" if isinstance(a, OnDevice) else str(a.device)


def _is_target(d: Any) -> bool:
    return d is not None and torch.device(d).type == DEVICE.type


class DeviceCheck(TorchDispatchMode):
    """See the module docstring.  ``events``: ``(kind, op)`` with kind ``"sync"`` (a value read on
    the host or a copy to the CPU) or ``"h2d"`` (a copy onto the device)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: List[Tuple[str, str]] = []

    def syncs(self) -> List[str]:
        return [op for kind, op in self.events if kind == "sync"]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, spec = tree_flatten((args, kwargs))
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        on_dev = [a for a in tensors if isinstance(a, OnDevice)]
        for a in tensors:
            if not isinstance(a, OnDevice) and a.device.type == DEVICE.type:
                raise DevicePlacementError(f"{func}: got a real meta tensor of shape {tuple(a.shape)} (no values)")
        target = kwargs.get("device")
        to_device = _is_target(target) or any(isinstance(a, torch.device) and _is_target(a) for a in flat)
        on_host = [a for a in tensors if not isinstance(a, OnDevice)]
        if func not in _COPIES and (on_dev or to_device) and on_host:
            pointwise = torch.Tag.pointwise in func.tags
            mixed = [a for a in on_host if not (pointwise and a.dim() == 0)]
            if mixed:
                found = ", ".join(f"{_device_of(a)} {tuple(a.shape)}" for a in tensors)
                raise DevicePlacementError(f"{func}: tensor arguments on different devices: {found}")
        if on_dev or to_device:
            for g in (a for a in flat if isinstance(a, torch.Generator)):
                if g.device.type != DEVICE.type:
                    raise DevicePlacementError(f"{func}: draws on the checked device with a {g.device} generator "
                                               "(CUDA raises here: draw on the CPU and move, or pass a device generator)")
        # record transfers and host reads
        name = str(func)
        if func in _READS and on_dev:
            self.events.append(("sync", name))
        elif func is aten._to_copy.default:
            src_dev = bool(on_dev)
            dst_dev = _is_target(target) if "device" in kwargs and target is not None else src_dev
            if src_dev and not dst_dev:
                self.events.append(("sync", name))
            elif dst_dev and not src_dev:
                self.events.append(("h2d", name))
        elif func is aten.copy_.default:
            dst, src = args[0], args[1]
            if isinstance(src, OnDevice) and not isinstance(dst, OnDevice):
                self.events.append(("sync", name))
            elif isinstance(dst, OnDevice) and isinstance(src, torch.Tensor) and not isinstance(src, OnDevice):
                self.events.append(("h2d", name))
        if torch.Tag.inplace_view in func.tags and on_dev:
            raise NotImplementedError(f"{func}: in-place view ops on the checking device are not supported")

        # run on the CPU tensors
        wrappers = {id(a.elem): a for a in on_dev}
        leaves = [a.elem if isinstance(a, OnDevice) else (torch.device("cpu") if isinstance(a, torch.device) and _is_target(a) else a)
                  for a in flat]
        uargs, ukwargs = tree_unflatten(leaves, spec)
        if isinstance(ukwargs.get("device"), str) and _is_target(ukwargs["device"]):
            ukwargs["device"] = torch.device("cpu")
        out = func(*uargs, **ukwargs)
        wrap = bool(on_dev) or to_device
        if func is aten._to_copy.default and "device" in kwargs and target is not None and not _is_target(target):
            wrap = False  # .cpu() / .to("cpu")

        def back(o):
            if not isinstance(o, torch.Tensor):
                return o
            if id(o) in wrappers:  # an in-place op returns its argument
                return wrappers[id(o)]
            return OnDevice(o) if wrap else o

        oflat, ospec = tree_flatten(out)
        return tree_unflatten([back(o) for o in oflat], ospec)


@contextmanager
def checking_device() -> Iterator[DeviceCheck]:
    """Within the context, ``torch.device("meta")`` is the checking device (see the module doc)."""
    import warnings

    with warnings.catch_warnings():
        # nn.Module.load_state_dict warns that copying into a meta parameter is a no-op; here it copies
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
        with DeviceCheck() as mode:
            yield mode


def on_checked_device(t: torch.Tensor) -> bool:
    return isinstance(t, OnDevice)
