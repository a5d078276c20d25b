"""LSQ/LSQ+ and AdaRound quantizers: against PyTorch's fused ops, a textbook LSQ reference and
closed forms computed by hand."""
import math

import pytest
import torch

from workflow_src.quant import QuantLinear, QuantSpec, weight_quantizers
from workflow_src.quant.adaround import AdaRoundQuantizer, LinearTempDecay, rectified_sigmoid, rounding_regularizer
from workflow_src.quant.lsq import LSQQuantizer, grad_factor, lsq_reference
from workflow_src.quant.modules import activation_quantizer, weight_quantizer
from workflow_src.quant.quantizer import EPS

torch.manual_seed(0)



def act_fq(x, bits=8):
    fq = activation_quantizer(QuantSpec(a_bits=bits))
    fq.observer.update(x)
    fq.freeze()
    return fq


def w_fq(w, bits=8, per_channel=True):
    return weight_quantizer(w, QuantSpec(w_bits=bits, per_channel=per_channel))


# (name, tensor, static quantizer); activations are per-tensor affine, weights symmetric
def cases():
    x = torch.randn(4, 3, 6, 6) * 2 + 1
    w = torch.randn(6, 3, 3, 3) * torch.tensor([0.5, 1, 0.7, 1.3, 0.8, 1.0]).reshape(6, 1, 1, 1)
    return [("act8", x, act_fq(x)), ("act4", x, act_fq(x, 4)),
            ("w8-channel", w, w_fq(w)), ("w4-tensor", w, w_fq(w, 4, per_channel=False))]


CASES = cases()
IDS = [c[0] for c in CASES]


def grads(fn, x, q, dy):
    x = x.clone().requires_grad_()
    y = fn(x)
    params = [q.scale] + ([q.zero_point] if q.zero_point.requires_grad else [])
    for p in params:
        p.grad = None
    (y * dy).sum().backward()
    return y.detach(), x.grad, q.scale.grad.clone(), (q.zero_point.grad.clone() if q.zero_point.requires_grad else None)


def reference_fn(q):
    return lambda x: lsq_reference(x, q.scale, q.zero_point, q.qmin, q.qmax, grad_factor(x, q.qmax, q.axis), q.axis)


def codes(q, x):
    """v = x / s + z per element (z rounded as the ops do)."""
    s = q.scale.detach().reshape([-1] + [1] * (x.dim() - 1)) if q.axis is not None else q.scale.detach()
    z = torch.round(q.zero_point.detach()).reshape(s.shape)
    return x / s + z


def perturbed(fq):
    q = LSQQuantizer.from_static(fq)
    with torch.no_grad():  # move off the calibrated values, to a non-integer zero point
        q.scale.mul_(0.8)
        if q.learn_zero_point:
            q.zero_point.add_(3.3)
    return q


# ---------------------------------------------------------------- LSQ
@pytest.mark.parametrize("name,x,fq", CASES, ids=IDS)
def test_lsq_forward_equals_static_fused_op(name, x, fq):
    q = LSQQuantizer.from_static(fq)
    assert (q.bits, q.symmetric, q.axis, q.qmin, q.qmax, q.observing) == (fq.bits, fq.symmetric, fq.axis, fq.qmin, fq.qmax, False)
    assert q.learn_zero_point == (not fq.symmetric)
    assert torch.equal(q(x), fq(x))
    q = perturbed(fq)
    s, z = q.scale.detach(), torch.round(q.zero_point.detach()).int()
    expected = (torch.fake_quantize_per_tensor_affine(x, s.reshape(()), z.reshape(()), q.qmin, q.qmax) if q.axis is None
                else torch.fake_quantize_per_channel_affine(x, s, z, q.axis, q.qmin, q.qmax))
    assert torch.equal(q(x), expected)
    assert torch.equal(q.to_static()(x), expected)  # round trip to a static quantizer


