"""The deployable integer scheme (issue 22): conv outputs that the paper's scheme leaves in float are
requantized, so that onnxruntime runs those convs on integer kernels; the file still equals the
fake-quant model of its scheme, and nothing the method calibrated changes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workflow_src.deploy import onnx_qdq, scheme
from workflow_src.deploy import runtime as rt
from workflow_src.quant import QuantSpec, quantize_model
from workflow_src.quant.modules import QuantConv2d
from workflow_src.quant.transform import activation_quantizers, calibrate

ort = pytest.importorskip("onnxruntime")


def normed_net(seed: int = 0):
    """conv -> instance norm -> leaky relu -> conv -> tanh, quantized w8a8 (min-max) and calibrated:
    neither conv's output is quantized under the paper's scheme."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.InstanceNorm2d(16), nn.LeakyReLU(0.2), nn.Conv2d(16, 4, 3, padding=1), nn.Tanh())
    q = quantize_model(net.eval(), QuantSpec(w_bits=8, a_bits=8, per_channel=True))
    x = torch.randn(48, 3, 12, 12, generator=torch.Generator().manual_seed(seed + 1))
    calibrate(q, x[:32].split(8))
    return q, x


def unoptimized(path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def test_the_convs_the_paper_scheme_leaves_in_float_are_found_in_the_exported_graph():
    q, x = normed_net()
    assert scheme.float_output_convs(q, x[:4]) == ["0", "3"]  # conv -> norm, conv -> tanh
    # a conv whose output an operation's quantizer reads at once is not listed
    torch.manual_seed(0)
    plain = quantize_model(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)).eval(), QuantSpec())
    calibrate(plain, x[:16].split(8))
    assert scheme.float_output_convs(plain, x[:4]) == ["1"]


def test_deployable_requantizes_only_those_outputs_and_keeps_every_other_quantizer(tmp_path):
    q, x = normed_net()
    before = [(float(a.scale), int(a.zero_point)) for a in activation_quantizers(q)]
    d, layers = scheme.deployable(q, x[:4], x[32:48].split(8))
    assert layers == ["0", "3"]
    assert [(float(a.scale), int(a.zero_point)) for a in activation_quantizers(q)] == before  # the original is untouched
    added = {id(m.operand_quant[0]) for m in d.modules() if isinstance(getattr(m, "op", None), scheme.Requantize)}
    assert len(added) == 2
    kept = [(float(a.scale), int(a.zero_point)) for a in activation_quantizers(d) if id(a) not in added]
    assert kept == before  # every quantizer of the method, in order, with its scale and zero point
    # each new quantizer is 8-bit affine with the min-max range of its conv's output on the calibration batches
    conv0 = d.get_submodule("0.0")
    assert isinstance(conv0, QuantConv2d)
    with torch.no_grad():
        y0 = torch.cat([conv0(b) for b in x[32:48].split(8)])
    out_q = d.get_submodule("0.1").operand_quant[0]
    lo, hi = min(float(y0.min()), 0.0), max(float(y0.max()), 0.0)
    assert float(out_q.scale) == pytest.approx((hi - lo) / 255, rel=1e-6)
    # its output: the paper model's conv output, fake-quantized by torch's reference op with that range
    with torch.no_grad():
        want = torch.fake_quantize_per_tensor_affine(y0, float(out_q.scale), int(out_q.zero_point), 0, 255)
        got = torch.cat([d.get_submodule("0")(b) for b in x[32:48].split(8)])
    assert torch.equal(got, want)


