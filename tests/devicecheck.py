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
  assert that a hot path has none; the ops run on the device and on the CPU are counted
  (:attr:`DeviceCheck.device_ops`, :attr:`DeviceCheck.host_ops`), so a test can assert that no
  network ran on the CPU (a stage that forgot to pass its device on computes there without mixing).

The values are the CPU's own, bit for bit: a run on the checking device can be compared exactly with
the same run on the CPU.  ``.numpy()`` of an :class:`OnDevice` fails as it fails for a CUDA tensor.

Limits: ``torch.tensor(data, device=...)`` builds its tensor below the dispatch modes, so on this
device it gives a real ``meta`` tensor without values, which the next op reports as an error (build
on the CPU and ``.to(device)``); a 0-dim CPU tensor is accepted in every pointwise op, though CUDA
refuses it in a few; ``nn.init`` skips meta tensors, so modules must be built on the CPU and moved
(as the library does, so that their initialisation draws the same numbers on every device).
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, NamedTuple, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

DEVICE = torch.device("meta")
aten = torch.ops.aten

# ops that move data between devices by design (what ``.to()``/``.cpu()``/``copy_`` run)
_COPIES = {aten.copy_, aten._to_copy, aten.to, aten._copy_from, aten._copy_from_and_resize}
_TO = {aten._to_copy, aten.to}
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
    if isinstance(d, torch.device):
        return d.type == DEVICE.type
    return isinstance(d, str) and d.split(":")[0] == DEVICE.type


class DeviceCheck(TorchDispatchMode):
    """See the module docstring.  ``events``: ``(kind, op)`` with kind ``"sync"`` (a value read on
    the host or a copy to the CPU) or ``"h2d"`` (a copy onto the device)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: List[Tuple[str, str]] = []
        self.device_ops: Counter = Counter()  # ops run on the checked device, by name
        self.host_ops: Counter = Counter()    # ops run on CPU tensors only, by name

    def ran_on_host(self, *names: str) -> List[str]:
        """The ops among ``names`` (substrings, e.g. ``"convolution"``) that ran on the CPU."""
        return sorted(op for op in self.host_ops if any(n in op for n in names))

    def syncs(self) -> List[str]:
        return [op for kind, op in self.events if kind == "sync"]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        info = _op_info(func)
        leaves: List[Any] = []
        _collect(args, leaves)
        if kwargs:
            _collect(list(kwargs.values()), leaves)
        on_dev, on_host, target = [], [], None
        for a in leaves:
            if isinstance(a, OnDevice):
                on_dev.append(a)
            elif isinstance(a, torch.Tensor):
                if a.device.type == DEVICE.type:
                    raise DevicePlacementError(f"{func}: got a real meta tensor of shape {tuple(a.shape)} (no values)")
                on_host.append(a)
            elif isinstance(a, torch.device) and target is None:
                target = a
        to_device = target is not None and _is_target(target)
        wrap = to_device if target is not None else bool(on_dev)  # the result's device: an explicit one wins (.cpu())
        if wrap:
            for g in leaves:
                if isinstance(g, torch.Generator) and g.device.type != DEVICE.type:
                    raise DevicePlacementError(f"{info.name}: draws on the checked device with a {g.device} generator "
                                               "(CUDA raises here: draw on the CPU and move, or pass a device generator)")
        if (on_dev or to_device) and on_host and not info.copy:
            if any(not (info.pointwise and a.dim() == 0) for a in on_host):
                found = ", ".join(f"{_device_of(a)} {tuple(a.shape)}" for a in leaves if isinstance(a, torch.Tensor))
                raise DevicePlacementError(f"{info.name}: tensor arguments on different devices: {found}")
        if on_dev and info.inplace_view:
            raise NotImplementedError(f"{info.name}: in-place view ops on the checking device are not supported")
        if info.copy or info.read:
            self._record(func, info, args, on_dev, target)

        # run on the CPU tensors
        (self.device_ops if wrap else self.host_ops)[info.name] += 1
        if not on_dev and not to_device:
            return func(*args, **kwargs)
        out = func(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
        wrappers = {id(a.elem): a for a in on_dev}

        def back(o):
            if isinstance(o, torch.Tensor):
                if id(o) in wrappers:  # an in-place op (or a no-op .to()) returns its argument; .cpu() copies
                    return wrappers[id(o)] if wrap else o.clone()
                return OnDevice(o) if wrap else o
            if isinstance(o, (list, tuple)):
                return type(o)(back(x) for x in o)
            return o

        return back(out)

    def _record(self, func, info, args, on_dev, target) -> None:
        """Host reads and transfers (see :attr:`events`)."""
        if info.read and on_dev:
            self.events.append(("sync", info.name))
        elif info.to:
            dst_dev = _is_target(target) if target is not None else bool(on_dev)
            if on_dev and not dst_dev:
                self.events.append(("sync", info.name))
            elif dst_dev and not on_dev:
                self.events.append(("h2d", info.name))
        elif func is aten.copy_.default:
            dst, src = args[0], args[1]
            if isinstance(src, OnDevice) and not isinstance(dst, OnDevice):
                self.events.append(("sync", info.name))
            elif isinstance(dst, OnDevice) and not isinstance(src, OnDevice):
                self.events.append(("h2d", info.name))


class _OpInfo(NamedTuple):
    name: str
    pointwise: bool     # a TensorIterator op: takes 0-dim CPU tensors with CUDA tensors
    inplace_view: bool
    copy: bool          # moves data between devices by design
    to: bool            # .to() / .cpu()
    read: bool          # returns a Python value read from the tensor


_OP_INFO: Dict[Any, _OpInfo] = {}


def _op_info(func) -> _OpInfo:
    info = _OP_INFO.get(id(func))
    if info is None:
        tags, packet = func.tags, func.overloadpacket
        info = _OP_INFO[id(func)] = _OpInfo(str(func), torch.Tag.pointwise in tags, torch.Tag.inplace_view in tags,
                                        packet in _COPIES, packet in _TO, func in _READS)
    return info


def _collect(x: Any, out: List[Any]) -> None:
    for v in x:
        if isinstance(v, (list, tuple)):
            _collect(v, out)
        else:
            out.append(v)


def _unwrap(x: Any) -> Any:
    """``x`` with every :class:`OnDevice` replaced by its CPU tensor and the checked device by the CPU."""
    if isinstance(x, OnDevice):
        return x.elem
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, torch.device) and x.type == DEVICE.type:
        return torch.device("cpu")
    return x


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
