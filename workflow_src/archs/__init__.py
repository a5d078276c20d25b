"""GAN architectures, one file each (stylegan.py, sagan.py, cyclegan.py), each declaring itself
with an ``ARCH`` literal that :mod:`workflow_src.registry` reads; the contract they fulfil is
:class:`.base.GANArch`.  No torch here: the registry's readers import this package."""
