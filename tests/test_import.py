"""Published checkpoints: rosinality's StyleGAN layout, the importers, the import_fp stage and the
paper profile's plan.  State dicts are built in the published key layouts (tests/rosinality_layout.py
for rosinality; SAGAN and CycleGAN below) with random values; outputs are compared with functional
references written from the published model code, not with the project's modules."""
from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rosinality_layout import (PAPER_CHECKPOINT, published_discriminator, published_generator, reference_discriminator,
                               reference_generator, write_published_checkpoint)
from workflow_src import config as qcfg
from workflow_src import registry
from workflow_src.archs.importers import (CheckpointMismatch, heykeetae_sagan, junyanz_cyclegan,
                                           rosinality_discriminator, rosinality_generator)
from workflow_src.archs.layers import Blur, FusedUpConv2d, ZeroInsert2d
from workflow_src.quant.modules import QuantConv2d, QuantSpec
from workflow_src.workflow.fp import import_fp
from workflow_src.quant.transform import calibrate, quantize_model, set_quant

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = [8, 8, 6, 6, 4, 4, 2, 2, 2]  # small published widths; 128px keeps the fused level
SMALL = {"layout": "rosinality", "latent_dim": 16, "n_mlp": 3, "channels": WIDTHS[:6], "d_channels": WIDTHS[:6]}


def small_stylegan(**over):
    return registry.arch("stylegan").implementation()({**SMALL, **over}, {}, 128)


