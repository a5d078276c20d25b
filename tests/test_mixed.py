"""Mixed precision (workflow_src/methods/mixed.py) and generator size (workflow_src/quant/size.py): the
allocation meets its budget and uses it, a budget at the widest width is the uniform variant value for
value, sizes match their closed form and the exported file, and a mixed model exports exactly."""
import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from workflow_src.config import Variant
from workflow_src.methods.mixed import allocate, layer_damages, mp_quantile, read_damage
from workflow_src.methods.ptq import ptq_quantile
from workflow_src.quant import QuantSpec, calibrate, quantize_model
from workflow_src.quant import size



def _avg(bits, layers):
    return sum(bits[n] * c for n, c, _ in layers) / sum(c for _, c, _ in layers)


def test_greedy_allocation_by_hand():
    """Three equal layers, damages 10, 1, 0.1 at 4 bits, budget 6 (two bits above 4 per weight, n each):
    per added bit, 4->6 of the first removes 10 * 15/16 / 2, then 4->6 of the second (1 * 15/16 / 2 =
    0.47) beats 6->8 of the first (10 * 15/256 / 2 = 0.29), which then takes the last two bits."""
    layers = [("a", 100, 10.0), ("b", 100, 1.0), ("c", 100, 0.1)]
    bits = allocate(layers, [4, 6, 8], 6, keep_ends=False)
    assert bits == {"a": 8, "b": 6, "c": 4}
    assert _avg(bits, layers) == 6
    # budget 7: without the ends rule, b 4->6, a 6->8, then c 4->6 (0.047 per bit) over b 6->8 (0.029)
    assert allocate(layers, [4, 6, 8], 7, keep_ends=False) == {"a": 8, "b": 6, "c": 6}
    # with it, a and c start at 8 (20 bits on 3 layers, within 21), and b's next step (2 more) no longer fits
    assert allocate(layers, [4, 6, 8], 7, keep_ends=True) == {"a": 8, "b": 4, "c": 8}
    # budget 6 cannot hold both ends at 8 (20 > 18): nothing is pinned
    assert allocate(layers, [4, 6, 8], 6, keep_ends=True) == bits
    assert allocate(layers, [4, 6, 8], 5, keep_ends=True) == {"a": 6, "b": 4, "c": 4}


@pytest.mark.parametrize("seed", range(5))
def test_allocation_meets_its_budget_and_no_further_step_fits(seed):
    rnd = random.Random(seed)
    layers = [(f"l{i}", rnd.choice([27, 64, 576, 4608, 9]), rnd.expovariate(1.0)) for i in range(rnd.randint(2, 30))]
    widths = [4, 6, 8]
    for budget, keep in itertools.product([4, 5, 6, 7, 8], [True, False]):
        bits = allocate(layers, widths, budget, keep_ends=keep)
        total_bits = sum(bits[n] * c for n, c, _ in layers)
        assert total_bits <= budget * sum(c for _, c, _ in layers)
        assert set(bits.values()) <= set(widths)
        spare = budget * sum(c for _, c, _ in layers) - total_bits
        for n, c, _ in layers:  # maximal: no layer's next width fits in what is left
            if bits[n] < 8:
                assert (widths[widths.index(bits[n]) + 1] - bits[n]) * c > spare
    assert set(allocate(layers, widths, 8).values()) == {8}
    assert set(allocate(layers, widths, 4).values()) == {4}
    with pytest.raises(ValueError, match="below the narrowest width 4"):
        allocate(layers, widths, 3)


def test_more_damage_gets_more_bits():
    layers = [("x", 1000, 0.01), ("y", 1000, 5.0), ("z", 1000, 0.5)]
    bits = allocate(layers, [4, 6, 8], 5, keep_ends=False)
    assert bits["y"] >= bits["z"] >= bits["x"]


@pytest.fixture(scope="module")
def sagan(micro_sagan):
    pairs = {8: {"activation": {"upper": 0.999, "lower": 0.001}, "weight": {"upper": 1.0, "lower": 0.0}},
             6: {"activation": {"upper": 0.99, "lower": 0.01}, "weight": {"upper": 0.9999, "lower": 0.0001}},
             4: {"activation": {"upper": 0.99, "lower": 0.01}, "weight": {"upper": 0.999, "lower": 0.001}}}
    return (*micro_sagan, pairs)


def _sensitivity_csv(path, model, damages):
    names = [n for n, _ in size.weight_layers(model)]
    lines = ["layer,type,operand,qfid,qfid_std"] + [f"{n},Conv2d,{op},{d if op == 'weight' else 99},0" for n, d in zip(names, damages) for op in ("weight", "input", "layer")]
    Path(path).write_text("\n".join(lines) + "\n")
    return str(path)


