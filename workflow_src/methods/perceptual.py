"""Perceptual distillation losses for QAT (paper section 3.6 and 4.2; Johnson et al. 2016).

The quantized generator's output and the FP generator's output go through a frozen VGG-style
network; the *content* loss is the mean squared difference of the feature maps at one layer, the
*style* loss the squared Frobenius difference of Gram matrices ``F F^T / (C H W)`` summed over
several layers.

Two networks, one class (:class:`VGGFeatures`, the layer layout of torchvision's ``vgg*.features``):

* ``vgg16`` (paper profile): torchvision's ImageNet VGG16, read from the published state dict
  (``features.<i>.weight``; the classifier is ignored) with ImageNet input normalisation;
* ``tinyvgg`` (tiny profile): a small VGG trained by the workflow, self-supervised, on the offline
  training images (see :func:`train_tiny_vgg`).  It is a different network, trained on a different
  task, from the FID feature network: a loss that optimised the metric's own features would make
  the metric lie.

Layers are named as in the style-transfer literature: ``relu{stage}_{conv}``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..config.vgg import VGG16_CFG, layer_names  # noqa: F401  (the layouts and their layer names)
from ..device import backward, to_device

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's file name: the sha256 prefix follows the dash
VGG16_URL = "https://download.pytorch.org/models/" + VGG16_FILE
# Its full sha256.  torchvision publishes only the 8-hex prefix in the file name (torch.hub's
# convention; its docs give the file size, 527.8 MB).  This value comes from independent public
# records of the file found with a code search (several pinned weight lists in public repositories
# agree; one records 553,433,881 bytes), and it begins with the published prefix.
VGG16_SHA256 = "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """``features``: conv3x3 + ReLU per integer of ``cfg``, 2x2 max pool per ``"M"`` (torchvision's
    key layout); ``forward`` returns the requested ReLU outputs."""

    def __init__(self, cfg: Sequence, normalize: Tuple[Sequence[float], Sequence[float]] | None = None):
        super().__init__()
        layers: List[nn.Module] = []
        cin = 3
        for c in cfg:
            if c == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(c), 3, padding=1), nn.ReLU(inplace=False)]
                cin = int(c)
        self.cfg = list(cfg)
        self.features = nn.Sequential(*layers)
        self.names = layer_names(cfg)
        mean, std = normalize if normalize else ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # [-1, 1] -> [0, 1] -> normalised
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, layers: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Features of ``images`` (in [-1, 1]) at ``layers``."""
        unknown = [l for l in layers if l not in self.names]
        if unknown:
            raise KeyError(f"unknown perceptual layers {unknown}; this network has {sorted(self.names)}")
        want = {self.names[l]: l for l in layers}
        x = ((images + 1) / 2 - self.mean) / self.std
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in want:
                out[want[i]] = x
                if len(out) == len(want):
                    break
        return out


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix ``F F^T / (C H W)`` per sample: (n, c, h, w) -> (n, c, c)."""
    n, c, h, w = f.shape
    flat = f.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


class PerceptualLoss(nn.Module):
    """Content and style distances between two image batches through a frozen network."""

    def __init__(self, net: VGGFeatures, content_layer: str, style_layers: Sequence[str]):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.content_layer, self.style_layers = content_layer, list(style_layers)
        self.layers = sorted({content_layer, *style_layers}, key=lambda l: net.names[l] if l in net.names else -1)

    def train(self, mode: bool = True):  # the network stays frozen in eval mode
        return super().train(False)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        fx = self.net(x, self.layers)
        with torch.no_grad():
            ft = self.net(target, self.layers)
        content = F.mse_loss(fx[self.content_layer], ft[self.content_layer])
        style = sum(((gram(fx[l]) - gram(ft[l])) ** 2).sum(dim=(1, 2)).mean() for l in self.style_layers)
        return content, style


# ------------------------------------------------------------------------- loading and training
def load_vgg16(path: str) -> VGGFeatures:
    """VGG16 features from torchvision's published state dict (``features.*`` keys)."""
    from ..utils import torch_load

    state = torch_load(path)
    feats = {k: v for k, v in state.items() if k.startswith("features.")}
    net = VGGFeatures(VGG16_CFG, (IMAGENET_MEAN, IMAGENET_STD))
    missing = sorted(set(net.state_dict()) - set(feats))
    if missing:
        raise ValueError(f"{path!r} is not a VGG16 state dict: missing {missing[:4]}")
    net.load_state_dict(feats)
    return net.eval()


def load_perceptual(kind: str, path: str, device: torch.device | None = None, refuse_at_chance: bool = True) -> VGGFeatures:
    """The perceptual network ``perceptual.kind`` from ``path``, on ``device`` (default: the CPU);
    a tiny network whose recorded pretext accuracy is at chance is refused (:func:`check_pretext`)."""
    if kind == "vgg16":
        return load_vgg16(path).to(device)
    if kind == "tinyvgg":
        from ..utils import torch_load

        saved = torch_load(path)
        if refuse_at_chance:
            check_pretext(saved.get("pretext"), path)
        net = VGGFeatures(saved["cfg"])
        net.load_state_dict(saved["state_dict"])
        return net.eval().to(device)
    raise ValueError(f"perceptual.kind = {kind!r}: known kinds are 'vgg16' and 'tinyvgg'")


# The tiny network's pretext task: which of the 6 colour-channel permutations and 4 flips
# (none, horizontal, vertical, both) was applied.  Telling them apart needs colour statistics,
# edges and shape orientation, the cues a content/style loss should compare.
_PERMS = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]


N_CLASSES = 4 * len(_PERMS)
HELDOUT_FRACTION = 0.1  # of each domain's training images, never trained on: the held-out accuracy


