"""ptq-mse: each weight and activation range is the clipping of the min-max range that minimises
the quantization error over everything the quantizer sees.  Checked against an exhaustive grid
search written here from scratch (PyTorch's own observer for the scale and zero point, plain
round/clamp arithmetic in float64 for the error), on data and on a model's captured activations."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver as TorchMinMax
from torch.ao.quantization.observer import PerChannelMinMaxObserver as TorchPerChannel

from workflow_src import config as qcfg
from workflow_src import registry
from workflow_src.config import Variant
from workflow_src.methods import ptq_mse as M
from workflow_src.quant import QuantSpec, activation_quantizers, calibrate, quantize_model
from workflow_src.quant.modules import activation_quantizer, weight_quantizer

RATIOS = [1 - i / 100 for i in range(100)]


def _qparams_torch(lo, hi, qmin, qmax, symmetric):
    """PyTorch's observers' scale and zero point for the range [lo, hi] (per channel if 1-D)."""
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    if symmetric:
        obs = TorchPerChannel(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=qmin, quant_max=qmax)
    else:
        obs = TorchMinMax(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=qmin, quant_max=qmax)
    obs.min_val, obs.max_val = lo, hi
    scale, zp = obs.calculate_qparams()
    return scale.double(), zp.double()


def _sse(x: torch.Tensor, scale, zp, qmin, qmax) -> torch.Tensor:
    """Squared error of uniform quantization, eq. (1)-(2), per row of ``x`` (float64)."""
    x = x.double()
    q = torch.clamp(torch.round(x / scale[:, None]) + zp[:, None], qmin, qmax)
    return ((q - zp[:, None]) * scale[:, None] - x).square().sum(dim=1)


def _brute_force(rows: torch.Tensor, qmin: int, qmax: int, symmetric: bool, ratios=RATIOS):
    """Every candidate ratio's error per row of ``rows`` (channels x values): (ratios x channels)."""
    lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
    errs = []
    for r in ratios:
        scale, zp = _qparams_torch(r * lo, r * hi, qmin, qmax, symmetric)
        errs.append(_sse(rows, scale.reshape(-1), zp.reshape(-1), qmin, qmax))
    return torch.stack(errs), lo, hi


def _assert_chosen_is_the_grid_optimum(ratio: torch.Tensor, errs: torch.Tensor, ratios=RATIOS):
    """The chosen ratio is the grid search's, up to float32-vs-float64 rounding between near-equal
    candidates: its error then equals the minimum to 1e-6."""
    assert all(min(abs(r - float(c)) for r in ratios) < 1e-6 for c in ratio.reshape(-1)), ratio
    chosen = torch.tensor([ratios.index(min(ratios, key=lambda r: abs(r - float(c)))) for c in ratio.reshape(-1)])
    best = errs.min(dim=0).values
    got = errs[chosen, torch.arange(errs.shape[1])]
    assert torch.all(got <= best * (1 + 1e-6) + 1e-12), (got, best)


def test_activation_range_is_the_grid_optimum_over_all_batches():
    """Heavy-tailed activations fed in batches of different sizes: the range minimises the error
    summed over every value seen, and clearly beats min-max at 4 bits."""
    torch.manual_seed(0)
    batches = [torch.distributions.StudentT(3.0).sample((n, 4, 6, 6)) for n in (5, 3, 8)]
    q = activation_quantizer(QuantSpec(a_bits=4, a_observer="mse"))
    q.observing = True
    for b in batches:
        q(b)
    q.observer.search(q.qmin, q.qmax, q.symmetric)
    for b in batches:
        q(b)
    q.freeze()
    errs, lo, hi = _brute_force(torch.cat([b.flatten() for b in batches])[None], q.qmin, q.qmax, symmetric=False)
    _assert_chosen_is_the_grid_optimum(q.observer.ratio, errs)
    minmax, best = float(errs[0, 0]), float(errs[:, 0].min())
    assert best < 0.6 * minmax, (best, minmax)
    # the quantizer uses exactly that range
    scale, zp = _qparams_torch(q.observer.ratio * lo, q.observer.ratio * hi, q.qmin, q.qmax, symmetric=False)
    assert torch.allclose(q.scale.double(), scale) and int(q.zero_point) == int(zp)


@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_ranges_are_the_grid_optimum_per_channel(per_channel):
    torch.manual_seed(1)
    w = torch.randn(6, 5, 3, 3) * torch.rand(6, 1, 1, 1)
    w[2, 0, 0, 0] = 9.0  # an outlier: min-max wastes the grid on it
    q = weight_quantizer(w, QuantSpec(w_bits=4, per_channel=per_channel, w_observer="mse"))
    q.observer.search(q.qmin, q.qmax, q.symmetric)
    q.observer.update(w)
    q.freeze()
    rows = w.reshape(6, -1) if per_channel else w.reshape(1, -1)
    errs, _, _ = _brute_force(rows, q.qmin, q.qmax, symmetric=True)
    _assert_chosen_is_the_grid_optimum(q.observer.ratio, errs)
    assert float(errs.min(dim=0).values.sum()) < float(errs[0].sum())  # beats min-max
    # the fake-quantized weight's error is the chosen candidate's error
    got = (q(w) - w).double().square().reshape(rows.shape[0], -1).sum(dim=1)
    chosen = torch.tensor([RATIOS.index(min(RATIOS, key=lambda r: abs(r - float(c)))) for c in q.observer.ratio])
    torch.testing.assert_close(got, errs[chosen, torch.arange(rows.shape[0])], rtol=1e-5, atol=1e-9)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return self.b(torch.nn.functional.leaky_relu(self.a(x), 0.2))


