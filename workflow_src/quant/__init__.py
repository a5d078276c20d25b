"""Quantization core: quantizers, observers, quantized modules and the model transform."""
from .modules import QuantConv2d, QuantLinear, QuantOp, QuantSpec, register_observer
from .observers import MinMaxObserver, QuantileObserver
from .quantizer import FakeQuantizer, fake_quantize, qparams, qrange
from .transform import activation_quantizers, calibrate, map_quantizers, quantize_model, set_quant, weight_quantizers

__all__ = [
    "QuantConv2d", "QuantLinear", "QuantOp", "QuantSpec", "MinMaxObserver", "QuantileObserver",
    "FakeQuantizer", "fake_quantize", "qparams", "qrange", "activation_quantizers", "calibrate",
    "map_quantizers", "quantize_model", "register_observer", "set_quant", "weight_quantizers",
]
