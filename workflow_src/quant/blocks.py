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
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

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


@torch.no_grad()
def capture(model: nn.Module, block: Block, inputs: torch.Tensor, batch_size: int, what: str) -> List[Any]:
    """Run ``model`` on ``inputs`` and record, per batch, the block's call arguments
    (``what="inputs"``: ``(args, kwargs)``) or its output (``what="outputs"``); the forward pass
    stops as soon as the block is done."""
    first, last = block.modules[0], block.modules[-1]
    records: List[Any] = []

    def pre(_m, args, kwargs):
        records.append((tuple(a.detach() if torch.is_tensor(a) else a for a in args), dict(kwargs)))
        raise _Stop

    def post(_m, _args, out):
        records.append(out.detach())
        raise _Stop

    handle = first.register_forward_pre_hook(pre, with_kwargs=True) if what == "inputs" else last.register_forward_hook(post)
    try:
        for x in inputs.split(batch_size):
            try:
                model(x)
            except _Stop:
                pass
    finally:
        handle.remove()
    if len(records) != (len(inputs) + batch_size - 1) // batch_size:
        raise RuntimeError(f"block {block.name} was not reached by the forward pass")
    return records


def concat_records(records: List[Any]) -> Any:
    """Batch records -> one record along the batch dimension (tensors with batch dim > 1 are
    concatenated, parameters broadcast over the batch, such as a constant input, are kept)."""
    if torch.is_tensor(records[0]):
        return torch.cat(records)
    args = []
    for i, a in enumerate(records[0][0]):
        if torch.is_tensor(a):
            args.append(torch.cat([r[0][i] for r in records]))
        else:
            args.append(a)
    return tuple(args), records[0][1]


def index_record(rec: Any, idx: torch.Tensor) -> Any:
    if torch.is_tensor(rec):
        return rec[idx]
    args, kwargs = rec
    return tuple(a[idx] if torch.is_tensor(a) else a for a in args), kwargs


def record_len(rec: Any) -> int:
    if torch.is_tensor(rec):
        return rec.shape[0]
    return next(a.shape[0] for a in rec[0] if torch.is_tensor(a))


__all__ = ["Block", "split_blocks", "capture", "concat_records", "index_record", "record_len"]
