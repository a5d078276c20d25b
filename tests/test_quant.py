"""Quantizers and observers against PyTorch's reference observers/ops and hand-computed cases."""
import math

import pytest
import torch
from torch import nn

from workflow_src.quant import (
    FakeQuantizer, MinMaxObserver, QuantConv2d, QuantLinear, QuantOp, QuantSpec, QuantileObserver,
    activation_quantizers, calibrate, fake_quantize, qparams, qrange, quantize_model, weight_quantizers,
)
from workflow_src.archs import ops
from workflow_src.quant.modules import weight_quantizer

torch.manual_seed(0)


def eq2(x, scale, zp, qmin, qmax):
    """Paper eq. (2), written out independently of the code under test."""
    return scale * (torch.clamp(torch.round(x / scale + zp), qmin, qmax) - zp)


@pytest.mark.parametrize("bits,signed,expected", [(8, True, (-128, 127)), (4, True, (-8, 7)), (8, False, (0, 255)), (2, True, (-2, 1))])
def test_qrange_closed_form(bits, signed, expected):
    assert qrange(bits, signed) == expected


@pytest.mark.parametrize("bits", [8, 4])
def test_activation_qparams_match_torch_minmax_observer(bits):
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    qmin, qmax = qrange(bits, signed=False)
    ref = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=qmin, quant_max=qmax)
    ref(x)
    ref_scale, ref_zp = ref.calculate_qparams()
    obs = MinMaxObserver(per_sample=True)
    obs.update(x)
    scale, zp = qparams(*obs.range(), qmin, qmax, symmetric=False)
    assert torch.allclose(scale, ref_scale.float(), rtol=1e-6)
    assert int(zp) == int(ref_zp)


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_qparams_match_torch_per_channel_symmetric(bits):
    w = torch.randn(6, 3, 3, 3)
    w[2] *= 10  # channels of different magnitudes
    qmin, qmax = qrange(bits, signed=True)
    ref = torch.ao.quantization.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=qmin, quant_max=qmax)
    ref(w)
    ref_scale, ref_zp = ref.calculate_qparams()
    q = weight_quantizer(w, QuantSpec(w_bits=bits, per_channel=True))
    assert torch.allclose(q.scale, ref_scale.float(), rtol=1e-6)
    assert torch.equal(q.zero_point, torch.zeros(6, dtype=torch.int32)) and torch.equal(ref_zp, torch.zeros(6, dtype=ref_zp.dtype))
    # per-tensor: one scale = max |w| / ((qmax - qmin) / 2)
    qt = weight_quantizer(w, QuantSpec(w_bits=bits, per_channel=False))
    assert math.isclose(float(qt.scale), float(w.abs().max()) / ((qmax - qmin) / 2), rel_tol=1e-6)


def test_fake_quantize_matches_eq2_and_torch_quantize_dequantize():
    x = torch.randn(2, 4, 8, 8) * 2
    scale, zp = torch.tensor([0.05]), torch.tensor([100], dtype=torch.int32)
    out = fake_quantize(x, scale, zp, 0, 255, None)
    assert torch.allclose(out, eq2(x, 0.05, 100, 0, 255), atol=1e-6)
    ref = torch.quantize_per_tensor(x, 0.05, 100, torch.quint8).dequantize()
    assert torch.allclose(out, ref, atol=1e-6)
    # per channel, symmetric 4-bit
    w = torch.randn(4, 3, 3, 3)
    s = w.abs().amax(dim=(1, 2, 3)) / 7.3  # not 7.5: keep the extremes off an exact .5 tie
    out = fake_quantize(w, s, torch.zeros(4, dtype=torch.int32), -8, 7, 0)
    assert torch.allclose(out, eq2(w, s.view(-1, 1, 1, 1), 0, -8, 7), atol=1e-6)
    ref = torch.quantize_per_channel(w, s.double(), torch.zeros(4, dtype=torch.long), 0, torch.qint8)
    ref = torch.clamp(ref.int_repr(), -8, 7).float() * s.view(-1, 1, 1, 1)
    assert torch.allclose(out, ref, atol=1e-6)