def test_budget_at_the_widest_width_is_the_uniform_variant_and_a_smaller_one_meets_it(sagan, tmp_path):
    cfg, g, z, pairs = sagan
    cfg = {**cfg, "mixed": {**cfg["mixed"], "widths": [4, 6, 8]}}
    probe = quantize_model(g, QuantSpec())
    n_layers = len(list(size.weight_layers(probe)))
    csv = _sensitivity_csv(tmp_path / "s.csv", probe, [float(i % 5) for i in range(n_layers)])
    acfg = {**cfg["archs"]["sagan"], "quantiles": pairs[8], "quantiles_by_width": pairs}
    mp8, spec8, _ = mp_quantile(g, z, Variant("mp-quantile", False, 8, 8), acfg, cfg, sensitivity=csv)
    uni, _, _ = ptq_quantile(g, z, Variant("ptq-quantile", False, 8, 8), {**acfg, "quantiles": pairs[8]}, cfg)
    a, b = mp8.state_dict(), uni.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {e[1] for e in spec8.w_layers} == {8}

    mp6, spec6, info = mp_quantile(g, z, Variant("mp-quantile", True, 6, 8), acfg, cfg, sensitivity=csv)
    assert size.avg_w_bits(mp6) <= 6 and set(info["layers_per_width"]) == {"4", "6", "8"}
    got = size.weight_bits(mp6)
    assert {n: b for n, b, _, _ in spec6.w_layers} == {n: b for n, (b, _) in got.items()}
    first, last = list(got)[0], list(got)[-1]
    if sum(c for _, c in got.values()) * 6 >= 8 * (got[first][1] + got[last][1]) + 4 * sum(c for n, (_, c) in got.items() if n not in (first, last)):
        assert got[first][0] == got[last][0] == 8  # the ends at 8 where the budget holds them
    for name, m in size.weight_layers(mp6):  # each layer's weights on the grid of its width, with its width's pair
        q = m.weight_quant
        assert (q.qmin, q.qmax) == (-(2 ** (q.bits - 1)), 2 ** (q.bits - 1) - 1)
        assert (q.observer.upper, q.observer.lower) == (pairs[q.bits]["weight"]["upper"], pairs[q.bits]["weight"]["lower"])
    # the saved spec rebuilds the model: same widths, same outputs once its state is loaded
    again = quantize_model(g, QuantSpec.from_dict(spec6.to_dict()))
    again.load_state_dict(mp6.state_dict())
    with torch.no_grad():
        assert torch.equal(again(z[:8]), mp6(z[:8]))
    with pytest.raises(ValueError, match="not weight layers"):
        quantize_model(g, QuantSpec(w_layers=(("no.such.layer", 4, 1.0, 0.0),)))


def test_unscored_layers_count_as_the_worst_scored():
    probe = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 2, 3))
    q = quantize_model(probe.eval(), QuantSpec())
    assert layer_damages(q, {"0": 0.5, "1": 2.0}) == [("0", 108, 0.5), ("1", 144, 2.0), ("2", 72, 2.0)]


def test_read_damage_takes_the_weight_rows(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("layer,type,operand,qfid,qfid_std\nnet.0,Conv2d,weight,0.25,0.01\nnet.0,Conv2d,input,0.5,0.01\nnet.0,Conv2d,layer,0.7,0.01\n"
                 "net.1,Add,operands,0.1,0\nall,all,all,3,0\n")
    assert read_damage(p) == {"net.0": 0.25}
    p.write_text("layer,type,operand,qfid,qfid_std\nall,all,all,3,0\n")
    with pytest.raises(ValueError, match="no 'weight' rows"):
        read_damage(p)


def _net(spec, seed=0):
    torch.manual_seed(seed)
    q = quantize_model(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 3, padding=1)).eval(), spec)
    x = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(seed + 1))
    calibrate(q, x.split(8))
    return q, x


@pytest.mark.parametrize("per_channel", [True, False])
def test_size_bytes_closed_form(per_channel):
    """Weights packed at their widths, weight scales in float32, one float32 scale and one zero-point
    byte per activation quantizer, biases in float32."""
    for w_layers in ((), (("0", 4, 1.0, 0.0), ("1", 6, 1.0, 0.0))):
        q, _ = _net(QuantSpec(w_bits=8, per_channel=per_channel, w_layers=w_layers))
        b0, b1 = (4, 6) if w_layers else (8, 8)
        scales = (16 + 4) if per_channel else 2
        expected = math.ceil(432 * b0 / 8) + math.ceil(576 * b1 / 8) + 4 * scales + 2 * (4 + 1) + 4 * (16 + 4)
        assert size.size_bytes(q) == expected
        assert size.avg_w_bits(q) == (432 * b0 + 576 * b1) / 1008
    fp = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 3, padding=1))
    assert size.size_bytes(fp) == 4 * (432 + 16 + 576 + 4) and size.avg_w_bits(fp) == 32.0


def test_mixed_widths_export_exactly_with_int4_and_int8_weights(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from workflow_src.deploy import onnx_qdq

    q, x = _net(QuantSpec(w_bits=8, per_channel=True, w_layers=(("0", 4, 1.0, 0.0), ("1", 6, 1.0, 0.0))))
    path = tmp_path / "mixed.onnx"
    info = onnx_qdq.export_qdq(q, x[:4], path)
    assert info["opset"] == onnx_qdq.INT4_OPSET and info["widths"] == [4, 6]
    model = onnx.load(str(path))
    weights = {tuple(i.dims): i for i in model.graph.initializer if len(i.dims) == 4}
    assert weights[(16, 3, 3, 3)].data_type == onnx.TensorProto.INT4 and len(weights[(16, 3, 3, 3)].raw_data) == 216
    six = onnx.numpy_helper.to_array(weights[(4, 16, 3, 3)])
    assert weights[(4, 16, 3, 3)].data_type == onnx.TensorProto.INT8 and six.min() >= -32 and six.max() <= 31 and np.abs(six).max() >= 31
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    y = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x[:4].numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(y, q(x[:4]).numpy(), atol=1e-5, rtol=0)


def test_a_uniform_6bit_model_exports_exactly_on_int8_storage(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from workflow_src.deploy import onnx_qdq

    q, x = _net(QuantSpec(w_bits=6, per_channel=False))
    info = onnx_qdq.export_qdq(q, x[:4], tmp_path / "w6.onnx")
    assert info["opset"] == onnx_qdq.OPSET and info["widths"] == [6] and info["weight_storage"] == "int8"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    y = ort.InferenceSession(str(tmp_path / "w6.onnx"), so, providers=["CPUExecutionProvider"]).run(None, {"input": x[:4].numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(y, q(x[:4]).numpy(), atol=1e-5, rtol=0)
