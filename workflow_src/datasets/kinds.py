"""Dataset kinds and the splits each has (no torch: the Snakefile's input functions ask which
split of real images FID compares with)."""
from __future__ import annotations

KINDS = ("digits", "horse2zebra-synthetic", "ffhq", "celeba", "horse2zebra")
TWO_DOMAIN_KINDS = frozenset({"horse2zebra-synthetic", "horse2zebra"})  # unpaired A -> B (CycleGAN)
# Kinds whose images keep their meaning when mirrored (faces, horses): trained with random
# horizontal flips.  Digits do not (a mirrored digit is another glyph or none).
FLIP_KINDS = frozenset({"ffhq", "celeba", "horse2zebra-synthetic", "horse2zebra"})


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    return kind


def is_two_domain(kind: str) -> bool:
    return check_kind(kind) in TWO_DOMAIN_KINDS


def flips(kind: str) -> bool:
    """Whether training batches of ``kind`` are randomly mirrored (:data:`FLIP_KINDS`)."""
    return check_kind(kind) in FLIP_KINDS


def splits_for(kind: str) -> list[str]:
    return ["trainA", "trainB", "testA", "testB"] if is_two_domain(kind) else ["train", "test"]
