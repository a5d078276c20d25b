"""Quantization methods, one file each (ptq.py, brecq.py, qat.py, ...).  Each file declares the
methods it implements in a ``METHODS`` literal that :mod:`workflow_src.registry` reads; a method
takes the FP generator, the calibration inputs of the distillation set, the variant, the arch's
params and the params (keywords: ``arch``, the GANArch instance; ``ckpt``, a path for resumable
progress; ``tracker``, the MLflow run; ``extras``, the per-sample extra inputs of the
distillation set, e.g. StyleGAN's noise seeds, fed with each sample; and what the method ``needs``: ``distill``, the whole
distillation set, ``discriminator``, the FP discriminator, ``perceptual``, the perceptual network;
trained methods also ``losses_out``, the per-step loss CSV), and returns ``(quantized model,
QuantSpec, info)``; ``info`` is written next to the model.  No torch here: the registry's readers
import this package."""