@pytest.mark.parametrize("name,x,fq", CASES, ids=IDS)
def test_lsq_gradients_equal_textbook_reference_away_from_clip_edge(name, x, fq):
    q = perturbed(fq)
    xw = x * 1.5  # plenty of clipped values on both sides
    v = codes(q, xw)
    band = ((v >= q.qmin - 0.5) & (v < q.qmin)) | ((v > q.qmax) & (v <= q.qmax + 0.5))
    xw = torch.where(band, xw * 2, xw)  # push the few elements in the half-step band further out
    v = codes(q, xw)
    band = ((v >= q.qmin - 0.5) & (v < q.qmin)) | ((v > q.qmax) & (v <= q.qmax + 0.5))
    assert not band.any()
    inside = (torch.round(v) >= q.qmin) & (torch.round(v) <= q.qmax)
    assert inside.any() and (~inside).any()
    dy = torch.rand_like(xw) + 0.5
    y, dx, ds, dz = grads(q, xw, q, dy)
    y_ref, dx_ref, ds_ref, dz_ref = grads(reference_fn(q), xw, q, dy)
    assert torch.allclose(y, y_ref, atol=1e-6)
    assert torch.equal(dx, dy * inside) and torch.allclose(dx_ref, dy * inside)  # STE: 1 inside, 0 outside
    assert ds.shape == q.scale.shape and torch.allclose(ds, ds_ref, rtol=1e-4, atol=1e-6)
    assert (ds != 0).all()
    if q.learn_zero_point:  # LSQ+: -g * s * dy summed over the clipped elements
        g = grad_factor(xw, q.qmax, q.axis)
        assert float(dz.abs()) > 0 and torch.allclose(dz, dz_ref, rtol=1e-4)
        assert math.isclose(float(dz), -g * float(q.scale.detach()) * float((dy * ~inside).sum()), rel_tol=1e-4)


@pytest.mark.parametrize("symmetric", [False, True], ids=["act4", "w4"])
def test_fused_lsq_differs_from_textbook_exactly_in_the_half_step_outside_the_grid(symmetric):
    z = 0.0 if symmetric else 5.0
    q = LSQQuantizer(4, symmetric, torch.tensor([0.5]), torch.tensor([z]))  # power-of-two step: exact codes
    lo, hi = q.qmin, q.qmax
    v_same = [lo - 0.75, lo, lo + 0.25, 3.5 + lo, hi - 0.25, hi, hi + 0.5, hi + 0.75]
    v_band = [lo - 0.5, lo - 0.25, hi + 0.25, hi + 0.4]
    for v in v_same + v_band:
        x = torch.tensor([(v - z) * 0.5])
        _, dx, ds, dz = grads(q, x, q, torch.ones(1))
        _, dx_r, ds_r, dz_r = grads(reference_fn(q), x, q, torch.ones(1))
        dz, dz_r = (0.0, 0.0) if symmetric else (float(dz), float(dz_r))
        g = grad_factor(x, q.qmax, None)  # one element: 1 / sqrt(qmax)
        clip = min(max(v, lo), hi)
        if v in v_same:
            assert (float(dx), float(ds), dz) == pytest.approx((float(dx_r), float(ds_r), dz_r), abs=1e-7)
        else:  # fused: an ordinary rounding step; textbook: clipped
            assert (float(dx), float(ds), dz) == pytest.approx((1.0, g * (clip - v), 0.0), abs=1e-7)
            assert (float(dx_r), float(ds_r)) == pytest.approx((0.0, g * (clip - z)), abs=1e-7)
            assert dz_r == pytest.approx(0.0 if symmetric else -g * 0.5, abs=1e-7)


def test_fused_per_tensor_backward_rounds_a_half_zero_point_up():
    x = torch.tensor([[100.0]])  # clipped at qmax = 15
    s = torch.tensor([1.0], requires_grad=True)
    z = torch.tensor([2.5], requires_grad=True)
    y = torch._fake_quantize_learnable_per_tensor_affine(x, s, z, 0, 15, 1.0)
    y.sum().backward()
    assert float(y.detach()) == 15 - 2  # forward: round half to even, z = 2
    assert float(s.grad) == 15 - 3  # backward: int(z + 0.5) = 3
    s.grad = None
    torch._fake_quantize_learnable_per_channel_affine(x, s, z, 0, 0, 15, 1.0).sum().backward()
    assert float(s.grad) == 15 - 2  # the per-channel op is consistent
    s.grad = None
    lsq_reference(x, s, z, 0, 15, 1.0).sum().backward()
    assert float(s.grad) == 15 - 2


@pytest.mark.parametrize("name,x,fq", CASES, ids=IDS)
def test_lsq_adam_reduces_quantization_mse_and_keeps_weight_zero_point(name, x, fq):
    q = LSQQuantizer.from_static(fq)
    with torch.no_grad():
        q.scale.mul_(0.6)  # a poor start: range too narrow, values clipped on both sides
    groups = [{"params": [q.scale], "lr": 0.05 * float(q.scale.detach().min())}]
    opt = torch.optim.Adam(groups + ([{"params": [q.zero_point], "lr": 0.1}] if q.learn_zero_point else []))
    mse = lambda: ((q(x) - x) ** 2).mean()
    mse0 = float(mse().detach())
    for _ in range(30):
        opt.zero_grad()
        mse().backward()
        opt.step()
    assert float(mse().detach()) < 0.8 * mse0
    if fq.symmetric:
        assert "zero_point" not in dict(q.named_parameters()) and not q.zero_point.requires_grad
        assert torch.equal(q.zero_point, torch.zeros_like(q.scale))
        assert torch.equal(q.to_static().zero_point, torch.zeros_like(fq.zero_point))
    else:
        assert float(q.zero_point.detach()) != float(fq.zero_point)  # learned (LSQ+)


