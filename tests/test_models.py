"""The three GAN architectures against the model contract (base.py, layers.py, quant/ops.py)."""
import copy
import io
import itertools

import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from workflow_src import registry
from workflow_src.archs.base import GANArch
from workflow_src.archs.layers import bake
from workflow_src.archs.layers import EqualConv2d, EqualLinear
from workflow_src.archs.ops import FloatOp


def get_arch(name):
    return registry.arch(name).implementation()

RES = 16
CFG = {
    "stylegan": (
        {"latent_dim": 16, "n_mlp": 2, "channels": [16, 16, 8], "d_channels": [16, 16, 8]},
        {"steps": 10, "batch_size": 4, "lr_g": 2e-3, "lr_d": 2e-3, "betas": [0.0, 0.99], "r1_gamma": 1.0, "ema_beta": 0.99},
    ),
    "sagan": (  # heykeetae's layout: widths at 4 and 8, the last layer makes the 16x16 image
        {"layout": "heykeetae", "latent_dim": 16, "channels": [16, 8], "d_channels": [16, 8], "attn_res": [4, 8], "d_attn_res": [8, 4]},
        {"steps": 10, "batch_size": 4, "lr_g": 1e-4, "lr_d": 4e-4, "betas": [0.0, 0.9], "ema_beta": 0.99},
    ),
    "cyclegan": (
        {"ngf": 4, "ndf": 4, "n_blocks": 2, "n_downsampling": 2, "d_layers": 2},
        {"steps": 10, "batch_size": 2, "lr_g": 2e-4, "lr_d": 2e-4, "betas": [0.5, 0.999], "lambda_cycle": 10.0, "lambda_identity": 0.5},
    ),
}
NAMES = sorted(CFG)



def make(name):
    model_cfg, train_cfg = CFG[name]
    return registry.arch(name).implementation()(model_cfg, train_cfg, RES)


