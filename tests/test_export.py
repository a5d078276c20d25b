"""Integer export (issue 9): exactness of the exported files against the fake-quant model, the
integer runtimes within one quantization step, packed int4 storage, and clear errors."""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from workflow_src.deploy import onnx_qdq, pt2
from workflow_src.deploy import runtime as rt
from workflow_src.quant import QuantSpec, quantize_model
from workflow_src.quant.modules import QuantConv2d
from workflow_src.quant.transform import calibrate

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]


def small_net(w_bits: int = 8, per_channel: bool = True, norm: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 16, 3, padding=1)]
    if norm:  # conv -> instance norm -> activation: the conv's output is not requantized
        layers += [nn.InstanceNorm2d(16), nn.LeakyReLU(0.2)]
    layers += [nn.Conv2d(16, 4, 3, padding=1)]
    q = quantize_model(nn.Sequential(*layers).eval(), QuantSpec(w_bits=w_bits, a_bits=8, per_channel=per_channel))
    x = torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(seed + 1))
    calibrate(q, x.split(8))
    return q, x


def last_conv_step_bound(q) -> torch.Tensor:
    """Per output channel, the largest change of the output when every input of the last conv moves
    by one step of its input quantizer: ``s_in * sum |W_q|`` (the closed-form 'one step' at the output)."""
    conv = [m for m in q.modules() if isinstance(m, QuantConv2d)][-1]
    w = conv.weight_quant(conv.weight).detach()
    return float(conv.input_quant.scale) * w.abs().flatten(1).sum(1)


def unoptimized(path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("per_channel", [True, False])
def test_onnx_export_is_exact_and_the_integer_runtime_is_within_one_step(tmp_path, per_channel):
    q, x = small_net(per_channel=per_channel)
    path = tmp_path / "q.onnx"
    info = onnx_qdq.export_qdq(q, x[:8], path)
    assert info["folded_weights"] == 2 and info["opset"] == 17
    with torch.no_grad():
        ref = q(x[:8]).numpy()
    # the file's own semantics (QDQ evaluated op by op) are the fake-quant model's
    y0 = unoptimized(path).run(None, {"input": x[:8].numpy()})[0]
    np.testing.assert_allclose(y0, ref, atol=1e-5, rtol=0)
    # onnxruntime's integer kernels (QLinearConv) may round differently at grid boundaries: at most one step
    sess = rt.session(path, threads=1, optimized_out=tmp_path / "opt.onnx")
    y = sess.run(None, {"input": x[:8].numpy()})[0]
    bound = last_conv_step_bound(q).numpy()[None, :, None, None]
    assert np.all(np.abs(y - ref) <= bound + 1e-5)
    kinds = rt.kernel_kinds(tmp_path / "opt.onnx")
    assert "QLinearConv" in kinds  # the first conv, whose output is quantized again, runs on integers


def test_folded_weights_equal_pytorch_quantize_per_channel(tmp_path):
    q, x = small_net(per_channel=True)
    onnx_qdq.export_qdq(q, x[:2], tmp_path / "q.onnx")
    model = onnx.load(str(tmp_path / "q.onnx"))
    ints = sorted((onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and i.dims and len(i.dims) == 4),
                  key=lambda a: a.shape[0], reverse=True)
    convs = [m for m in q.modules() if isinstance(m, QuantConv2d)]
    for conv, got in zip(convs, ints):
        wq = conv.weight_quant
        fq = torch.fake_quantize_per_channel_affine(conv.weight.detach(), wq.scale, wq.zero_point, 0, -128, 127)
        expected = torch.round(fq / wq.scale[:, None, None, None])  # PyTorch's own integers, ties included
        np.testing.assert_array_equal(got, expected.numpy())
    assert not any(i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 4 for i in model.graph.initializer)  # no float weights left


def test_int4_weights_are_packed_two_per_byte_and_exact(tmp_path):
    q, x = small_net(w_bits=4)
    path = tmp_path / "q4.onnx"
    info = onnx_qdq.export_qdq(q, x[:4], path)
    assert info["opset"] == onnx_qdq.INT4_OPSET and info["weight_storage"].startswith("int4")
    model = onnx.load(str(path))
    int4 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT4 and len(i.dims) == 4]
    assert len(int4) == 2
    for t in int4:
        assert len(t.raw_data) == (int(np.prod(t.dims)) + 1) // 2
    with torch.no_grad():
        ref = q(x[:4]).numpy()
    np.testing.assert_allclose(unoptimized(path).run(None, {"input": x[:4].numpy()})[0], ref, atol=1e-5, rtol=0)
    y = rt.session(path, threads=1).run(None, {"input": x[:4].numpy()})[0]
    assert np.all(np.abs(y - ref) <= last_conv_step_bound(q).numpy()[None, :, None, None] + 1e-5)