def _kernel_integers(x, scale, zp, qmin, qmax, axis):
    """The integers PyTorch's fused fake-quant kernels produce, read back from their output
    ``(k - z) * s``: ``round(out / s) + z`` is ``k`` exactly for ``|k - z| <= 255``."""
    if axis is None:
        out = torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zp.reshape(()), qmin, qmax)
        return torch.round(out / scale.reshape(())) + zp.reshape(()).float()
    out = torch.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax)
    shape = [1] * x.dim()
    shape[axis] = -1
    return torch.round(out / scale.view(shape)) + zp.view(shape).float()


@pytest.mark.parametrize("bits", [8, 4])
def test_integers_are_the_fake_quant_kernels_integers_at_the_symmetric_ties(bits):
    """Min-max symmetric scales put every channel's extreme weight on the tie ``amax / s = t_max + 1/2``;
    ``x / s`` and PyTorch's ``x * (1/s)`` fall on either side of it in many channels: the exported
    integers must be the kernel's."""
    from workflow_src.quant.quantizer import integers

    qmin, qmax = qrange(bits, signed=True)
    w = torch.randn(2048, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    amax = w.abs().amax(dim=(1, 2, 3))
    s, z = qparams(-amax, amax, qmin, qmax, symmetric=True)
    ref = _kernel_integers(w, s, z, qmin, qmax, 0)
    by_division = torch.clamp(torch.round(w / s.view(-1, 1, 1, 1)), qmin, qmax)
    assert (by_division != ref).sum() > 10  # the ties are really there (division rounds them otherwise)
    assert torch.equal(integers(w, s, z, qmin, qmax, 0), ref)
    q = weight_quantizer(w, QuantSpec(w_bits=bits, per_channel=True))
    assert torch.equal(q.scale, s) and torch.equal(q.integer(w), ref)
    # per tensor: one tie per tensor, many tensors
    for i in range(0, 256):
        wi = w[i:i + 1]
        qt = weight_quantizer(wi, QuantSpec(w_bits=bits, per_channel=False))
        assert torch.equal(qt.integer(wi), _kernel_integers(wi, qt.scale, qt.zero_point, qmin, qmax, None))


def test_integers_round_exact_halves_to_even_like_the_kernels():
    """Exact ties (``x * (1/s)`` is ``k + 1/2`` in float32): half to even, affine zero point added
    after rounding, clamped to the grid; per tensor and per channel."""
    from workflow_src.quant.quantizer import integers

    x = torch.tensor([[0.125, 0.375, -0.125, -0.375, 0.625, 63.875, -64.125, 0.0]])  # / 0.25: .5, 1.5, ..., 255.5, -256.5
    s, z = torch.tensor([0.25]), torch.tensor([3], dtype=torch.int32)
    want = torch.tensor([[3.0, 5.0, 3.0, 1.0, 5.0, 255.0, 0.0, 3.0]])  # 0+3, 2+3, -0+3, -2+3, 2+3, clamp(256+3), clamp(-256+3), 3
    assert torch.equal(integers(x, s, z, 0, 255, None), want)
    assert torch.equal(_kernel_integers(x, s, z, 0, 255, None), want)
    xc = torch.cat([x, 2 * x])  # channel 1: scale 0.5, same ratios
    sc, zc = torch.tensor([0.25, 0.5]), torch.tensor([3, 3], dtype=torch.int32)
    assert torch.equal(integers(xc, sc, zc, 0, 255, 0), torch.cat([want, want]))
    assert torch.equal(_kernel_integers(xc, sc, zc, 0, 255, 0), torch.cat([want, want]))
    q = FakeQuantizer(8, symmetric=False, observer=MinMaxObserver(per_sample=True))
    q.scale.copy_(s)
    q.zero_point.copy_(z)
    q.calibrated.fill_(True)
    assert torch.equal(q.integer(x), want) and torch.equal(q(x), s * (want - 3))


def test_hand_computed_case():
    # range [-1, 3] at 2 bits unsigned: scale 4/3, zero point round(0.75) = 1; grid {-4/3, 0, 4/3, 8/3}
    scale, zp = qparams(torch.tensor([-1.0]), torch.tensor([3.0]), 0, 3, symmetric=False)
    assert math.isclose(float(scale), 4 / 3, rel_tol=1e-6) and int(zp) == 1
    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 1.9, 5.0])
    out = fake_quantize(x, scale, zp, 0, 3, None)
    assert torch.allclose(out, torch.tensor([-4 / 3, 0.0, 0.0, 4 / 3, 4 / 3, 8 / 3]), atol=1e-6)