def inputs(arch, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    if arch.input_kind == "latent":
        return arch.sample_inputs(n, g)
    return torch.rand(n, 3, RES, RES, generator=g) * 2 - 1


def batches(arch, n=None, seed=1):
    """An infinite iterator of dataset-like batches."""
    g = torch.Generator().manual_seed(seed)
    n = n or arch.train_cfg["batch_size"]
    keys = ["x"] if arch.input_kind == "latent" else ["A", "B"]
    while True:
        yield {k: torch.rand(n, 3, RES, RES, generator=g) * 2 - 1 for k in keys}


def op_modules(model):
    return [m for m in model.modules() if isinstance(m, FloatOp)]


def test_registry_lists_the_three_archs():
    assert {"stylegan", "sagan", "cyclegan"} <= set(registry.archs())
    for name in NAMES:
        assert issubclass(get_arch(name), GANArch) and get_arch(name).name == name
    assert get_arch("cyclegan").input_kind == "image" and get_arch("stylegan").input_kind == "latent"


@pytest.mark.parametrize("name", NAMES)
def test_generator_output_shape_and_range(name):
    torch.manual_seed(0)
    arch = make(name)
    G = arch.build_generator().eval()
    with torch.no_grad():
        y = G(inputs(arch, 3))
    assert y.shape == (3, 3, RES, RES)
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0
    assert y.std() > 0


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_deterministic_and_per_sample(name):
    torch.manual_seed(0)
    arch = make(name)
    G = arch.build_generator().eval()
    x = inputs(arch, 4)
    with torch.no_grad():
        a, b = G(x), G(x)
        part = G(x[:2])
    assert torch.equal(a, b)
    torch.testing.assert_close(part, a[:2], atol=1e-5, rtol=0)  # a sample does not depend on its batch


def test_stylegan_noise_fixed_in_eval_fresh_in_training():
    torch.manual_seed(0)
    arch = make("stylegan")
    G1, G2 = arch.build_generator(), arch.build_generator()
    noise1 = [b for n, b in G1.named_buffers() if n.endswith("noise")]
    noise2 = [b for n, b in G2.named_buffers() if n.endswith("noise")]
    assert len(noise1) == 2 * len(CFG["stylegan"][0]["channels"])
    assert all(torch.equal(u, v) for u, v in zip(noise1, noise2))  # seeded, not drawn from the global RNG
    for m in G1.modules():  # make the noise matter
        if hasattr(m, "noise"):
            nn.init.constant_(m.weight, 1.0)
    z = inputs(arch, 2)
    G1.train()
    assert not torch.equal(G1(z), G1(z))


@pytest.mark.parametrize("name", NAMES)
def test_bake_preserves_outputs_and_leaves_plain_layers(name):
    torch.manual_seed(0)
    arch = make(name)
    state = arch.init_state(torch.device("cpu"))
    it = batches(arch)
    for step in range(2):  # non-trivial SN vectors, BN statistics and EMA weights
        arch.train_step(state, it, step)
    G = arch.generator(state).eval()
    x = inputs(arch, 3)
    with torch.no_grad():
        before = G(x)
        baked = bake(copy.deepcopy(G))
        after = baked(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    for m in baked.modules():
        assert not isinstance(m, (EqualConv2d, EqualLinear))
        assert not parametrize.is_parametrized(m)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert type(m) in (nn.Conv2d, nn.Linear)


@pytest.mark.parametrize("name", NAMES)
def test_only_allowed_layers(name):
    arch = make(name)
    state = arch.init_state(torch.device("cpu"))
    for net in (m for m in state.values() if isinstance(m, nn.Module)):
        assert not any(isinstance(m, nn.ConvTranspose2d) for m in net.modules())
    G = arch.generator(state)
    weight_types = (nn.Conv2d, nn.Linear, EqualConv2d, EqualLinear)
    conv_like = [m for m in G.modules() if isinstance(m, weight_types) or "conv" in type(m).__name__.lower()]
    assert conv_like and all(isinstance(m, weight_types) for m in conv_like)
    for m in G.modules():  # spectral norm, where used, is the parametrization version on conv/linear
        if parametrize.is_parametrized(m):
            assert isinstance(m, (nn.Conv2d, nn.Linear))
    assert op_modules(G)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("training", [False, True])
def test_every_op_module_called_exactly_once(name, training):
    torch.manual_seed(0)
    arch = make(name)
    G = arch.build_generator().train(training)
    ops = op_modules(G)
    assert len({id(m) for m in ops}) == len(ops)
    counts = {id(m): 0 for m in ops}

    def hook(module, args, out):
        counts[id(module)] += 1

    handles = [m.register_forward_hook(hook) for m in ops]
    with torch.no_grad():
        G(inputs(arch, 2))
    for h in handles:
        h.remove()
    assert set(counts.values()) == {1}
    expected = {"stylegan": 4 * 2 * 3, "sagan": 2 * 4, "cyclegan": 2}[name]  # see the architectures
    assert len(ops) == expected


@pytest.mark.parametrize("name", NAMES)
def test_train_step_runs_and_updates_generator(name):
    torch.manual_seed(0)
    arch = make(name)
    state = arch.init_state(torch.device("cpu"))
    G = arch.generator(state)
    x = inputs(arch, 2)
    params0 = [p.detach().clone() for p in G.parameters()]
    with torch.no_grad():
        y0 = G.eval()(x)
    it = batches(arch)
    losses = arch.train_step(state, it, 0)
    losses.update(arch.train_step(state, it, 1))
    # detached 0-dim tensors, left on the device until the training loop reads them
    assert losses and all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad and torch.isfinite(v) for v in losses.values())
    G = arch.generator(state)
    assert any(not torch.equal(p0, p) for p0, p in zip(params0, G.parameters()))
    with torch.no_grad():
        assert not torch.allclose(G.eval()(x), y0)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    torch.manual_seed(0)
    arch = make(name)
    state = arch.init_state(torch.device("cpu"))
    it = batches(arch)
    arch.train_step(state, it, 0)
    buf = io.BytesIO()
    torch.save({k: v.state_dict() for k, v in state.items()}, buf)
    buf.seek(0)

    torch.manual_seed(123)  # a differently initialised copy
    other = arch.init_state(torch.device("cpu"))
    for k, sd in torch.load(buf, weights_only=True).items():
        other[k].load_state_dict(sd)
    x = inputs(arch, 2)
    with torch.no_grad():
        torch.testing.assert_close(arch.generator(other).eval()(x), arch.generator(state).eval()(x), atol=0, rtol=0)

    # the optimisers came along too: the next step is identical
    batch = next(it)
    for s in (state, other):
        torch.manual_seed(7)
        arch.train_step(s, itertools.repeat(batch), 1)
    with torch.no_grad():
        torch.testing.assert_close(arch.generator(other).eval()(x), arch.generator(state).eval()(x), atol=1e-6, rtol=0)


def test_display_truncation_closed_forms():
    """Display only: StyleGAN's psi = 0 maps every latent to the mean style (identical images) and
    psi = 1 is the plain generator; SAGAN's truncated latents respect the bound."""
    from pathlib import Path

    from workflow_src import config as qcfg
    from workflow_src.workflow.artifacts import make_arch

    root = Path(__file__).resolve().parents[1]
    cfg = qcfg.load([root / "params.yaml", root / "configs" / "micro.yaml"])
    sg = make_arch(cfg, "stylegan")
    torch.manual_seed(0)
    g = sg.build_generator().eval()
    z = sg.display_inputs(3, torch.Generator().manual_seed(1), 0.7)
    with torch.no_grad():
        same = sg.display(g, z, 0.0)
        assert torch.allclose(same[0], same[1], atol=1e-6) and torch.allclose(same[0], same[2], atol=1e-6)
        assert torch.equal(sg.display(g, z, 1.0), g(z))
    sa = make_arch(cfg, "sagan")
    zt = sa.display_inputs(64, torch.Generator().manual_seed(2), 0.5)
    assert zt.abs().max() <= 0.5 and zt.std() > 0.1


# -- per-sample eval noise (StyleGAN) -------------------------------------------------------------
def _stylegan_with_noise_that_matters(seed=0):
    from workflow_src.archs.stylegan import noise_layers

    torch.manual_seed(seed)
    arch = make("stylegan")
    G = arch.build_generator().eval()
    for _, m in noise_layers(G):
        nn.init.constant_(m.weight, 0.5)
    return arch, G


def test_stylegan_noise_layers_follow_the_architecture():
    from workflow_src.archs.stylegan import noise_layers, sample_noise

    arch, G = _stylegan_with_noise_that_matters()
    n_levels = len(CFG["stylegan"][0]["channels"])  # levels 4, 8, 16: two noise layers each
    expected = [(4 * 2**i, 4 * 2**i) for i in range(n_levels) for _ in range(2)]
    assert [tuple(m.noise.shape[-2:]) for _, m in noise_layers(G)] == expected
    noise = sample_noise(G, 5, torch.Generator().manual_seed(0))
    assert [tuple(t.shape) for t in noise] == [(5, 1, h, w) for h, w in expected]


def test_stylegan_fixed_noise_is_per_sample_and_restored():
    from workflow_src.archs.stylegan import fixed_noise, noise_layers, sample_noise

    arch, G = _stylegan_with_noise_that_matters()
    z = inputs(arch, 1).repeat(2, 1)  # two samples, the same latent
    with torch.no_grad():
        buffered = G(z)
        noise = sample_noise(G, 2, torch.Generator().manual_seed(3))
        with fixed_noise(G, noise):
            a = G(z)
        same = [t[:1].repeat(2, 1, 1, 1) for t in noise]  # sample 1 gets sample 0's noise
        with fixed_noise(G, same):
            b = G(z)
        # the buffer, given explicitly as every sample's noise, is the default eval path
        with fixed_noise(G, [m.noise.expand(2, -1, -1, -1) for _, m in noise_layers(G)]):
            c = G(z)
        after = G(z)
    assert (a[0] - a[1]).abs().max() > 1e-3  # same latent, different saved noise: different images
    assert torch.equal(b[0], b[1])  # same latent, same noise: the same image
    torch.testing.assert_close(b[0], a[0], atol=1e-6, rtol=0)  # sample 0 kept its noise
    torch.testing.assert_close(c, buffered, atol=1e-6, rtol=0)
    assert torch.equal(after, buffered) and all(m.fixed is None for _, m in noise_layers(G))


def _noise_of_seed(seed, sizes):
    """Reference: the documented per-sample draw, one standard normal (1, 1, s, s) map per noise
    layer in module order from a generator seeded with the sample's seed."""
    g = torch.Generator().manual_seed(int(seed))
    return [torch.randn(1, 1, s, s, generator=g) for s in sizes]


def test_stylegan_generate_slices_extras_per_batch():
    from workflow_src.archs.stylegan import fixed_noise, noise_layers

    arch, G = _stylegan_with_noise_that_matters()
    z = inputs(arch, 5)
    extras = arch.sample_extras(5, torch.Generator().manual_seed(4))
    assert sorted(extras) == ["noise_seed"] and extras["noise_seed"].dtype == torch.int64 and extras["noise_seed"].shape == (5,)
    assert len(set(extras["noise_seed"].tolist())) == 5
    whole = arch.generate(G, z, 5, extras)
    batched = arch.generate(G, z, 2, extras)  # batches of 2, 2, 1: each with its own slice
    torch.testing.assert_close(batched, whole, atol=1e-4, rtol=0)  # batch-size-dependent float rounding (measured up to 1.1e-5)
    sizes = [m.noise.shape[-1] for _, m in noise_layers(G)]
    with torch.no_grad(), fixed_noise(G, _noise_of_seed(extras["noise_seed"][3], sizes)):
        alone = G(z[3:4])
    torch.testing.assert_close(whole[3:4], alone, atol=1e-4, rtol=0)  # batch-size-dependent float rounding (measured up to 1.1e-5)
    with torch.no_grad(), arch.use_extras(G, extras, torch.tensor([4, 1])):  # an index tensor: samples 4 and 1
        picked = G(z[[4, 1]])
    torch.testing.assert_close(picked, whole[[4, 1]], atol=1e-4, rtol=0)  # batch-size-dependent float rounding (measured up to 1.1e-5)
    assert not torch.allclose(whole, arch.generate(G, z, 5))  # extras=None: the shared buffers


def test_stylegan_fixed_noise_on_a_quantized_model():
    from workflow_src.archs.stylegan import noise_layers
    from workflow_src.quant import QuantSpec, calibrate, quantize_model, set_quant

    arch, G = _stylegan_with_noise_that_matters()
    q = quantize_model(G, QuantSpec(w_bits=4, a_bits=8)).eval()
    calibrate(q, [inputs(arch, 8, seed=7)])
    assert len(noise_layers(q)) == len(noise_layers(G))
    z = inputs(arch, 1).repeat(3, 1)
    extras = arch.sample_extras(3, torch.Generator().manual_seed(5))
    first, second = arch.generate(q, z, 2, extras), arch.generate(q, z, 3, extras)
    assert torch.equal(first, second)  # same inputs and noise: identical, batch or not
    assert (first[0] - first[1]).abs().max() > 1e-3  # per-sample noise reaches the quantized model
    set_quant(q, weights=False, activations=False)  # the quantized copy, quantizers off, is the FP model:
    torch.testing.assert_close(arch.generate(q, z, 3, extras), arch.generate(G, z, 3, extras), atol=1e-5, rtol=0)


def test_stylegan_noise_count_and_shape_mismatch_are_clear_errors():
    from workflow_src.archs.stylegan import fixed_noise, sample_noise

    arch, G = _stylegan_with_noise_that_matters()
    noise = sample_noise(G, 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"got 5 noise tensors for a model with 6 noise layers \(blocks.0.noise1: \(N, 1, 4, 4\)"):
        with fixed_noise(G, noise[:5]):
            pass
    bad = list(noise)
    bad[2] = torch.randn(2, 1, 4, 4)  # layer 2 is at 8x8
    with pytest.raises(ValueError, match=r"noise layer 'blocks.1.noise1': .*\(N, 1, 8, 8\), got \(2, 1, 4, 4\)"):
        with fixed_noise(G, bad):
            pass
    assert all(m.fixed is None for m in G.modules() if hasattr(m, "fixed"))  # a failed set restores
    bad = [noise[0][:1]] + list(noise[1:])
    with pytest.raises(ValueError, match=r"disagree on the number of samples: \[1, 2\]"):
        with fixed_noise(G, bad):
            pass
    with pytest.raises(ValueError, match="gave noise for 2 samples, the batch has 3"):
        with torch.no_grad(), fixed_noise(G, noise):
            G(inputs(arch, 3))
    with pytest.raises(ValueError, match=r"rerun eval_inputs / distill"):
        arch.use_extras(G, {}, slice(None))
    with pytest.raises(ValueError, match=r"'noise_seed'.*got keys \['noise'\]"):  # the per-map format of earlier eval inputs
        arch.use_extras(G, {"noise": noise}, slice(None))


@pytest.mark.parametrize("name", ["sagan", "cyclegan"])
def test_archs_without_extras(name):
    arch = make(name)
    assert arch.sample_extras(3, torch.Generator().manual_seed(0)) == {}
    with pytest.raises(ValueError, match=f"{name} takes no extra inputs, got \\['noise'\\]"):
        arch.use_extras(nn.Identity(), {"noise": []})


# -- SAGAN: heykeetae/Self-Attention-GAN's layout with Upsample + Conv (paper appendix A.2) ------------
def _trained_sagan(steps=2):
    torch.manual_seed(0)
    arch = make("sagan")
    state = arch.init_state(torch.device("cpu"))
    it = batches(arch)
    for step in range(steps):  # non-trivial BN statistics and spectral-norm vectors
        arch.train_step(state, it, step)
    with torch.no_grad():
        for m in state["G_ema"].modules():  # attention that matters (gamma starts at 0)
            if hasattr(m, "gamma"):
                m.gamma.fill_(0.7)
        for m in state["D"].modules():
            if hasattr(m, "gamma"):
                m.gamma.fill_(0.7)
    return arch, state


def _heykeetae_attention(x, a):
    """sagan_models.Self_Attn.forward, on the layer's (plain) 1x1 projections."""
    n, c, h, w = x.shape
    q = F.conv2d(x, a.query.weight, a.query.bias).view(n, -1, h * w).permute(0, 2, 1)
    k = F.conv2d(x, a.key.weight, a.key.bias).view(n, -1, h * w)
    attention = torch.softmax(torch.bmm(q, k), dim=-1)
    v = F.conv2d(x, a.value.weight, a.value.bias).view(n, -1, h * w)
    return a.gamma * torch.bmm(v, attention.permute(0, 2, 1)).view(n, c, h, w) + x


def test_sagan_generator_is_heykeetaes_with_upsample_conv():
    """The generator equals a functional transcription of heykeetae's Generator.forward (l1, l2,
    attn1, ..., last) with each 4x4 stride-2 transposed conv replaced by nearest 2x upsampling + a
    3x3 conv, on the baked weights; its first layer is heykeetae's 4x4 transposed conv of the 1x1
    latent, exactly."""
    arch, state = _trained_sagan()
    G = bake(copy.deepcopy(arch.generator(state))).eval()
    net = G.net
    assert [n for n, _ in net.named_children()] == ["l1", "attn1", "l2", "attn2", "last"]
    z = inputs(arch, 3)

    def bn(x, m):
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    lin = net.l1[0]
    c0 = CFG["sagan"][0]["channels"][0]
    tconv = lin.weight.t().reshape(16, c0, 4, 4)  # (z_dim, C, 4, 4): ConvTranspose2d(z_dim, C, 4)'s weight
    assert lin.bias is None  # heykeetae's per-channel tconv bias is absorbed by the BatchNorm after it
    x = _heykeetae_attention(F.relu(bn(F.conv_transpose2d(z.view(3, -1, 1, 1), tconv), net.l1[2])), net.attn1)
    x = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), net.l2[1].weight, net.l2[1].bias, padding=1)
    x = _heykeetae_attention(F.relu(bn(x, net.l2[2])), net.attn2)
    ref = torch.tanh(F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), net.last[1].weight, net.last[1].bias, padding=1))
    with torch.no_grad():
        out = G(z)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(arch.generator(state).eval()(z), out, atol=1e-5, rtol=0)
    assert [round(float(m.gamma), 6) for m in G.modules() if hasattr(m, "gamma")] == [0.7, 0.7]  # the attention mattered