def test_lsq_scale_positive_by_straight_through_clamp_and_drop_in():
    x = torch.randn(64)
    q = LSQQuantizer(8, False, torch.tensor([-0.1]), torch.tensor([128.0]))
    assert torch.equal(q(x), torch.fake_quantize_per_tensor_affine(x, EPS, 128, 0, 255))
    q(x * 1e-6).sum().backward()
    assert float(q.scale.grad) != 0  # the gradient still reaches the raw parameter
    assert float(q.to_static().scale) == EPS
    with pytest.raises(ValueError):
        LSQQuantizer(8, True, torch.ones(1), learn_zero_point=True)
    with pytest.raises(ValueError):
        LSQQuantizer.from_static(activation_quantizer(QuantSpec()))  # not calibrated
    # drop-in for both quantizers of a quantized layer
    lin = QuantLinear.from_float(torch.nn.Linear(8, 4), QuantSpec(w_bits=4))
    xin = torch.randn(16, 8)
    lin.input_quant = act_fq(xin)
    ref = lin(xin)
    lin.input_quant = LSQQuantizer.from_static(lin.input_quant)
    lin.weight_quant = LSQQuantizer.from_static(lin.weight_quant)
    assert torch.equal(lin(xin), ref) and next(weight_quantizers(lin)) is lin.weight_quant
    lin(xin).sum().backward()
    assert lin.weight_quant.scale.grad.shape == (4,) and lin.input_quant.zero_point.grad is not None
    lin.input_quant.observing = True
    with pytest.raises(RuntimeError):
        lin(xin)


# ---------------------------------------------------------------- AdaRound
def test_rectified_sigmoid_and_regularizer_closed_forms():
    a = torch.tensor([0.0, math.log(3), -math.log(3), math.log(11), -math.log(11), 3.0, -3.0, 50.0])
    # sigmoid = 1/2, 3/4, 1/4, 11/12, 1/12, then saturated
    expected = torch.tensor([0.5, 0.8, 0.2, 1.0, 0.0, 1.0, 0.0, 1.0])
    assert torch.allclose(rectified_sigmoid(a), expected, atol=1e-6)
    assert float(rectified_sigmoid(torch.tensor(3.0), zeta=1.0, gamma=0.0)) == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert float(rounding_regularizer(torch.zeros(7), beta=20)) == pytest.approx(7.0)  # h = 1/2
    assert float(rounding_regularizer(torch.tensor([3.0, -3.0, 9.0]), beta=2)) == 0.0  # h in {0, 1}
    # h = 0.8 and 0.2: 1 - 0.6^beta each
    assert float(rounding_regularizer(a[1:3], beta=2)) == pytest.approx(2 * (1 - 0.36), abs=1e-5)
    assert float(rounding_regularizer(a[1:3], beta=3)) == pytest.approx(2 * (1 - 0.216), abs=1e-5)


W = torch.randn(6, 3, 3, 3) * torch.tensor([0.1, 1, 0.3, 2, 0.05, 0.5]).reshape(6, 1, 1, 1)
ADA = [(b, pc) for b in (8, 4) for pc in (True, False)]


@pytest.mark.parametrize("bits,per_channel", ADA, ids=[f"w{b}-{'channel' if pc else 'tensor'}" for b, pc in ADA])
def test_adaround_init_reproduces_weight_and_hard_mode_is_on_grid(bits, per_channel):
    fq = w_fq(W, bits, per_channel)
    q = AdaRoundQuantizer.from_static(fq, W)
    assert (q.bits, q.symmetric, q.axis, q.qmin, q.qmax, q.observing, q.hard) == (bits, True, fq.axis, fq.qmin, fq.qmax, False, False)
    s = fq.scale.reshape(-1, 1, 1, 1) if per_channel else fq.scale
    assert torch.allclose(q(W), torch.clamp(W, s * q.qmin, s * q.qmax), atol=1e-5, rtol=0)
    ws = torch.clamp(W / s, q.qmin, q.qmax)
    assert torch.allclose(q.h(), ws - torch.floor(ws), atol=1e-5)
    q.hard = True
    k = torch.round(q(W) / s)  # q(W) is exactly s times an integer code in [qmin, qmax]
    assert torch.equal(q(W), s * k) and k.min() >= q.qmin and k.max() <= q.qmax
    assert torch.equal(q(W), q.harden())
    # at initialisation hard rounding is rounding to nearest, ties up (fq rounds ties to even)
    assert torch.equal(q.harden(), s * torch.clamp(torch.floor(ws) + (ws - torch.floor(ws) >= 0.5), q.qmin, q.qmax))
    tie = (ws - torch.floor(ws)) == 0.5
    assert torch.allclose(q.harden()[~tie], fq(W)[~tie])
    with pytest.raises(ValueError):
        q(W[:2])
    with pytest.raises(ValueError):
        q(W.double())
    q.enabled = False
    assert q(W) is W
    with pytest.raises(ValueError):  # activations (affine) are not adaptively rounded
        AdaRoundQuantizer.from_static(CASES[0][2], W)


