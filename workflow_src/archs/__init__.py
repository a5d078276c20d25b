"""GAN architectures.  Importing this package registers ``stylegan``, ``sagan`` and ``cyclegan``."""
from . import cyclegan, sagan, stylegan  # noqa: F401  (registration side effects)
from .base import ARCHS, GANArch, get_arch, register
from .layers import bake

__all__ = ["ARCHS", "GANArch", "get_arch", "register", "bake"]