def test_sagan_discriminator_is_heykeetaes():
    """SN 4x4 stride-2 convs with LeakyReLU 0.1 from 16 to 8 to 4, attention after each (d_attn_res
    [8, 4], heykeetae's last two), a 4x4 conv to one logit per image."""
    arch, state = _trained_sagan()
    D = bake(copy.deepcopy(state["D"])).eval()
    convs = [m for m in D.net if isinstance(m, nn.Conv2d)]
    attn = [m for m in D.net if hasattr(m, "gamma")]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(3, 8, (2, 2)), (8, 16, (2, 2)), (16, 1, (1, 1))]
    assert all(not parametrize.is_parametrized(m) for m in state["D"].net[2].modules())  # attention without SN
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    h = _heykeetae_attention(F.leaky_relu(F.conv2d(x, convs[0].weight, convs[0].bias, stride=2, padding=1), 0.1), attn[0])
    h = _heykeetae_attention(F.leaky_relu(F.conv2d(h, convs[1].weight, convs[1].bias, stride=2, padding=1), 0.1), attn[1])
    ref = F.conv2d(h, convs[2].weight, convs[2].bias).flatten()
    with torch.no_grad():
        torch.testing.assert_close(D(x), ref, atol=1e-5, rtol=0)


def test_sagan_quantization_sees_every_conv_and_both_attention_layers():
    from workflow_src.quant import QuantConv2d, QuantLinear, QuantOp, QuantSpec, quantize_model

    arch, state = _trained_sagan()
    q = quantize_model(arch.generator(state), QuantSpec(w_bits=4, a_bits=8))
    kinds = [type(m).__name__ for m in q.modules() if isinstance(m, (QuantConv2d, QuantLinear, QuantOp))]
    # l1's linear; l2's conv, 3 projections per attention layer, last's conv; 4 operations per attention
    assert kinds.count("QuantLinear") == 1 and kinds.count("QuantConv2d") == 1 + 2 * 3 + 1 and kinds.count("QuantOp") == 2 * 4
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in q.modules())
    ops_per_attention = [[type(o.op).__name__ for o in (a.scores, a.attend, a.scale, a.add)] for a in (q.net.attn1, q.net.attn2)]
    assert ops_per_attention == [["MatMul", "MatMul", "Mul", "Add"]] * 2


def test_sagan_layout_and_attention_levels_are_checked():
    model_cfg, train_cfg = CFG["sagan"]
    with pytest.raises(ValueError, match=r"attn_res = \[16\]: each entry must be one of the feature resolutions \[4, 8\]"):
        get_arch("sagan")({**model_cfg, "attn_res": [16]}, train_cfg, RES)
    with pytest.raises(ValueError, match="the only layout is 'heykeetae'"):
        get_arch("sagan")({**model_cfg, "layout": "biggan"}, train_cfg, RES)
    with pytest.raises(ValueError, match=r"channels needs 2 entries \(levels 4..8\)"):
        get_arch("sagan")({**model_cfg, "channels": [16, 8, 8]}, train_cfg, RES)