def test_fused_upsample_is_the_blurred_transposed_conv():
    """FusedUpConv2d (zero insertion + 4x4 conv) equals F.conv_transpose2d with rosinality's
    blurred kernel, before and after baking, and quantizes as an ordinary conv."""
    torch.manual_seed(0)
    cin, cout = 5, 3
    w_t, bias, x = torch.randn(cin, cout, 3, 3), torch.randn(cout), torch.randn(2, cin, 6, 7)
    k = F.pad(w_t * math.sqrt(2 / (cin * 9)), [1, 1, 1, 1])
    k = (k[:, :, 1:, 1:] + k[:, :, :-1, 1:] + k[:, :, 1:, :-1] + k[:, :, :-1, :-1]) / 4
    ref = F.conv_transpose2d(x, k, bias, stride=2, padding=1)
    up = FusedUpConv2d(cin, cout)
    with torch.no_grad():
        up.weight.copy_(w_t.flip(2, 3).transpose(0, 1) * math.sqrt(2))
        up.bias.copy_(bias)
    assert up(x).shape == (2, cout, 12, 14)
    torch.testing.assert_close(up(x), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(up.to_plain()(x), ref, atol=1e-5, rtol=0)
    q = quantize_model(torch.nn.Sequential(up), QuantSpec(w_bits=8))
    convs = [m for m in q.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 1 and convs[0].weight.shape == (cout, cin, 4, 4)


def test_rosinality_generator_import_equals_the_published_forward():
    torch.manual_seed(1)
    arch = small_stylegan()
    G = arch.build_generator().double().eval()
    sd = {k: v.double() for k, v in published_generator(WIDTHS, 16, 3).items()}
    rosinality_generator(sd, G)
    z = torch.randn(3, 16, dtype=torch.float64)
    noise = [b.noise1.noise for b in G.blocks]  # one map per level, as rosinality's noise list
    ref = reference_generator(sd, z, noise, step=5, n_mlp=3)
    assert ref.shape == (3, 3, 128, 128) and ref.abs().max() > 1.0  # values outside [-1, 1]: the clamp matters
    torch.testing.assert_close(G(z), ref.clamp(-1, 1), atol=1e-9, rtol=0)
    G.train()  # training mode: no clamp, fresh noise; with zero noise weights still the reference
    with torch.no_grad():
        for b in G.blocks:
            b.noise1.weight.zero_(), b.noise2.weight.zero_()
    torch.testing.assert_close(G(z), reference_generator(sd, z, [torch.zeros(1)] * 6, 5, 3), atol=1e-9, rtol=0)


@pytest.mark.parametrize("activate", [False, True])
def test_rosinality_discriminator_import_equals_the_published_forward(activate):
    torch.manual_seed(2)
    D = small_stylegan(from_rgb_activate=activate).build_discriminator().double()
    sd = {k: v.double() for k, v in published_discriminator(WIDTHS, from_rgb_activate=activate).items()}
    rosinality_discriminator(sd, D)
    x = torch.randn(4, 3, 128, 128, dtype=torch.float64)
    torch.testing.assert_close(D(x), reference_discriminator(sd, x, 5, activate).flatten(), atol=1e-9, rtol=0)
    other = small_stylegan(from_rgb_activate=not activate).build_discriminator()
    with pytest.raises(CheckpointMismatch, match=f"from_rgb_activate: {str(activate).lower()}"):
        rosinality_discriminator(sd, other)


def test_rosinality_mismatches_name_the_key():
    G = small_stylegan().build_generator()
    good = published_generator(WIDTHS, 16, 3)
    missing = {k: v for k, v in good.items() if k != "generator.progression.3.noise2.weight_orig"}
    with pytest.raises(CheckpointMismatch, match=r"missing key 'generator\.progression\.3\.noise2\.weight_orig'"):
        rosinality_generator(missing, G)
    with pytest.raises(CheckpointMismatch, match=r"unexpected key.*'generator\.progression\.2\.extra'"):
        rosinality_generator({**good, "generator.progression.2.extra": torch.zeros(1)}, G)
    with pytest.raises(CheckpointMismatch, match=r"'generator\.progression\.5\.conv1\.0\.weight' has shape \(4, 4, 3, 3\); .* needs \(4, 5, 3, 3\)"):
        rosinality_generator(good, registry.arch("stylegan").implementation()({**SMALL, "channels": WIDTHS[:5] + [5]}, {}, 128).build_generator())
    blurred = dict(good, **{"generator.progression.2.conv1.2.weight": torch.ones(6, 1, 3, 3) / 9})
    with pytest.raises(CheckpointMismatch, match=r"progression\.2\.conv1\.2\.weight.*not the \[1, 2, 1\]"):
        rosinality_generator(blurred, G)
    with pytest.raises(CheckpointMismatch, match=r"missing key 'style\.7\.linear\.weight_orig'"):  # n_mlp 4 > 3
        rosinality_generator(good, small_stylegan(n_mlp=4).build_generator())
    before = copy.deepcopy(G.state_dict())
    for k, v in G.state_dict().items():  # a refused import leaves the model untouched
        assert torch.equal(v, before[k])


def test_imported_generator_quantizes_and_runs():
    """Every conv of the imported generator, the fused 4x4 one included, becomes a QuantConv2d;
    the blur filters stay float; w8a8 stays close to the FP output, w4 drifts further."""
    torch.manual_seed(3)
    G = small_stylegan().build_generator().eval()
    rosinality_generator(published_generator(WIDTHS, 16, 3), G)
    z = torch.randn(8, 16)
    fp = G(z)
    errs = {}
    for bits in (8, 4):
        q = quantize_model(G, QuantSpec(w_bits=bits, a_bits=8, per_channel=True))
        convs = [m for m in q.modules() if isinstance(m, QuantConv2d)]
        assert len(convs) == 6 * 2 - 1 + 1 and sum(c.weight.shape[-1] == 4 for c in convs) == 1  # 11 styled convs + to_rgb
        assert sum(isinstance(m, Blur) for m in q.modules()) == 5
        calibrate(q, [z[:4], z[4:]])  # ranges observed on the evaluated latents: the error is the grid's
        out = q(z)
        assert out.shape == fp.shape and torch.isfinite(out).all()
        errs[bits] = (out - fp).pow(2).mean().item()
        set_quant(q, weights=True, activations=False)
        errs[f"w{bits}"] = (q(z) - fp).pow(2).mean().item()
    # 8-bit activations of this 2..8-channel random network cost ~12% of the output variance (the
    # default layout's as much); 8-bit weights alone almost nothing
    assert 0 < errs["w8"] < 0.03 * fp.var().item() and 10 * errs["w8"] < errs["w4"] and errs[8] < errs[4], errs


# ---------------------------------------------------------------------------- the stage
def _cfg(tmp_path, methods=None, **ck):
    cfg = qcfg.load([ROOT / "params.yaml"])
    cfg["matrix"]["methods"] = methods or cfg["matrix"]["methods"]
    # the published layout at 128 px: its own dataset entry at that size (the others stay at the tiny 16)
    cfg["datasets"]["digits-128"] = {**cfg["datasets"][cfg["archs"]["stylegan"]["dataset"]], "resolution": 128}
    cfg["archs"]["stylegan"].update(resolution=128, model={**SMALL}, dataset="digits-128")
    cfg["archs"]["stylegan"]["fp_checkpoint"] = {"format": "rosinality", "path": str(tmp_path / "ck.model"), "sha256": None,
                                                 "generator": "g_running", "discriminator": "discriminator", **ck}
    qcfg.validate(cfg)
    return cfg


def test_import_fp_writes_what_the_workflow_loads(tmp_path):
    from workflow_src.workflow.training import load_discriminator, load_generator

    write_published_checkpoint(tmp_path / "ck.model", WIDTHS, 16, 3)
    cfg = _cfg(tmp_path)
    out = import_fp(cfg, arch="stylegan", checkpoint=tmp_path / "ck.model", model=tmp_path / "stylegan.pt")
    G = load_generator(cfg, "stylegan", out).double()
    sd = {k: v.double() for k, v in published_generator(WIDTHS, 16, 3).items()}
    z = torch.randn(2, 16, dtype=torch.float64)
    torch.testing.assert_close(G(z), reference_generator(sd, z, [b.noise1.noise for b in G.blocks], 5, 3).clamp(-1, 1), atol=1e-5, rtol=0)
    D = load_discriminator(cfg, "stylegan", out)
    dsd = published_discriminator(WIDTHS)
    x = torch.randn(2, 3, 128, 128)
    torch.testing.assert_close(D(x), reference_discriminator(dsd, x, 5).flatten(), atol=1e-4, rtol=1e-4)

    # a bare generator state dict (rosinality's "running average" files): no discriminator for QAT
    torch.save(published_generator(WIDTHS, 16, 3), tmp_path / "g.model")
    cfg_g = _cfg(tmp_path, methods=["ptq-minmax"], path=str(tmp_path / "g.model"), generator=None, discriminator=None)
    out_g = import_fp(cfg_g, arch="stylegan", checkpoint=tmp_path / "g.model", model=tmp_path / "g.pt")
    torch.testing.assert_close(load_generator(cfg_g, "stylegan", out_g)(z.float()), G.float()(z.float()))
    with pytest.raises(ValueError, match="without a discriminator"):
        load_discriminator(cfg_g, "stylegan", out_g)

    with pytest.raises(CheckpointMismatch, match=r"fp_checkpoint\.generator = 'ema': the file has no such entry .*'g_running'"):
        import_fp(_cfg(tmp_path, generator="ema"), arch="stylegan", checkpoint=tmp_path / "ck.model", model=tmp_path / "x.pt")
    with pytest.raises(CheckpointMismatch, match=r"fp_checkpoint\.sha256: .* expected 0{64}"):
        import_fp(_cfg(tmp_path, sha256="0" * 64), arch="stylegan", checkpoint=tmp_path / "ck.model", model=tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_config_checks_for_published_checkpoints(tmp_path):
    cfg = qcfg.load([ROOT / "params.yaml"])
    assert any(m.endswith("-qat") for m in cfg["matrix"]["methods"])

    def problems(mutate):
        c = copy.deepcopy(cfg)
        mutate(c)
        with pytest.raises(qcfg.ConfigError) as e:
            qcfg.validate(c)
        return str(e.value)

    ck = {"format": "rosinality", "path": "x.model", "generator": "g_running", "discriminator": None}
    msg = problems(lambda c: c["archs"]["stylegan"].update(fp_checkpoint=ck, model={**SMALL}, resolution=128))
    assert "'archs.stylegan.fp_checkpoint.discriminator' is null but 'matrix.methods' lists ['ma-qat', 'lsq-qat']" in msg
    msg = problems(lambda c: c["archs"]["stylegan"].update(fp_checkpoint={**ck, "discriminator": "discriminator"}))
    assert "needs arch stylegan with 'archs.stylegan.model.layout: rosinality'" in msg
    msg = problems(lambda c: c["archs"]["sagan"].update(fp_checkpoint={**ck, "format": "heykeetae"}))
    assert "'archs.sagan.fp_checkpoint.format' = 'heykeetae': cannot be imported" in msg and "ConvTranspose2d" in msg
    msg = problems(lambda c: c["archs"]["cyclegan"].update(fp_checkpoint={**ck, "format": "junyanz"}))
    assert "model.19, model.22" in msg
    msg = problems(lambda c: c["archs"]["sagan"]["model"].update(layout="rosinality"))
    assert "key 'archs.sagan.model.layout' = \"rosinality\": 'rosinality' is not one of ['heykeetae']" in msg  # each arch's model schema is its own (registry)


# ---------------------------------------------------------------------------- SAGAN, CycleGAN
def test_heykeetae_sagan_checkpoint_is_refused_naming_its_transposed_convs():
    """heykeetae/Self-Attention-GAN's Generator(image_size=64) key layout (SpectralNorm wrappers)."""
    sd = {}
    for i, (cin, cout) in enumerate([(128, 512), (512, 256), (256, 128), (128, 64)], start=1):
        for p, shape in (("weight_bar", (cin, cout, 4, 4)), ("weight_u", (cin,)), ("weight_v", (cout * 16,)), ("bias", (cout,))):
            sd[f"l{i}.0.module.{p}"] = torch.randn(shape)
        sd.update({f"l{i}.1.{p}": torch.randn(cout) for p in ("weight", "bias", "running_mean", "running_var")})
    sd["last.0.weight"], sd["last.0.bias"] = torch.randn(64, 3, 4, 4), torch.randn(3)
    for a, c in (("attn1", 128), ("attn2", 64)):
        for n, co in (("query_conv", c // 8), ("key_conv", c // 8), ("value_conv", c)):
            sd[f"{a}.{n}.weight"], sd[f"{a}.{n}.bias"] = torch.randn(co, c, 1, 1), torch.randn(co)
        sd[f"{a}.gamma"] = torch.zeros(1)
    G = registry.arch("sagan").implementation()({"latent_dim": 128, "channels": [64, 32, 16, 8], "d_channels": [64, 32, 16, 8], "attn_res": [16, 32]}, {}, 64).build_generator()
    with pytest.raises(CheckpointMismatch, match=r"\['l1', 'l2', 'l3', 'l4', 'last'\] have no counterpart.*retrained"):
        heykeetae_sagan(sd, G)
    with pytest.raises(CheckpointMismatch, match="not a heykeetae"):
        heykeetae_sagan({"fc.weight": torch.zeros(1)}, G)


def junyanz_resnet_generator(ngf=4, n_blocks=2, seed=0):
    """``ResnetGenerator(3, 3, ngf, norm_layer=InstanceNorm2d, n_blocks)``.state_dict() of
    junyanz/pytorch-CycleGAN-and-pix2pix (use_bias=True; affine-free instance norms hold no keys)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: 0.3 * torch.randn(*s, generator=g)  # noqa: E731
    sd, i, c = {"model.1.weight": r(ngf, 3, 7, 7), "model.1.bias": r(ngf)}, 4, ngf
    for _ in range(2):
        sd[f"model.{i}.weight"], sd[f"model.{i}.bias"] = r(2 * c, c, 3, 3), r(2 * c)
        i, c = i + 3, 2 * c
    for _ in range(n_blocks):
        for j in (1, 5):
            sd[f"model.{i}.conv_block.{j}.weight"], sd[f"model.{i}.conv_block.{j}.bias"] = r(c, c, 3, 3), r(c)
        i += 1
    for _ in range(2):  # ConvTranspose2d(c, c // 2, 3, stride 2, padding 1, output_padding 1): (in, out, k, k)
        sd[f"model.{i}.weight"], sd[f"model.{i}.bias"] = r(c, c // 2, 3, 3), r(c // 2)
        i, c = i + 3, c // 2
    sd[f"model.{i + 1}.weight"], sd[f"model.{i + 1}.bias"] = r(3, c, 7, 7), r(3)
    return sd


def junyanz_encoder_reference(sd, x, n_blocks=2):
    """The junyanz ResnetGenerator up to its last residual block, functionally."""
    x = F.relu(F.instance_norm(F.conv2d(F.pad(x, [3] * 4, mode="reflect"), sd["model.1.weight"], sd["model.1.bias"])))
    for i in (4, 7):
        x = F.relu(F.instance_norm(F.conv2d(x, sd[f"model.{i}.weight"], sd[f"model.{i}.bias"], stride=2, padding=1)))
    for b in range(10, 10 + n_blocks):
        h = F.relu(F.instance_norm(F.conv2d(F.pad(x, [1] * 4, mode="reflect"), sd[f"model.{b}.conv_block.1.weight"], sd[f"model.{b}.conv_block.1.bias"])))
        x = x + F.instance_norm(F.conv2d(F.pad(h, [1] * 4, mode="reflect"), sd[f"model.{b}.conv_block.5.weight"], sd[f"model.{b}.conv_block.5.bias"]))
    return x


def test_junyanz_cyclegan_matches_up_to_the_decoder_and_is_refused_whole():
    G = registry.arch("cyclegan").implementation()({"ngf": 4, "ndf": 4, "n_blocks": 2, "n_downsampling": 2, "d_layers": 3}, {}, 32).build_generator()
    sd = junyanz_resnet_generator()
    with pytest.raises(CheckpointMismatch, match=r"decoder layers \['model.12', 'model.15'\] are transposed convolutions"):
        junyanz_cyclegan(sd, G)
    untouched = junyanz_cyclegan(sd, G, partial=True)
    assert untouched == ["net.13", "net.17", "net.21"]  # the decoder's Upsample+Conv pairs and the output conv
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(G.net[:12](x), junyanz_encoder_reference(sd, x), atol=1e-5, rtol=0)
    wrong = junyanz_resnet_generator(ngf=8)
    with pytest.raises(CheckpointMismatch, match=r"'model.1.weight' has shape \(8, 3, 7, 7\); .* needs \(4, 3, 7, 7\)"):
        junyanz_cyclegan(wrong, G)


# ---------------------------------------------------------------------------- the paper profile
def test_paper_checkpoint_imports_at_full_size(tmp_path, published_stylegan_checkpoint):
    """The paper profile's StyleGAN config fits rosinality's published 128px tensors."""
    from workflow_src.workflow.training import load_generator

    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "paper.yaml"])
    out = import_fp(cfg, arch="stylegan", checkpoint=published_stylegan_checkpoint, model=tmp_path / "stylegan.pt")
    G = load_generator(cfg, "stylegan", out)
    assert sum(p.numel() for p in G.parameters()) > 20e6
    with torch.no_grad():
        img = G(torch.randn(1, 512))
    assert img.shape == (1, 3, 128, 128) and torch.isfinite(img).all()


def _dry_run(wd):
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(wd), "-n", "--cores", "1",
                           "report", "--configfile", str(ROOT / "configs" / "paper.yaml")], capture_output=True, text=True, cwd=ROOT)


def test_paper_plan_imports_stylegan_and_trains_the_others(tmp_path, published_stylegan_checkpoint):
    """A fresh clone plans the paper run without the published checkpoint (``make dry-run-paper``:
    rule import_fp downloads it or says where to put it when it runs); with it, the same plan."""
    for with_checkpoint in (False, True):
        if with_checkpoint:
            (tmp_path / PAPER_CHECKPOINT).parent.mkdir(parents=True)
            os.symlink(published_stylegan_checkpoint, tmp_path / PAPER_CHECKPOINT)
        proc = _dry_run(tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = " ".join((proc.stdout + proc.stderr).split())
        assert "import_fp 1" in out and "train_fp 2" in out and "fetch_inception 1" in out
        jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    wildcards: (.*)$", proc.stdout, re.M)
        assert ("import_fp", "seed=0, arch=stylegan") in jobs
        assert sorted(w for r, w in jobs if r == "train_fp") == ["seed=0, arch=cyclegan", "seed=0, arch=sagan"]


def test_import_fp_downloads_a_missing_checkpoint_or_says_where_to_put_it(tmp_path, monkeypatch, http_server,
                                                                        published_stylegan_checkpoint):
    """Without the file and without ``url``: an error naming the key and the path.  With ``url``:
    downloaded, checked against ``sha256`` (a mismatch leaves nothing at the path), imported."""
    import hashlib

    from workflow_src.utils import torch_load

    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "paper.yaml"])
    wd = tmp_path / "wd"
    wd.mkdir()
    monkeypatch.chdir(wd)
    with pytest.raises(FileNotFoundError, match=rf"key 'archs.stylegan.fp_checkpoint.path' = '{PAPER_CHECKPOINT}': no such file.*"
                                                r"'archs.stylegan.fp_checkpoint.url'"):
        import_fp(cfg, arch="stylegan", model=str(tmp_path / "a.pt"))
    served = tmp_path / "served" / "stylegan.model"
    served.parent.mkdir()
    os.symlink(published_stylegan_checkpoint, served)
    digest = hashlib.sha256(published_stylegan_checkpoint.read_bytes()).hexdigest()
    ck = cfg["archs"]["stylegan"]["fp_checkpoint"]
    ck.update(url=http_server.served(served), sha256="0" * 64)
    with pytest.raises(ValueError, match=r"archs\.stylegan\.fp_checkpoint\.sha256"):
        import_fp(cfg, arch="stylegan", model=str(tmp_path / "b.pt"))
    assert not [p for p in (wd / PAPER_CHECKPOINT).parent.iterdir()]  # nothing that looks complete
    ck["sha256"] = digest
    out = import_fp(cfg, arch="stylegan", model=str(tmp_path / "c.pt"))
    assert hashlib.sha256((wd / PAPER_CHECKPOINT).read_bytes()).hexdigest() == digest
    assert torch_load(out)["imported"]["sha256"] == digest


def test_a_checkpoint_url_needs_its_sha256():
    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "paper.yaml"])
    cfg["archs"]["stylegan"]["fp_checkpoint"]["url"] = "https://example.org/stylegan.model"
    with pytest.raises(qcfg.ConfigError, match=r"'archs\.stylegan\.fp_checkpoint\.url' is set but 'archs\.stylegan\.fp_checkpoint\.sha256' is null"):
        qcfg.validate(cfg)


def test_paths_from_the_params_reach_the_command_quoted(tmp_path, published_stylegan_checkpoint):
    """A checkpoint path (the params' path that reaches a shell command) with spaces and shell
    metacharacters, in a working directory with a space: rule import_fp, run for real, reads exactly
    that file, and nothing in the path is run by the shell."""
    import yaml

    from workflow_src.utils import torch_load

    wd = tmp_path / "work dir"
    hostile = "ckpt dir/it's $(touch PWNED1) `touch PWNED2`; a&b|c>d.model"
    (wd / hostile).parent.mkdir(parents=True)
    os.symlink(published_stylegan_checkpoint, wd / hostile)
    over = tmp_path / "over.yaml"
    over.write_text(yaml.safe_dump({"archs": {"stylegan": {"fp_checkpoint": {"path": hostile}}}}))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(wd), "--cores", "1",
                           "models/s0/fp/stylegan.pt", "--configfile", str(ROOT / "configs" / "paper.yaml"), str(over)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "QGAN_TRACKING": "off"})
    logs = "".join(p.read_text() for p in (wd / "logs").rglob("*.log")) if (wd / "logs").exists() else ""
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-2000:]
    assert torch_load(wd / "models" / "s0" / "fp" / "stylegan.pt")["imported"]["file"] == Path(hostile).name
    assert not [p for d in (wd, ROOT, Path.cwd()) for p in d.rglob("PWNED*")]


def test_zero_insertion_against_strided_assignment():
    """ZeroInsert2d puts x at the even positions of a (2H-1, 2W-1) map of exact zeros, as a strided
    assignment into torch.zeros does, for odd and even sizes and batches."""
    for shape in ((1, 1, 1, 1), (2, 3, 5, 7), (3, 2, 4, 6)):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        ref = torch.zeros(shape[0], shape[1], 2 * shape[2] - 1, 2 * shape[3] - 1)
        ref[..., ::2, ::2] = x
        y = ZeroInsert2d()(x)
        assert torch.equal(y, ref) and not torch.signbit(y[..., 1::2, :]).any()  # +0.0, not -0.0