def augment_batch(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`_augment` of every image ``x[i]`` (NCHW, on any device) with ``labels[i]`` (on the
    CPU, where they are drawn), in one pass."""
    perm = to_device(torch.tensor(_PERMS)[labels // 4], x.device)  # (n, 3)
    x = x[to_device(torch.arange(len(x))[:, None], x.device), perm]
    flip = to_device((labels % 4)[:, None, None, None], x.device)
    x = torch.where(flip % 2 == 1, x.flip(3), x)
    return torch.where(flip >= 2, x.flip(2), x)


@torch.no_grad()
def pretext_accuracy(clf: nn.Module, domains: List[torch.Tensor], batch_size: int = 256) -> float:
    """Share of (image, label) pairs classified right, every image under all 24 labels."""
    right = total = 0
    was = clf.training
    clf.eval()
    device = next(clf.parameters()).device
    for images in domains:
        for start in range(0, len(images), batch_size):
            x = to_device(images[start:start + batch_size], device)
            for label in range(N_CLASSES):
                labels = torch.full((len(x),), label)
                right += int((clf(augment_batch(x, labels)).argmax(dim=1) == to_device(labels, device)).sum())
                total += len(x)
    clf.train(was)
    return right / max(total, 1)


def chance_bound(n_pairs: int) -> float:
    """The held-out accuracy a network must exceed to be told apart from chance: chance (1/24)
    plus five binomial standard errors over ``n_pairs`` evaluated pairs."""
    p = 1.0 / N_CLASSES
    return p + 5.0 * math.sqrt(p * (1 - p) / max(n_pairs, 1))


def check_pretext(pretext: Dict | None, where: str) -> None:
    """Refuse a tiny perceptual network whose pretext accuracy on held-out images (recorded when
    it was trained) is missing or not above chance."""
    if not pretext:
        raise ValueError(f"{where!r}: the perceptual network records no pretext accuracy (trained before it was recorded): "
                         "rerun train_perceptual")
    if pretext["heldout_accuracy"] <= pretext["chance_bound"]:
        raise ValueError(f"{where!r}: the perceptual network is at chance on its pretext task: held-out accuracy "
                         f"{pretext['heldout_accuracy']:.3f} <= {pretext['chance_bound']:.3f} (chance {pretext['chance']:.3f} + 5 "
                         f"standard errors; train accuracy {pretext['train_accuracy']:.3f}); train it longer "
                         "(perceptual.tinyvgg.steps, lr) or set perceptual.tinyvgg.refuse_at_chance: false")


def _augment(x: torch.Tensor, label: int) -> torch.Tensor:
    perm, flip = _PERMS[label // 4], label % 4
    x = x[list(perm)]
    if flip & 1:
        x = x.flip(2)
    if flip & 2:
        x = x.flip(1)
    return x


class _Classifier(nn.Module):
    def __init__(self, net: VGGFeatures, n_classes: int):
        super().__init__()
        self.net = net
        last = list(net.names)[-1]
        self.last = last
        self.head = nn.Linear([c for c in net.cfg if c != "M"][-1], n_classes)

    def forward(self, x):
        f = self.net(x, [self.last])[self.last]
        return self.head(f.mean(dim=(2, 3)))


def train_tiny_vgg(domains: List[torch.Tensor], cfg: Dict, seed: int,
                   device: torch.device | None = None) -> Tuple[VGGFeatures, Dict[str, Any]]:
    """Train the tiny perceptual network with the pretext task above on ``domains``: one float
    image tensor in [-1, 1] per dataset/domain (sizes may differ; each step draws from one), on
    ``device`` (default: the CPU); initialisation and batches are drawn on the CPU, the same on
    every device.  A seeded :data:`HELDOUT_FRACTION` of each domain is held out; returns the
    network and its pretext record: train and held-out accuracy (every image under all 24
    labels), chance, and the bound :func:`check_pretext` requires."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train, held = [], []
    for images in domains:
        order = torch.randperm(len(images), generator=g)
        k = max(1, int(round(HELDOUT_FRACTION * len(images))))
        held.append(images[order[:k]])
        train.append(images[order[k:]])
    net = VGGFeatures(cfg["layers"])
    clf = _Classifier(net, N_CLASSES).to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=float(cfg.get("lr", 1e-3)))
    steps, bs = int(cfg.get("steps", 300)), int(cfg.get("batch_size", 64))
    bar = tqdm(range(steps), desc="perceptual net", unit="step")
    loss = torch.zeros(())
    for step in bar:
        images = train[step % len(train)]
        idx = torch.randint(len(images), (bs,), generator=g)
        labels = torch.randint(N_CLASSES, (bs,), generator=g)
        loss = F.cross_entropy(clf(augment_batch(to_device(images[idx], device), labels)), to_device(labels, device))
        opt.zero_grad(set_to_none=True)
        backward(loss)
        opt.step()
        if step % 50 == 0:  # a host read every 50 steps, not every step
            bar.set_postfix(loss=f"{loss.item():.3f}")
    sample = [x[torch.randperm(len(x), generator=g)[: len(h)]] for x, h in zip(train, held)]  # as many train images as held out
    n_held = sum(len(h) for h in held)
    pretext = {"task": "which of 6 colour-channel permutations x 4 flips", "classes": N_CLASSES, "chance": 1.0 / N_CLASSES,
               "train_accuracy": pretext_accuracy(clf, sample), "heldout_accuracy": pretext_accuracy(clf, held),
               "heldout_images": n_held, "chance_bound": chance_bound(n_held * N_CLASSES), "steps": steps,
               "final_loss": float(loss.detach())}
    return net.eval(), pretext