def test_method_ranges_minimise_the_error_of_the_calibration_activations():
    """The method on a model: every activation quantizer's range is the grid optimum over the float
    model's activations entering its layer on the calibration inputs (captured here with hooks)."""
    torch.manual_seed(2)
    net = _Net().eval()
    calib = torch.randn(40, 3, 8, 8)
    cfg = {"calibration": {"images": 24}, "distill": {"batch_size": 10}}
    qmodel, spec, info = M.ptq_mse(net, calib, Variant("ptq-mse", True, 4, 8), {}, cfg)
    assert (spec.w_observer, spec.a_observer) == ("mse", "mse") and info["calibration_images"] == 24
    seen = {"a": [], "b": []}
    hooks = [getattr(net, n).register_forward_pre_hook(lambda m, args, n=n: seen[n].append(args[0].detach())) for n in seen]
    with torch.no_grad():
        net(calib[:24])
    for h in hooks:
        h.remove()
    for name in seen:
        q = getattr(qmodel, name).input_quant
        errs, _, _ = _brute_force(torch.cat(seen[name]).flatten()[None], q.qmin, q.qmax, symmetric=False)
        _assert_chosen_is_the_grid_optimum(q.observer.ratio, errs)
    # and the model it returns is better than min-max on the same inputs, weights and activations at 4/8 bits
    minmax = quantize_model(net, QuantSpec(w_bits=4, a_bits=8, per_channel=True))
    calibrate(minmax, calib[:24].split(10))
    with torch.no_grad():
        ref = net(calib[24:])
        assert float((qmodel(calib[24:]) - ref).square().mean()) < float((minmax(calib[24:]) - ref).square().mean())


def test_a_coarser_grid_tries_its_own_ratios_and_picks_their_optimum():
    """calibration.mse_grid: 10 tries 1, 0.9, ..., 0.1 (paper-smoke's cut of the 100 default): every
    chosen ratio is one of those and the optimum among them, for activations and weights."""
    torch.manual_seed(4)
    net = _Net().eval()
    calib = torch.randn(12, 3, 8, 8)
    ratios = [1 - i / 10 for i in range(10)]
    qmodel, _, info = M.ptq_mse(net, calib, Variant("ptq-mse", True, 4, 8), {},
                                {"calibration": {"images": 12, "mse_grid": 10}, "distill": {"batch_size": 6}})
    assert info["mse_grid"] == 10
    with torch.no_grad():
        x = net.a(calib).flatten()[None]
    q = qmodel.b.input_quant
    _assert_chosen_is_the_grid_optimum(q.observer.ratio, _brute_force(torch.nn.functional.leaky_relu(x, 0.2), q.qmin, q.qmax, False, ratios)[0], ratios)
    wq = qmodel.a.weight_quant
    rows = net.a.weight.detach().reshape(net.a.weight.shape[0], -1)
    _assert_chosen_is_the_grid_optimum(wq.observer.ratio, _brute_force(rows, wq.qmin, wq.qmax, True, ratios)[0], ratios)


def test_saved_model_loads_back_with_its_observers():
    torch.manual_seed(3)
    net = _Net().eval()
    qmodel, spec, _ = M.ptq_mse(net, torch.randn(16, 3, 8, 8), Variant("ptq-mse", False, 8, 8), {},
                                {"calibration": {"images": 16}, "distill": {"batch_size": 8}})
    again = quantize_model(_Net().eval(), QuantSpec.from_dict(spec.to_dict()))
    again.load_state_dict(qmodel.state_dict())
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(again(x), qmodel(x))
    assert all(isinstance(q.observer, M.MSEObserver) for q in activation_quantizers(again))
    for a, b in zip(activation_quantizers(again), activation_quantizers(qmodel)):  # the chosen ratios are part of the file
        assert torch.equal(a.observer.ratio, b.observer.ratio)
    assert any(float(q.observer.ratio) < 1 for q in activation_quantizers(qmodel))


def test_registered_as_a_post_training_method():
    m = registry.method("ptq-mse")
    assert (m.kind, m.rule, m.implementation()) == ("ptq", "quantize", M.ptq_mse)
    assert "ptq-mse" in registry.methods_in_table("table3") and "ptq-mse" in registry.methods_in_table("table4")
    cfg = qcfg.load([Path(__file__).resolve().parents[1] / "params.yaml"])
    assert m.params_keys(cfg, "sagan") == [*registry.COMMON_READS, "distill.batch_size", "calibration.mse_grid"]  # reads no quantiles: a quantile change does not rerun it
    np.testing.assert_allclose(M.clip_ratios().numpy(), RATIOS)
