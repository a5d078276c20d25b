"""Reconstruction blocks: the units BRECQ-style PTQ reconstructs one after another.

Each architecture names, in execution order, the containers its blocks come from
(``GANArch.block_containers``); :func:`split_blocks` turns them into blocks:

* a leaf weight module (``nn.Linear``/``nn.Conv2d`` or its quantized version) is one block;
* an ``nn.ModuleList`` contributes each child as one block (StyleGAN's styled conv blocks);
* an ``nn.Sequential`` is cut before every child that holds a weight layer, so each weight layer
  forms a block with the normalisation/activation that follows it; a padding or upsampling module
  right before a weight layer joins that layer's block.  This yields the linear + LeakyReLU pairs of
  StyleGAN's mapping network, SAGAN's up-blocks and attention block, and CycleGAN's stem, down-
  sampling, residual, upsampling and output blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

import torch
from torch import nn

from ..device import module_device, to_device

_PRE = (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.Upsample)


def _has_weight_layer(m: nn.Module) -> bool:
    return any(isinstance(x, (nn.Conv2d, nn.Linear)) for x in m.modules())


@dataclass
class Block:
    """Consecutive modules applied in order; the first receives the captured call arguments."""

    name: str
    modules: List[nn.Module]

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.modules[0](*args, **kwargs)
        for m in self.modules[1:]:
            out = m(out)
        return out

    def parameters(self):
        for m in self.modules:
            yield from m.parameters()


def _named(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise KeyError(f"reconstruction block container {path!r} not found in {type(model).__name__}") from None


def split_blocks(model: nn.Module, containers: Sequence[str]) -> List[Block]:
    blocks: List[Block] = []
    for path in containers:
        m = _named(model, path)
        if isinstance(m, nn.ModuleList):
            blocks += [Block(f"{path}.{i}", [c]) for i, c in enumerate(m) if _has_weight_layer(c)]
        elif isinstance(m, nn.Sequential):
            children = list(m.named_children())
            group: List[Tuple[str, nn.Module]] = []
            for i, (name, child) in enumerate(children):
                starts = _has_weight_layer(child) or (isinstance(child, _PRE) and i + 1 < len(children) and _has_weight_layer(children[i + 1][1]))
                if starts and any(_has_weight_layer(c) for _, c in group):
                    blocks.append(Block(f"{path}[{group[0][0]}:{group[-1][0]}]", [c for _, c in group]))
                    group = []
                group.append((name, child))
            if group:
                blocks.append(Block(f"{path}[{group[0][0]}:{group[-1][0]}]", [c for _, c in group]))
        else:
            blocks.append(Block(path, [m]))
    return blocks


class _Stop(Exception):
    pass


class _Rows:
    """Per-batch tensors of one argument position gathered into one tensor of ``n`` rows: in
    memory, or, when ``path`` is given, in a memory-mapped ``.npy`` file that is filled batch by
    batch (the block inputs of a paper-scale generator do not fit in memory)."""

    def __init__(self, first: torch.Tensor, n: int, path: Path | None):
        self.path, self.n, self.filled = path, n, 0
        self.parts: List[torch.Tensor] = []
        self.mm = None
        if path is not None:
            import numpy as np

            path.parent.mkdir(parents=True, exist_ok=True)
            dtype = torch.empty((), dtype=first.dtype).numpy().dtype
            self.mm = np.lib.format.open_memmap(str(path), mode="w+", dtype=dtype, shape=(n, *first.shape[1:]))

    def add(self, t: torch.Tensor) -> None:
        if self.mm is None:
            self.parts.append(t)
        else:
            self.mm[self.filled:self.filled + len(t)] = t.cpu().numpy()
        self.filled += len(t)

    def result(self) -> torch.Tensor:
        if self.mm is None:
            return torch.cat(self.parts)
        self.mm.flush()
        return torch.from_numpy(self.mm)


@torch.no_grad()
def capture(model: nn.Module, block: Block, inputs: torch.Tensor, batch_size: int, what: str,
            spill_dir: Path | None = None, max_bytes: int | None = None, batches: Iterable[torch.Tensor] | None = None) -> Any:
    """Run ``model`` on ``inputs`` (moved batch by batch to the model's device) and record the
    block's call arguments (``what="inputs"``: one record ``(args, kwargs)``) or its output
    (``what="outputs"``: one tensor), concatenated over the batches along the batch dimension, on
    that device; arguments broadcast over the batch (such as a constant input) are kept from the
    first batch.  The forward pass stops as soon as the block is done.

    When the whole would exceed ``max_bytes``, the batched tensors are written to memory-mapped
    files under ``spill_dir`` as they are captured (and indexed from there), so memory holds one
    batch at a time.

    ``batches``: the batches of ``inputs`` to run, in order (default ``inputs.split(batch_size)``),
    e.g. ``GANArch.batches``, which feeds every sample its own extra inputs (StyleGAN's noise)."""
    first, last = block.modules[0], block.modules[-1]
    n = len(inputs)
    n_batches = (n + batch_size - 1) // batch_size
    state: Dict[str, Any] = {"calls": 0}

    def store(tensors: List[Any]) -> None:
        if state["calls"] == 0:
            batched = [torch.is_tensor(a) and a.dim() > 0 and a.shape[0] == min(batch_size, n) for a in tensors]
            size = sum(a.numel() * a.element_size() for a, b in zip(tensors, batched) if b) * n_batches
            spill = spill_dir is not None and max_bytes is not None and size > max_bytes
            state["rows"] = [_Rows(a, n, Path(spill_dir) / f"{block.name}.{what}.{i}.npy" if spill else None) if b else None
                             for i, (a, b) in enumerate(zip(tensors, batched))]
            state["fixed"] = tensors
        for r, a in zip(state["rows"], tensors):
            if r is not None:
                r.add(a.detach())
        state["calls"] += 1

    def pre(_m, args, kwargs):
        store(list(args))
        state["kwargs"] = dict(kwargs)
        raise _Stop

    def post(_m, _args, out):
        store([out])
        raise _Stop

    handle = first.register_forward_pre_hook(pre, with_kwargs=True) if what == "inputs" else last.register_forward_hook(post)
    device = module_device(model)
    try:
        for x in inputs.split(batch_size) if batches is None else batches:
            try:
                model(to_device(x, device))
            except _Stop:
                pass
    finally:
        handle.remove()
    if state["calls"] != n_batches:
        raise RuntimeError(f"block {block.name} was not reached by the forward pass")
    values = tuple(r.result() if r is not None else a for r, a in zip(state["rows"], state["fixed"]))
    return values[0] if what == "outputs" else (values, state["kwargs"])


@torch.no_grad()
def capture_outputs(model: nn.Module, blocks: Sequence[Block], inputs: torch.Tensor, batch_size: int,
                    spill_dir: Path | None = None, max_bytes: int | None = None,
                    batches: Callable[[], Iterable[torch.Tensor]] | None = None) -> List[torch.Tensor]:
    """The outputs of ``blocks[0]`` and of as many of the blocks after it as fit in ``max_bytes``
    together, from one forward pass per batch: a list of :func:`capture` ``(..., "outputs")``
    results, bit for bit, for ``blocks[:k]`` (k >= 1).  What the model computes does not change
    between captures (the FP generator's block targets, in BRECQ), so one pass serves the next
    ``k`` blocks instead of one pass each.  The first batch decides ``k``: the blocks, in execution
    order, until the next would take the total over ``max_bytes`` (no limit: every block); a first
    block above the limit alone is captured as :func:`capture` does it (memory-mapped under
    ``spill_dir``), and alone.  Blocks whose outputs do not come in the order given are captured
    one by one.  The forward pass stops once the chosen blocks are done.  ``batches``: a function
    returning :func:`capture`'s ``batches`` (called again if the blocks must be captured one by one)."""
    batches = batches or (lambda: inputs.split(batch_size))
    n = len(inputs)
    n_batches = (n + batch_size - 1) // batch_size
    if not blocks:
        return []
    last_of = {id(b.modules[-1]): j for j, b in enumerate(blocks)}
    if len(last_of) != len(blocks):  # two blocks ending in one module: their hooks could not tell them apart
        return [capture(model, blocks[0], inputs, batch_size, "outputs", spill_dir, max_bytes, batches())]
    state: Dict[str, Any] = {"k": None, "total": 0, "seen": 0, "rows": {}, "calls": [0] * len(blocks), "order_ok": True}

    def post_for(j: int):
        def post(_m, _args, out):
            if state["k"] is None:  # first batch: choose how many blocks this pass serves
                if j != state["seen"]:
                    state["order_ok"] = False
                    raise _Stop
                batched = torch.is_tensor(out) and out.dim() > 0 and out.shape[0] == min(batch_size, n)
                size = out.numel() * out.element_size() * n_batches if batched else 0
                over = max_bytes is not None and state["total"] + size > max_bytes
                if over and j > 0:
                    state["k"] = j
                    raise _Stop
                spill = over and spill_dir is not None
                state["rows"][j] = _Rows(out, n, Path(spill_dir) / f"{blocks[j].name}.outputs.0.npy" if spill else None) if batched else out
                state["total"] += size
                state["seen"] += 1
                if over or j == len(blocks) - 1:
                    state["k"] = j + 1
            elif j >= state["k"]:
                raise _Stop
            if isinstance(state["rows"][j], _Rows):
                state["rows"][j].add(out.detach())
            state["calls"][j] += 1
            if state["k"] is not None and j == state["k"] - 1:
                raise _Stop
        return post

    handles = [b.modules[-1].register_forward_hook(post_for(j)) for j, b in enumerate(blocks)]
    device = module_device(model)
    try:
        for x in batches():
            try:
                model(to_device(x, device))
            except _Stop:
                pass
            if not state["order_ok"]:
                break
            if state["k"] is None:  # the first batch ended before the last block: every block seen is served
                state["k"] = state["seen"]
    finally:
        for h in handles:
            h.remove()
    if not state["order_ok"] or not state["k"]:
        return [capture(model, blocks[0], inputs, batch_size, "outputs", spill_dir, max_bytes, batches())]
    k = state["k"]
    if any(c != n_batches for c in state["calls"][:k]):
        raise RuntimeError(f"blocks {[b.name for b in blocks[:k]]} were not each reached once per batch by the forward pass")
    return [state["rows"][j].result() if isinstance(state["rows"][j], _Rows) else state["rows"][j] for j in range(k)]


def index_record(rec: Any, idx: torch.Tensor | slice, device: torch.device | None = None,
                 idx_on_device: torch.Tensor | None = None) -> Any:
    """Rows ``idx`` of a captured record, on ``device`` (spilled records live on the CPU, the
    others where they were captured).  ``idx_on_device``: the same indices on ``device``, used for
    tensors that live there, so that no index crosses devices."""
    def take(a):
        if not torch.is_tensor(a):
            return a
        if a.dim() > 0 and a.shape[0] == record_len(rec):
            i = idx_on_device if idx_on_device is not None and a.device == idx_on_device.device else idx
            a = a[i]
        return to_device(a, device)

    if torch.is_tensor(rec):
        return take(rec)
    args, kwargs = rec
    return tuple(take(a) for a in args), kwargs


def record_len(rec: Any) -> int:
    if torch.is_tensor(rec):
        return rec.shape[0]
    return max(a.shape[0] for a in rec[0] if torch.is_tensor(a) and a.dim() > 0)


__all__ = ["Block", "split_blocks", "capture", "capture_outputs", "index_record", "record_len"]