def fit_adaround(q, w, x, steps, reg_weight, beta):
    """AdaRound's layer objective: output MSE of ``x @ w.T`` plus the weighted regulariser."""
    opt = torch.optim.Adam([q.alpha], lr=0.1)
    for t in range(steps):
        opt.zero_grad()
        loss = ((x @ (q(w) - w).T) ** 2).sum()
        if beta(t) is not None:
            loss = loss + reg_weight * q.regularizer(beta(t))
        loss.backward()
        opt.step()


def layer(per_channel, seed=1):
    g = torch.Generator().manual_seed(seed)
    w, x = torch.randn(8, 16, generator=g), torch.randn(64, 16, generator=g)
    return w, x, w_fq(w, 4, per_channel)


@pytest.mark.parametrize("per_channel", [True, False], ids=["channel", "tensor"])
def test_adaround_regularizer_drives_rounding_to_binary_and_to_static(per_channel):
    w, x, fq = layer(per_channel)
    q = AdaRoundQuantizer.from_static(fq, w)
    fit_adaround(q, w, x, 100, 50.0, lambda t: 2.0)
    h = q.h()
    assert bool(((h == 0) | (h == 1)).all()) and float(q.regularizer(2.0).detach()) == 0.0
    soft = q(w).detach()
    q.hard = True
    assert torch.equal(q(w), soft)
    new_w, sq = q.to_static()
    assert torch.equal(new_w, soft) and torch.equal(sq(new_w), new_w)
    assert torch.equal(sq.zero_point, torch.zeros_like(fq.zero_point)) and torch.equal(sq.scale, fq.scale)
    ints = sq.integer(new_w)
    assert ints.min() >= sq.qmin and ints.max() <= sq.qmax
    # drop-in for a layer's weight quantizer, then frozen back into a static layer
    lin = QuantLinear.from_float(torch.nn.Linear(8, 4), QuantSpec(w_bits=4, per_channel=per_channel))
    xin = torch.randn(3, 8)
    lin.input_quant.enabled = False
    lin.weight_quant = AdaRoundQuantizer.from_static(lin.weight_quant, lin.weight)
    s = lin.weight_quant.scale.reshape(-1, 1) if per_channel else lin.weight_quant.scale
    clipped = torch.minimum(torch.maximum(lin.weight, s * q.qmin), s * q.qmax)
    assert torch.allclose(lin(xin), xin @ clipped.T + lin.bias, atol=1e-5)  # soft: starts at the (clipped) weight
    lin.weight_quant.hard = True
    out = lin(xin)
    assert torch.allclose(out, xin @ lin.weight_quant.harden().T + lin.bias, atol=1e-6)
    new_w, lin.weight_quant = lin.weight_quant.to_static()
    with torch.no_grad():
        lin.weight.copy_(new_w)
    assert torch.allclose(lin(xin), xin @ new_w.T + lin.bias, atol=1e-6)


def test_adaround_with_annealed_beta_beats_rounding_to_nearest():
    w, x, fq = layer(per_channel=True)
    q = AdaRoundQuantizer.from_static(fq, w)
    sched = LinearTempDecay(200, warmup=0.2)
    fit_adaround(q, w, x, 200, 5.0, lambda t: sched(t) if sched.active(t) else None)
    err = lambda wq: float(((x @ (wq - w).T) ** 2).sum())
    assert err(q.harden()) < 0.9 * err(fq(w))


def test_linear_temp_decay_endpoints():
    sched = LinearTempDecay(20000, warmup=0.2)  # the paper's 20000 steps, 4000 of warm-up
    assert sched.warmup_steps == 4000 and not sched.active(3999) and sched.active(4000)
    assert [sched(t) for t in (0, 3999, 4000, 12000, 20000, 30000)] == pytest.approx([20, 20, 20, 11, 2, 2])
    steps = LinearTempDecay(100, warmup=10, beta_start=10, beta_end=0)
    assert steps.warmup_steps == 10 and steps(55) == pytest.approx(5.0) and steps(100) == 0.0
    with pytest.raises(ValueError):
        LinearTempDecay(100, warmup=100)