def test_deployable_narrows_8_bit_weights_to_7_bits_and_leaves_narrower_layers_alone():
    """Each 8-bit layer's weights: the method's fake-quant weights, fake-quantized again by torch's reference
    op on the symmetric 7-bit grid [-64, 63] with step max|w| / 63.5 per output channel; a 4-bit layer keeps
    its quantizer and weights."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.InstanceNorm2d(16), nn.LeakyReLU(0.2), nn.Conv2d(16, 4, 3, padding=1), nn.Tanh())
    q = quantize_model(net.eval(), QuantSpec(w_bits=8, a_bits=8, per_channel=True, w_layers=(("3", 4, 1.0, 0.0),)))
    x = torch.randn(24, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    calibrate(q, x[:16].split(8))
    w4_before = q.get_submodule("3").weight_quant(q.get_submodule("3").weight).clone()
    d, _ = scheme.deployable(q, x[:4], x[16:].split(8))
    conv8, old = d.get_submodule("0.0"), q.get_submodule("0").weight_quant
    with torch.no_grad():
        w_paper = torch.fake_quantize_per_channel_affine(q.get_submodule("0").weight, old.scale, old.zero_point, 0, -128, 127)
        step = w_paper.abs().amax(dim=(1, 2, 3)) / 63.5
        want = torch.fake_quantize_per_channel_affine(w_paper, step, torch.zeros(16, dtype=torch.int32), 0, -64, 63)
        got = conv8.weight_quant(conv8.weight)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    ints = conv8.weight_quant.integer(conv8.weight)
    assert int(ints.min()) >= -64 and int(ints.max()) <= 63 and int(ints.abs().max()) >= 63
    assert (conv8.weight_quant.bits, d.get_submodule("3.0").weight_quant.bits) == (7, 4)
    with torch.no_grad():
        assert torch.equal(d.get_submodule("3.0").weight_quant(d.get_submodule("3.0").weight), w4_before)
    # 8-bit weights on request (a VNNI CPU): the method's weights unchanged
    d8, _ = scheme.deployable(q, x[:4], x[16:].split(8), weight_bits=8)
    with torch.no_grad():
        assert torch.equal(d8.get_submodule("0.0").weight_quant(d8.get_submodule("0.0").weight), w_paper)


def test_the_deployable_file_equals_its_fake_quant_model_and_runs_every_conv_on_integers(tmp_path):
    q, x = normed_net()
    d, _ = scheme.deployable(q, x[:8], x[32:48].split(8))
    paper_path, path = tmp_path / "paper.onnx", tmp_path / "deployable.onnx"
    onnx_qdq.export_qdq(q, x[:8], paper_path)
    onnx_qdq.export_qdq(d, x[:8], path)
    with torch.no_grad():
        ref = d(x[:8]).numpy()
    np.testing.assert_allclose(unoptimized(path).run(None, {"input": x[:8].numpy()})[0], ref, atol=1e-5, rtol=0)
    # the paper file runs both convs in float; the deployable one none
    rt.session(paper_path, threads=1, optimized_out=tmp_path / "paper.opt.onnx")
    fallbacks = rt.float_fallbacks(tmp_path / "paper.opt.onnx")
    assert {layer for op in ("Conv", "FusedConv") for layer in fallbacks.get(op, [])} == {"0", "3"}  # FusedConv: conv + tanh
    sess = rt.session(path, threads=1, optimized_out=tmp_path / "opt.onnx")
    kinds = rt.kernel_kinds(tmp_path / "opt.onnx")
    assert "Conv" not in kinds and "FusedConv" not in kinds and len(kinds["QLinearConv"]) == 2, kinds
    y = sess.run(None, {"input": x[:8].numpy()})[0]
    # integer kernels round at grid boundaries: the output within one step of the last requantizer (tanh's
    # slope is at most 1; measured over seeds 0-3: at most 0.99995 steps, 0.9-1.8% of the values differ)
    step = float(d.get_submodule("3.1").operand_quant[0].scale)
    assert np.abs(y - ref).max() <= step + 1e-6, (np.abs(y - ref).max(), step)


def test_layer_paths_read_from_exported_node_names_name_modules_of_the_model():
    """The TorchScript exporter writes a container's child with its parent's name in front."""
    from workflow_src.archs.cyclegan import ResnetGenerator

    for node, path in [("/net/net.1/Conv", "net.1"), ("/net/net.10/body/body.1/Conv", "net.10.body.1"),
                       ("/blocks.0/conv1/Conv", "blocks.0.conv1"), ("/0/Conv", "0"), ("fused /3/Conv", "3")]:
        assert rt.layer_path(node) == path
    # every Conv node of a real generator's export names one of its convs
    torch.manual_seed(0)
    g = quantize_model(ResnetGenerator(ngf=4, n_blocks=2, n_downsampling=2).eval(), QuantSpec())
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    calibrate(g, x.split(2))
    convs = scheme.float_output_convs(g, x[:1])
    assert convs and set(convs) <= {n for n, m in g.named_modules() if isinstance(m, QuantConv2d)}