def _division_flips(q) -> int:
    """Weights whose integer ``round(w / s)`` (division) differs from the fake-quant kernels' ``round(w * (1/s))``."""
    n = 0
    for m in q.modules():
        if isinstance(m, QuantConv2d):
            wq = m.weight_quant
            s = wq.scale.view(-1, 1, 1, 1) if wq.axis is not None else wq.scale.reshape(())
            ref = torch.round(torch.fake_quantize_per_channel_affine(m.weight, wq.scale, wq.zero_point, 0, -128, 127) / s) \
                if wq.axis is not None else torch.round(torch.fake_quantize_per_tensor_affine(m.weight, wq.scale.reshape(()), 0, -128, 127) / s)
            n += int((torch.clamp(torch.round(m.weight / s), -128, 127) != ref).sum())
    return n


@pytest.mark.parametrize("per_channel", [True, False])
def test_pt2_file_as_written_equals_the_fake_quant_model(tmp_path, per_channel):
    """The saved program, run on its own decomposed ops, is the fake-quant model: integer weights
    rounded like PyTorch's kernels at the ``+-127.5`` ties (2 such weights in the per-channel net)."""
    q, x = small_net(per_channel=per_channel)
    assert _division_flips(q) == (2 if per_channel else 0)
    with torch.no_grad():
        q(x[:1])
    pt2.export_program(pt2.decompose(q), x[:8].clone(), tmp_path / "q.pt2")
    module = torch.export.load(str(tmp_path / "q.pt2")).module()
    with torch.no_grad():
        assert float((module(x[:8]) - q(x[:8])).abs().max()) <= 1e-5
    # nothing in it says where the code lives: its size (pt2e_size_ratio) is the model's alone, the same in
    # every checkout (measured before: each node's stack trace named this file and site-packages by path)
    with zipfile.ZipFile(tmp_path / "q.pt2") as zf:
        text = b"".join(zf.read(n) for n in zf.namelist() if not n.split("/")[-1].startswith("weight_")).decode("latin-1")
    assert "stack_trace" not in text and str(ROOT) not in text and sys.prefix not in text
    # nor anything of this process: a second export of the model is the same file, byte for byte (the
    # decomposition's provenance records named graphs by their Python object ids)
    pt2.export_program(pt2.decompose(q), x[:8].clone(), tmp_path / "again.pt2")
    assert (tmp_path / "again.pt2").read_bytes() == (tmp_path / "q.pt2").read_bytes()


def test_pt2_files_are_saved_decomposed_and_lower_like_a_fresh_export(tmp_path):
    """A program is decomposed where it is written: loading it skips the decomposition, and what it
    lowers to computes exactly what the undecomposed export of the same model lowers to."""
    q, x = small_net(per_channel=True)
    with torch.no_grad():
        q(x[:1])
    model = pt2.decompose(q)
    pt2.export_program(model, x[:8].clone(), tmp_path / "q.pt2")
    saved = torch.export.load(str(tmp_path / "q.pt2"))
    with torch.no_grad():
        torch.export.save(torch.export.export(model, (x[:8].clone(),)), str(tmp_path / "raw.pt2"))
    fresh = torch.export.load(str(tmp_path / "raw.pt2"))  # as the files were written before
    assert pt2.decomposed(saved) and not pt2.decomposed(fresh)
    a, b = pt2.lower_x86(saved, x[:8].clone()), pt2.lower_x86(fresh, x[:8].clone())
    assert pt2.kernel_kinds(a).keys() == pt2.kernel_kinds(b).keys()
    with torch.no_grad():
        assert torch.equal(a(x[:8]), b(x[:8]))


