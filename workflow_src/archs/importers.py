"""Importers: published checkpoints of the implementations the paper names, mapped onto this
project's networks (``archs.<arch>.fp_checkpoint``, rule ``import_fp``).

What can and cannot match:

* **StyleGAN, rosinality/style-based-gan-pytorch** (format ``rosinality``; the paper's model, FFHQ
  128x128): imported exactly into ``model.layout: rosinality`` (:mod:`.rosinality`), generator from
  the checkpoint entry ``g_running`` (the running average; ``generator`` is the raw one) or from a
  bare state dict (the "running average of generator" files), discriminator from ``discriminator``
  (the "Model & Optimizer" files).  Keys of levels beyond the configured resolution (the published
  model has all nine, up to 1024) and the unused ``to_rgb``/``from_rgb`` of other levels are
  ignored; every other key must be present with the configured shape, and the blur filters must be
  the fixed ``[1, 2, 1]`` filter.
* **SAGAN, heykeetae/Self-Attention-GAN** (format ``heykeetae``): cannot match.  Its generator is a
  DCGAN-style stack of ``ConvTranspose2d`` layers (``l1``..``l4``, ``last``) with two attention
  layers; the paper replaced every transposed convolution by Upsample + Conv and retrained
  (appendix A.2), and this project's SAGAN generator (layout ``heykeetae``) is that retrained
  network.  No published SAGAN checkpoint holds its weights: train it.
* **CycleGAN, junyanz/pytorch-CycleGAN-and-pix2pix** ``ResnetGenerator`` (format ``junyanz``):
  the stem, the downsampling convs and every residual block match layer for layer (same module
  indices, ``conv_block`` -> ``body``); the decoder's two ``ConvTranspose2d`` (``model.19``,
  ``model.22``) cannot match the paper's Upsample + Conv decoder, which the paper retrained
  (appendix A.3).  A full import is refused; ``partial=True`` loads the matching layers only (a
  warm start for training, not a substitute for it).  Its released generators come without
  discriminators.

Every mismatch raises :class:`CheckpointMismatch` naming the missing, unexpected or mis-shaped
published key and the configured shape.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .. import registry
from .layers import blur_kernel

SQRT2 = math.sqrt(2.0)


class CheckpointMismatch(ValueError):
    """A published checkpoint does not fit the configured network; the message names the keys."""


# (our key or None for a check-only entry, published key, published shape, convert or check)
Plan = List[Tuple[Optional[str], str, Tuple[int, ...], Callable[[torch.Tensor], Any]]]


def select(obj: Any, entry: Optional[str], what: str, where: str) -> Dict[str, torch.Tensor]:
    """The state dict ``obj[entry]`` (``entry`` None: ``obj`` itself), without a DataParallel
    ``module.`` prefix."""
    if not isinstance(obj, Mapping):
        raise CheckpointMismatch(f"{where}: the file holds a {type(obj).__name__}, not a dict of state dicts")
    if entry is None:
        sd = obj
        if not any(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointMismatch(f"{where}: the file is not a bare state dict (entries {sorted(sd)[:8]}); "
                                     f"name the entry holding the {what}")
    else:
        if entry not in obj:
            raise CheckpointMismatch(f"{where} = {entry!r}: the file has no such entry (entries: {sorted(map(str, obj))[:12]})")
        sd = obj[entry]
        if not isinstance(sd, Mapping):
            raise CheckpointMismatch(f"{where} = {entry!r}: that entry is a {type(sd).__name__}, not a state dict")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _apply(published: Mapping[str, torch.Tensor], model: nn.Module, plan: Plan, ignored: Callable[[str], bool],
           what: str, hint: str, complete: bool = True) -> nn.Module:
    """Check every planned key, reject unplanned ones, load the converted tensors.  ``complete``:
    the plan must cover every learned tensor of ``model``."""
    problems: List[str] = []
    loaded: Dict[str, torch.Tensor] = {}
    planned = set()
    for ours, key, shape, fn in plan:
        planned.add(key)
        if key not in published:
            problems.append(f"missing key {key!r}" + (f" (for {ours})" if ours else ""))
            continue
        t = published[key]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            problems.append(f"{key!r} is not a floating-point tensor")
        elif tuple(t.shape) != tuple(shape):
            problems.append(f"{key!r} has shape {tuple(t.shape)}; the configured {what} needs {tuple(shape)} ({hint})")
        elif ours is None:
            err = fn(t)
            if err:
                problems.append(f"{key!r}: {err}")
        else:
            loaded[ours] = fn(t)
    extra = sorted(k for k in published if k not in planned and not ignored(k))
    if extra:
        problems.append(f"{len(extra)} unexpected key(s), e.g. {extra[:6]}")
    if problems:
        shown = problems[:15] + ([f"... and {len(problems) - 15} more"] if len(problems) > 15 else [])
        raise CheckpointMismatch(f"the checkpoint does not match the configured {what}:\n  - " + "\n  - ".join(shown))
    own = model.state_dict()
    missed = [k for k in own if k not in loaded and not k.endswith(".noise")]  # noise maps are the project's own
    if missed and complete:  # the plan must cover every learned tensor of the model
        raise AssertionError(f"importer plan misses {missed[:5]}")
    model.load_state_dict({**own, **loaded})
    return model


def _scaled(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t * factor


def _same(t: torch.Tensor) -> torch.Tensor:
    return t.clone()


def _blur_check(t: torch.Tensor) -> Optional[str]:
    want = blur_kernel().view(1, 3, 3).to(t.dtype)
    return None if torch.allclose(t.view(-1, 3, 3), want.expand(t.shape[0], 3, 3)) else "not the [1, 2, 1] x [1, 2, 1] / 16 blur filter"


def _shape(model: nn.Module, key: str) -> Tuple[int, ...]:
    return tuple(model.state_dict()[key].shape)


def _equal(plan: Plan, model: nn.Module, ours: str, pub: str) -> None:
    """An equalized-lr layer (weight ``weight_orig * sqrt(2 / fan_in)``) and its bias."""
    plan.append((f"{ours}.weight", f"{pub}.weight_orig", _shape(model, f"{ours}.weight"), _scaled(SQRT2)))
    plan.append((f"{ours}.bias", f"{pub}.bias", _shape(model, f"{ours}.bias"), _same))


# -------------------------------------------------------------------------------- rosinality
ROSINALITY_LEVELS = 9  # 4 .. 1024


def _level_index(key: str, prefix: str) -> Optional[int]:
    m = re.match(re.escape(prefix) + r"\.(\d+)\.", key)
    return int(m.group(1)) if m else None


def rosinality_generator(published: Mapping[str, torch.Tensor], model: nn.Module) -> nn.Module:
    """Load a rosinality ``StyledGenerator`` state dict (``style.*``, ``generator.progression.*``,
    ``generator.to_rgb.*``) into ``model`` (a :class:`~.rosinality.RosinalityGenerator`)."""
    from .rosinality import FUSED_FROM

    n = len(model.blocks)
    if n > ROSINALITY_LEVELS:
        raise CheckpointMismatch(f"rosinality's generator has {ROSINALITY_LEVELS} levels (4..1024); the configured one has {n}")
    plan: Plan = []
    for i, layer in enumerate(model.mapping):
        if hasattr(layer, "weight"):
            _equal(plan, model, f"mapping.{i}", f"style.{i}.linear")
    plan.append(("const.input", "generator.progression.0.conv1.input", _shape(model, "const.input"), _same))
    for i in range(n):
        ours, pub = f"blocks.{i}", f"generator.progression.{i}"
        c = _shape(model, f"{ours}.conv2.weight")[0]
        if i > 0:
            if 4 * 2**i >= FUSED_FROM:  # transposed weight (in, out, 3, 3) -> conv orientation, flipped
                w = _shape(model, f"{ours}.conv1.0.weight")
                plan.append((f"{ours}.conv1.0.weight", f"{pub}.conv1.0.weight", (w[1], w[0], 3, 3),
                             lambda t: t.flip(2, 3).transpose(0, 1).contiguous() * SQRT2))
                plan.append((f"{ours}.conv1.0.bias", f"{pub}.conv1.0.bias", (c,), _same))
                blur = f"{pub}.conv1.1"
            else:
                _equal(plan, model, f"{ours}.conv1.1", f"{pub}.conv1.1.conv")
                blur = f"{pub}.conv1.2"
            plan += [(None, f"{blur}.weight", (c, 1, 3, 3), _blur_check), (None, f"{blur}.weight_flip", (c, 1, 3, 3), _blur_check)]
        for k in (1, 2):  # noise weights: equalized with fan_in = channels
            plan.append((f"{ours}.noise{k}.weight", f"{pub}.noise{k}.weight_orig", (1, c, 1, 1), _scaled(math.sqrt(2.0 / c))))
            _equal(plan, model, f"{ours}.adain{k}.style", f"{pub}.adain{k}.style.linear")
        _equal(plan, model, f"{ours}.conv2", f"{pub}.conv2.conv")
    _equal(plan, model, "to_rgb", f"generator.to_rgb.{n - 1}.conv")

    def ignored(key: str) -> bool:  # levels above the configured resolution; other levels' to_rgb
        p = _level_index(key, "generator.progression")
        r = _level_index(key, "generator.to_rgb")
        return (p is not None and n <= p < ROSINALITY_LEVELS) or (r is not None and r != n - 1 and r < ROSINALITY_LEVELS)

    return _apply(published, model, plan, ignored, "generator", "archs.stylegan.model: latent_dim, n_mlp, channels")


def rosinality_discriminator(published: Mapping[str, torch.Tensor], model: nn.Module) -> nn.Module:
    """Load a rosinality ``Discriminator`` state dict (``progression.*``, ``from_rgb.*``,
    ``linear.*``) into ``model`` (a :class:`~.rosinality.RosinalityDiscriminator`)."""
    n = len(model.blocks) + 1
    if n > ROSINALITY_LEVELS:
        raise CheckpointMismatch(f"rosinality's discriminator has {ROSINALITY_LEVELS} levels (4..1024); the configured one has {n}")
    first = ROSINALITY_LEVELS - n  # published index of the first level used
    activate = isinstance(model.from_rgb[1], nn.LeakyReLU)
    rgb = f"from_rgb.{first}" + (".0" if activate else "")
    if f"{rgb}.conv.weight_orig" not in published:
        other = f"from_rgb.{first}" + ("" if activate else ".0") + ".conv.weight_orig"
        if other in published:
            raise CheckpointMismatch(f"the checkpoint's discriminator was trained {'without' if activate else 'with'} a LeakyReLU "
                                     f"after from_rgb ({other!r}): set archs.stylegan.model.from_rgb_activate: {str(not activate).lower()}")
    plan: Plan = []
    _equal(plan, model, "from_rgb.0", f"{rgb}.conv")
    for b, block in enumerate(model.blocks):
        pub = f"progression.{first + b}"
        c = _shape(model, f"blocks.{b}.conv1.weight")[0]
        _equal(plan, model, f"blocks.{b}.conv1", f"{pub}.conv1.0.conv")
        plan += [(None, f"{pub}.conv2.0.weight", (c, 1, 3, 3), _blur_check), (None, f"{pub}.conv2.0.weight_flip", (c, 1, 3, 3), _blur_check)]
        if block.fused:
            plan.append((f"blocks.{b}.conv2.weight", f"{pub}.conv2.1.weight", (c, c, 3, 3), _scaled(SQRT2)))
            plan.append((f"blocks.{b}.conv2.bias", f"{pub}.conv2.1.bias", (c,), _same))
        else:
            _equal(plan, model, f"blocks.{b}.conv2", f"{pub}.conv2.1.conv")
    last = f"progression.{ROSINALITY_LEVELS - 1}"
    _equal(plan, model, "conv1", f"{last}.conv1.0.conv")
    _equal(plan, model, "conv2", f"{last}.conv2.0.conv")
    _equal(plan, model, "linear", "linear.linear")

    def ignored(key: str) -> bool:
        p = _level_index(key, "progression")
        r = _level_index(key, "from_rgb")
        return (p is not None and p < first) or (r is not None and r != first and r < ROSINALITY_LEVELS)

    return _apply(published, model, plan, ignored, "discriminator", "archs.stylegan.model: d_channels, from_rgb_activate")


# -------------------------------------------------------------------------------- SAGAN, CycleGAN
# published formats that cannot be imported, and why (each arch's ARCH literal says)
UNSUPPORTED = registry.refused_checkpoint_formats()


def heykeetae_sagan(published: Mapping[str, torch.Tensor], model: nn.Module) -> nn.Module:
    """Always refuses, naming the published transposed-convolution layers (see module docstring)."""
    tconv = sorted({k.split(".")[0] for k in published if re.match(r"(l\d|last)\.", k)})
    if not tconv:
        raise CheckpointMismatch("not a heykeetae/Self-Attention-GAN generator state dict (no l1..l4/last layers)")
    raise CheckpointMismatch(f"transposed convolution layers {tconv} have no counterpart: " + UNSUPPORTED["heykeetae"])


def junyanz_cyclegan(published: Mapping[str, torch.Tensor], model: nn.Module, partial: bool = False) -> List[str]:
    """Check and map the layers of a junyanz ``ResnetGenerator`` state dict (``model.<i>.weight``,
    residual blocks ``model.<i>.conv_block.{1,5}.*``) that match ``model`` (a
    :class:`~.cyclegan.ResnetGenerator`).  Refuses unless ``partial``; with ``partial`` loads the
    matching layers and returns the names of the layers left as they were (the decoder)."""
    net = model.net
    convs = [i for i, m in enumerate(net) if isinstance(m, nn.Conv2d)]
    from .cyclegan import ResnetBlock

    blocks = [i for i, m in enumerate(net) if isinstance(m, ResnetBlock)]
    encoder = [i for i in convs if i < blocks[0]]
    plan: Plan = []
    for i in encoder:
        for p in ("weight", "bias"):
            plan.append((f"net.{i}.{p}", f"model.{i}.{p}", _shape(model, f"net.{i}.{p}"), _same))
    for i in blocks:
        for j in (1, 5):
            for p in ("weight", "bias"):
                plan.append((f"net.{i}.body.{j}.{p}", f"model.{i}.conv_block.{j}.{p}", _shape(model, f"net.{i}.body.{j}.{p}"), _same))
    decoder = sorted({int(k.split(".")[1]) for k in published if re.match(r"model\.\d+\.(weight|bias)$", k) and int(k.split(".")[1]) > blocks[-1]})
    tconv = [f"model.{i}" for i in decoder if published[f"model.{i}.weight"].shape[-1] == 3]  # the 3x3 ConvTranspose2d
    if not partial:
        for ours, key, shape, _ in plan:  # report mis-shaped matching layers first
            if key in published and tuple(published[key].shape) != tuple(shape):
                raise CheckpointMismatch(f"{key!r} has shape {tuple(published[key].shape)}; the configured generator needs {tuple(shape)} "
                                         "(archs.cyclegan.model: ngf, n_blocks, n_downsampling)")
        raise CheckpointMismatch(f"decoder layers {tconv} are transposed convolutions: " + UNSUPPORTED["junyanz"])
    stats = re.compile(r".*\.(running_mean|running_var|num_batches_tracked)$")  # pre-0.4 InstanceNorm buffers

    def ignored(k: str) -> bool:  # the decoder, and InstanceNorm buffers of old checkpoints
        m = re.match(r"model\.(\d+)\.", k)
        return bool(stats.match(k)) or (m is not None and int(m.group(1)) > blocks[-1])

    _apply(published, model, plan, ignored, "generator", "archs.cyclegan.model: ngf, n_blocks, n_downsampling", complete=False)
    done = {ours for ours, *_ in plan}
    return sorted({k.rsplit(".", 1)[0] for k in model.state_dict() if k not in done})