@pytest.mark.parametrize("value", [0.0, 2.5, -3.0])
def test_constant_and_zero_range_tensors(value):
    x = torch.full((1, 2, 3, 3), value)
    q = FakeQuantizer(8, symmetric=False, observer=MinMaxObserver(per_sample=True))
    q.observer.update(x)
    q.freeze()
    assert torch.isfinite(q.scale).all() and float(q.scale) > 0
    out = q(x)
    # 0 is always exact; a constant is within half a step of itself
    assert torch.allclose(out, x, atol=float(q.scale) / 2 + 1e-7)
    w = torch.full((3, 2, 1, 1), value)
    qw = weight_quantizer(w, QuantSpec(w_bits=4, per_channel=True))
    assert torch.allclose(qw(w), w, atol=float(qw.scale.max()) / 2 + 1e-7)


def test_ste_gradient_inside_and_outside_range():
    q = FakeQuantizer(8, symmetric=False, observer=MinMaxObserver(per_sample=True))
    q.observer.update(torch.tensor([[0.0, 1.0]]))
    q.freeze()
    x = torch.tensor([-0.5, 0.2, 0.5, 0.99, 1.5], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_quantile_observer_closed_forms():
    x = torch.arange(1001, dtype=torch.float32).reshape(1, 1001)
    obs = QuantileObserver(upper=0.999, lower=0.001, momentum=0.99, per_sample=True)
    obs.update(x)
    lo, hi = obs.range()
    assert math.isclose(float(hi), 999.0, abs_tol=1e-3) and math.isclose(float(lo), 1.0, abs_tol=1e-3)
    # 1.0/0.0 quantiles of one sample equal min/max
    obs = QuantileObserver(upper=1.0, lower=0.0, per_sample=True)
    y = torch.randn(1, 3, 4, 4)
    obs.update(y)
    assert torch.equal(obs.range()[1], y.max().reshape(1)) and torch.equal(obs.range()[0], y.min().reshape(1))


def test_quantile_moving_average_is_sample_by_sample():
    m = 0.9
    a, b, c = (torch.rand(1, 50) * k for k in (1.0, 2.0, 3.0))
    batched = QuantileObserver(upper=0.99, lower=0.01, momentum=m, per_sample=True)
    batched.update(torch.cat([a, b, c]))
    hi = [torch.quantile(t, 0.99) for t in (a, b, c)]
    expected = (hi[0] * m + hi[1] * (1 - m)) * m + hi[2] * (1 - m)
    assert math.isclose(float(batched.range()[1]), float(expected), rel_tol=1e-5)
    one_by_one = QuantileObserver(upper=0.99, lower=0.01, momentum=m, per_sample=True)
    for t in (a, b, c):
        one_by_one.update(t)
    assert torch.allclose(one_by_one.range()[1], batched.range()[1])


def test_large_tensor_quantile_fallback_matches_torch_quantile():
    from workflow_src.quant.observers import rowwise_quantile
    import workflow_src.quant.observers as obs_mod

    x = torch.randn(2, 4000)
    old = obs_mod._QUANTILE_LIMIT
    obs_mod._QUANTILE_LIMIT = 10
    try:
        got = rowwise_quantile(x, 0.9973)
    finally:
        obs_mod._QUANTILE_LIMIT = old
    assert torch.allclose(got, torch.quantile(x, 0.9973, dim=1), atol=1e-5)


def test_invalid_quantiles_rejected():
    with pytest.raises(ValueError, match="lower"):
        QuantileObserver(upper=0.5, lower=0.6)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
        self.add = ops.Add()
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = self.add(h, self.conv2(h))
        return self.fc(h.mean(dim=(2, 3)))


def _quantized_error(bits, per_channel=True):
    torch.manual_seed(1)
    model = Tiny().eval()
    data = torch.randn(32, 3, 8, 8)
    q = quantize_model(model, QuantSpec(w_bits=bits, a_bits=8, per_channel=per_channel))
    calibrate(q, data.split(8))
    with torch.no_grad():
        return (q(data) - model(data)).pow(2).mean().item(), q, model


def test_transform_replaces_every_layer_and_operand():
    err, q, model = _quantized_error(8)
    assert isinstance(q.conv1, QuantConv2d) and isinstance(q.conv2, QuantConv2d) and isinstance(q.fc, QuantLinear)
    assert isinstance(q.add, QuantOp) and len(q.add.operand_quant) == 2
    assert isinstance(model.conv1, nn.Conv2d) and not isinstance(model.conv1, QuantConv2d)  # original untouched
    assert len(list(activation_quantizers(q))) == 5 and len(list(weight_quantizers(q))) == 3
    assert all(bool(a.calibrated) for a in activation_quantizers(q))


def test_quantized_weights_lie_on_the_integer_grid():
    _, q, _ = _quantized_error(4)
    for wq, layer in ((q.conv1.weight_quant, q.conv1), (q.fc.weight_quant, q.fc)):
        wint = wq(layer.weight) / wq.scale.view(-1, *[1] * (layer.weight.dim() - 1))
        assert torch.allclose(wint, wint.round(), atol=1e-4)
        assert wint.min() >= -8 and wint.max() <= 7


def test_fewer_bits_more_error():
    e8, _, _ = _quantized_error(8)
    e4, _, _ = _quantized_error(4)
    assert 0 < e8 < e4


def test_uncalibrated_activation_quantizer_raises():
    q = quantize_model(Tiny().eval(), QuantSpec())
    with pytest.raises(RuntimeError, match="calibration"):
        q(torch.randn(1, 3, 8, 8))


def test_quant_conv_matches_pytorch_int8_kernel():
    """Our fake-quantized conv against PyTorch's real int8 convolution (fbgemm/qnnpack)."""
    engines = torch.backends.quantized.supported_engines
    engine = "fbgemm" if "fbgemm" in engines else ("qnnpack" if "qnnpack" in engines else None)
    if engine is None:
        pytest.skip(f"no quantized engine in this torch build: {engines}")
    torch.backends.quantized.engine = engine
    from workflow_src.deploy.runtime import cpu_has_vnni

    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, padding=1).eval()
    x = torch.randn(2, 4, 8, 8)
    # without VNNI, fbgemm adds pairs of u8*s8 products in saturating int16 (here: off by 0.55, 35
    # output steps); 7-bit activations cannot saturate, as PyTorch's own x86 qconfig (reduce_range)
    a_bits = 8 if cpu_has_vnni() else 7
    q = QuantConv2d.from_float(conv, QuantSpec(w_bits=8, a_bits=a_bits, per_channel=True))
    calibrate(q, [x])
    out = q(x).detach()
    s_in, z_in = float(q.input_quant.scale), int(q.input_quant.zero_point)
    qx = torch.quantize_per_tensor(x, s_in, z_in, torch.quint8)
    qw = torch.quantize_per_channel(conv.weight.detach(), q.weight_quant.scale.double(), torch.zeros(6, dtype=torch.long), 0, torch.qint8)
    out_scale = float((out.max() - out.min()) / 255)
    out_zp = int(round(-float(out.min()) / out_scale))
    ref = torch.ao.nn.quantized.functional.conv2d(qx, qw, conv.bias.detach(), padding=1, scale=out_scale, zero_point=out_zp).dequantize()
    ours = torch.quantize_per_tensor(out, out_scale, out_zp, torch.quint8).dequantize()
    assert (ref - ours).abs().max() <= out_scale + 1e-6


def test_loading_an_uncalibrated_state_is_checked_again():
    q = FakeQuantizer(8, symmetric=False, observer=MinMaxObserver(per_sample=True))
    fresh = {k: v.clone() for k, v in q.state_dict().items()}
    q.observer.update(torch.randn(2, 4))
    q.freeze()
    q(torch.randn(2, 4))
    q.load_state_dict(fresh)
    with pytest.raises(RuntimeError, match="calibration"):
        q(torch.randn(2, 4))