def test_pt2_export_runs_on_onednn_int8_kernels_within_one_step(tmp_path):
    """oneDNN's int8 convs are exact up to requantization rounding where their u8s8 products cannot
    saturate: on CPUs with VNNI always; without VNNI (pairs of u8*s8 products added in int16) when
    the weights use 7 bits.  Without VNNI, full-range int8 weights move 0.3% of this net's pixels by
    more than a step (saturation), which the export summaries measure (``within_step``)."""
    q, x = small_net(per_channel=False)
    if not rt.cpu_has_vnni():
        for m in q.modules():
            if isinstance(m, QuantConv2d):
                m.weight_quant.scale.mul_(2.0)  # integers within [-64, 64]: no int16 saturation
    with torch.no_grad():
        q(x[:1])
    pt2.export_program(pt2.decompose(q), x[:8].clone(), tmp_path / "q.pt2")
    lowered = pt2.load_lowered(tmp_path / "q.pt2", x[:8].clone())
    kinds = pt2.kernel_kinds(lowered)
    assert len(kinds.get("onednn.qconv_pointwise.default", [])) == 2
    assert "aten.convolution.default" not in kinds
    with torch.no_grad():
        diff = (lowered(x[:8]) - q(x[:8])).abs()
    assert torch.all(diff <= last_conv_step_bound(q)[None, :, None, None] + 1e-5)
    # compiled ahead of time by AOTInductor (issue 22 item 2): the same int8 kernels, the element-wise work
    # fused into generated code, loaded from the package it wrote
    info = pt2.compile_package(tmp_path / "q.pt2", tmp_path / "q.aoti.pt2")
    assert info["int_kernels"] == {"qconv_unary": 2} and info["compile_seconds"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.aoti.pt2", "q.pt2"]  # no scratch folder left
    compiled = pt2.load_package(tmp_path / "q.aoti.pt2")
    with torch.no_grad():
        diff = (compiled(x[8:16]) - q(x[8:16])).abs()
    assert torch.all(diff <= last_conv_step_bound(q)[None, :, None, None] + 1e-5)
    with pytest.raises(RuntimeError, match=r"q\.pt2' cannot be loaded as an AOTInductor package"):
        pt2.load_package(tmp_path / "q.pt2")
    # where the time goes, from torch.profiler: the lowered program's oneDNN int8 convs, and the package's calls of
    # the same kernels beside its generated code
    for module, int_op in ((lowered, "onednn::qconv_pointwise"), (compiled, "aoti_torch_cpu__qconv_pointwise_tensor")):
        rows = pt2.profile(module, x[:8], 2)
        kinds = {r["op"]: r["kind"] for r in rows}
        assert kinds[int_op] == "int", kinds
    assert "generated" in set(kinds.values()) and "quantized_decomposed::quantize_per_tensor" not in kinds  # fused into generated code


def test_asymmetric_weights_are_rejected_with_the_layer_named(tmp_path):
    q, x = small_net()
    conv = [m for m in q.modules() if isinstance(m, QuantConv2d)][1]
    conv.weight_quant.zero_point[3] = 5
    with pytest.raises(onnx_qdq.ExportError, match=r"^1: weight zero points must all be 0.*1 of 4 are nonzero"):
        onnx_qdq.export_qdq(q, x[:2], tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()
    with pytest.raises(onnx_qdq.ExportError, match="weight zero points"):
        pt2.decompose(q)


def test_uncalibrated_or_non_8bit_activations_are_rejected(tmp_path):
    q = quantize_model(nn.Sequential(nn.Conv2d(3, 4, 1)).eval(), QuantSpec())
    with pytest.raises(onnx_qdq.ExportError, match="not calibrated"):
        onnx_qdq.export_qdq(q, torch.zeros(1, 3, 4, 4), tmp_path / "q.onnx")
    q6, x = small_net()
    q6 = quantize_model(nn.Sequential(nn.Conv2d(3, 4, 1)).eval(), QuantSpec(a_bits=6))
    with pytest.raises(onnx_qdq.ExportError, match=r"8-bit unsigned activations only"):
        onnx_qdq.check_exportable(q6)


def test_corrupted_export_files_fail_to_load_with_a_clear_error(tmp_path):
    q, x = small_net()
    path = tmp_path / "q.onnx"
    onnx_qdq.export_qdq(q, x[:2], path)
    digest = rt.sha256(path)
    rt.check_file(path, digest)  # intact
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(rt.ExportFileError, match=r"q\.onnx.*not a valid ONNX model"):
        rt.session(path, threads=1)
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # one flipped byte: caught by the recorded digest
    with pytest.raises(rt.ExportFileError, match=r"q\.onnx.*sha256"):
        rt.check_file(path, digest)
    with pytest.raises(rt.ExportFileError, match="does not exist"):
        rt.check_file(tmp_path / "missing.onnx")
    p2 = tmp_path / "q.pt2"
    pt2.export_program(pt2.decompose(q), x[:2].clone(), p2)
    p2.write_bytes(p2.read_bytes()[:1000])
    with pytest.raises(RuntimeError, match=r"q\.pt2.*cannot be loaded"):
        pt2.load_lowered(p2, x[:2].clone())


def test_float_fallbacks_name_the_layers_that_stay_in_float(tmp_path):
    q, x = small_net(norm=True)
    onnx_qdq.export_qdq(q, x[:2], tmp_path / "q.onnx")
    rt.session(tmp_path / "q.onnx", threads=1, optimized_out=tmp_path / "opt.onnx")
    fb = rt.float_fallbacks(tmp_path / "opt.onnx")
    assert fb["InstanceNormalization"] == ["1"]  # module path of the norm layer in the Sequential
    assert any("0" in layers for op, layers in fb.items() if "Conv" in op)  # conv -> instance norm: no requantized output
    rows = rt.profile(tmp_path / "q.onnx", x[:2].numpy(), threads=1, runs=2)
    assert abs(sum(r["share"] for r in rows) - 1.0) < 1e-6 and {r["kind"] for r in rows} >= {"float", "qdq"}


def test_latency_is_a_median_of_interleaved_calls():
    calls = []
    lat = rt.latency({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4 and set(lat) == {"a", "b"} and all(v >= 0 for v in lat.values())


def test_fused_upsampling_exports_without_float_constants_of_activation_size(tmp_path):
    """rosinality's fused upsampling (zero insertion + 4x4 conv) in the QDQ file: exact against the
    fake-quant model, and no float tensor in the file larger than a channel vector (a zeros tensor
    the size of the upsampled activation, folded by the exporter, made StyleGAN's paper-size int8
    file 0.62x of FP32 instead of 0.25x)."""
    from workflow_src.archs.layers import FusedUpConv2d

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), FusedUpConv2d(16, 8).to_plain(), nn.Conv2d(8, 3, 1)).eval()
    q = quantize_model(net, QuantSpec(w_bits=8, a_bits=8, per_channel=True))
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    calibrate(q, x.split(4))
    path = tmp_path / "up.onnx"
    onnx_qdq.export_qdq(q, x[:1], path)
    with torch.no_grad():
        ref = q(x[:1]).numpy()
    np.testing.assert_allclose(unoptimized(path).run(None, {"input": x[:1].numpy()})[0], ref, atol=1e-5, rtol=0)
    m = onnx.load(str(path))
    tensors = list(m.graph.initializer) + [a.t for n in m.graph.node if n.op_type == "Constant" for a in n.attribute if a.t.dims]
    floats = {t.name or "constant": int(np.prod(t.dims)) for t in tensors if t.data_type == onnx.TensorProto.FLOAT}
    assert max(floats.values()) <= 16, {k: v for k, v in floats.items() if v > 16}


def test_onnxruntime_sessions_run_with_the_settings_the_export_records(tmp_path):
    """The settings an export record carries (runtime.session_settings) are those of the session."""
    q, x = small_net()
    onnx_qdq.export_qdq(q, x[:2], tmp_path / "q.onnx")
    for optimize in (True, False):
        want = rt.session_settings(3, optimize)
        so = rt.session(tmp_path / "q.onnx", threads=3, optimize=optimize).get_session_options()
        assert so.intra_op_num_threads == want["intra_op_num_threads"] == 3 and so.inter_op_num_threads == want["inter_op_num_threads"]
        assert so.graph_optimization_level.name == want["graph_optimization_level"] and so.execution_mode.name == want["execution_mode"]
        assert all(so.get_session_config_entry(k) == v for k, v in want["config"].items())


@pytest.mark.parametrize("pad", [nn.ReflectionPad2d(2), nn.ZeroPad2d((1, 2, 0, 3)), nn.ReplicationPad2d(1), "zero-insert"])
def test_padding_runs_on_uint8_and_the_file_stays_exact(tmp_path, pad):
    """Pad -> QuantizeLinear becomes QuantizeLinear -> Pad on uint8 (onnx_qdq.quantize_before_data_movement): the file,
    op by op, is still the fake-quant model, and onnxruntime pads integers straight into its integer convs
    (the deployable scheme requantizes every conv output, so that every conv can run on integers)."""
    from workflow_src.archs.layers import ZeroInsert2d
    from workflow_src.deploy import scheme

    if pad == "zero-insert":  # StyleGAN's fused upsampling: pads, reshapes and slices
        pad = ZeroInsert2d()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), pad, nn.Conv2d(8, 8, 3), nn.ReLU(), pad, nn.Conv2d(8, 4, 3))
    q = quantize_model(net.eval(), QuantSpec(w_bits=8, a_bits=8, per_channel=True))
    x = torch.randn(24, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    calibrate(q, x[:16].split(8))
    d, _ = scheme.deployable(q, x[:8], x[:16].split(8))
    for model in (q, d):
        path = tmp_path / "q.onnx"
        info = onnx_qdq.export_qdq(model, x[:8], path)
        graph = onnx.load(str(path)).graph
        producer = {o: n for n in graph.node for o in n.output}

        def source(node):  # the first op before a run of data-movement ops
            while node.op_type in onnx_qdq.DATA_MOVEMENT:
                node = producer[node.input[0]]
            return node.op_type

        pads = [n for n in graph.node if n.op_type == "Pad"]
        assert pads and all(source(n) == "QuantizeLinear" for n in pads)  # every pad on uint8
        assert info["uint8_data_movement"] == sum(n.op_type in onnx_qdq.DATA_MOVEMENT for n in graph.node) >= 2
        with torch.no_grad():
            ref = model(x[16:]).numpy()
        np.testing.assert_allclose(unoptimized(path).run(None, {"input": x[16:].numpy()})[0], ref, atol=1e-5, rtol=0)
    rt.session(path, threads=1, optimized_out=tmp_path / "opt.onnx")
    kinds = rt.kernel_kinds(tmp_path / "opt.onnx")
    assert len(kinds.get("QLinearConv", [])) == 3 and len(kinds.get("Pad", [])) == len(pads) and not {"Conv", "FusedConv"} & set(kinds), kinds


def test_a_pad_that_writes_a_nonzero_constant_stays_in_float(tmp_path):
    """quantize(c) for a constant c != 0 is not the zero point: such a Pad does not commute with the quantizer."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ConstantPad2d(1, 0.5), nn.Conv2d(8, 4, 3))
    q = quantize_model(net.eval(), QuantSpec(w_bits=8, a_bits=8, per_channel=True))
    x = torch.randn(16, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    calibrate(q, x[:8].split(4))
    info = onnx_qdq.export_qdq(q, x[:4], tmp_path / "q.onnx")
    assert info["uint8_data_movement"] == 0
    with torch.no_grad():
        ref = q(x[8:12]).numpy()
    np.testing.assert_allclose(unoptimized(tmp_path / "q.onnx").run(None, {"input": x[8:12].numpy()})[0], ref, atol=1e-5, rtol=0)
