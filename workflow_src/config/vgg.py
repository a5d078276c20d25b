"""VGG layer layouts and the names params use for their layers (``perceptual.content_layer``,
``perceptual.style_layers``): ``relu{stage}_{conv}`` as in the style-transfer literature.  No
torch: config validation checks the names, :mod:`workflow_src.methods.perceptual` builds the
networks from the same layouts."""
from __future__ import annotations

from typing import Dict, Sequence

# torchvision's vgg16.features: an integer per conv3x3 + ReLU (its width), "M" per 2x2 max pool
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def layer_names(cfg: Sequence) -> Dict[str, int]:
    """``{"relu1_1": index, ...}``: the index in ``features`` of each ReLU, by stage and conv."""
    names, stage, conv, i = {}, 1, 0, 0
    for c in cfg:
        if c == "M":
            stage, conv, i = stage + 1, 0, i + 1
        else:
            conv += 1
            names[f"relu{stage}_{conv}"] = i + 1
            i += 2
    return names
