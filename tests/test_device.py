"""One device policy (workflow_src/device.py), checked on this CPU-only machine.

Every compute path runs on the checking device of ``tests/devicecheck.py`` (``meta`` standing for a
GPU: values are computed on the CPU, and any op that mixes a CPU tensor with a device tensor
raises), and its results must be on the device and equal, bit for bit, the same run on the CPU:
seeded draws are made on the CPU, so they cannot depend on the device.  Hot paths must not read
from the device per step (the checking device records every host sync).
"""
import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from devicecheck import DEVICE, DevicePlacementError, on_checked_device
from workflow_src import config as qcfg
from workflow_src.config import Variant
from workflow_src.device import describe_runtime, map_tensors, resolve_device, restore_rng, rng_state, rows_to_host, to_cpu, to_device
from workflow_src import registry
from workflow_src.archs.layers import bake
from workflow_src.methods import brecq as brecq_mod
from workflow_src.methods import qat as qat_mod
from workflow_src.methods.perceptual import VGG16_CFG, VGG16_FILE, PerceptualLoss, VGGFeatures, load_perceptual
from workflow_src.quality import fid
from workflow_src.quality.featurenet import TinyFeatureNet
from workflow_src.quant import MinMaxObserver, QuantConv2d, QuantileObserver, QuantLinear, QuantSpec, calibrate, map_quantizers, quantize_model
from workflow_src.quant.adaround import AdaRoundQuantizer
from workflow_src.quant.blocks import capture, split_blocks
from workflow_src.quant.quantizer import FakeQuantizer
from workflow_src.workflow.artifacts import make_arch
from workflow_src.workflow.training import _state_dicts
from workflow_src.utils import torch_load, torch_save


def get_method(name):
    return registry.method(name).implementation()

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
LAYOUTS = ["stylegan", "stylegan-rosinality", "sagan", "cyclegan"]
KINDS = ["minmax", "quantile", "lsq", "adaround"]  # static min-max / quantile ranges, learned step sizes, learned rounding
QUANTILES = {"activation": {"upper": 0.999, "lower": 0.001}, "weight": {"upper": 0.9999, "lower": 0.0001}}
NETWORK_OPS = ("convolution", "addmm", ".mm.", "bmm", "fake_quantize")  # a network that ran on the host


@pytest.fixture(scope="module")
def base_cfg():
    """micro.yaml with smaller networks (every layer type, as few ops as possible: on the checking
    device each op costs about 0.1 ms of Python) and one- or two-step schedules."""
    c = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    c["archs"]["stylegan"].update(resolution=8, model={"latent_dim": 16, "n_mlp": 2, "channels": [16, 8], "d_channels": [16, 8]})
    c["archs"]["sagan"].update(resolution=16, model={"layout": "heykeetae", "latent_dim": 16, "channels": [16, 8], "d_channels": [16, 8],
                                                    "attn_res": [8], "d_attn_res": [4]})
    c["archs"]["cyclegan"].update(resolution=16, model={"ngf": 4, "ndf": 4, "n_blocks": 1, "n_downsampling": 2, "d_layers": 2})
    for a in c["archs"].values():
        a["quantiles"] = copy.deepcopy(QUANTILES)
        a["train"]["batch_size"] = 4
    c["calibration"]["images"] = 8
    c["distill"].update(size=8, batch_size=4)
    c["brecq"].update(calib_images=8, batch_size=4, ar_steps=2, ar_warmup=1, ste_steps=2)
    c["qat"].update(epochs=2, ma_epochs=1, batch_size=4)
    c["qat"]["loss_weights"]["adversarial"] = 0.01  # the discriminator step runs too
    c["perceptual"].update(content_layer="relu2_1", style_layers=["relu1_1", "relu2_1"], tinyvgg={**c["perceptual"]["tinyvgg"], "layers": [8, "M", 8]})
    c["eval"].update(n_samples=8, batch_size=4, grid=4, bootstrap=2)
    return c


@pytest.fixture(params=LAYOUTS)
def layout(request, base_cfg, monkeypatch):
    """``(cfg, arch)`` for every arch; rosinality's StyleGAN with its fused up/downsampling (stride-2
    zero insertion, blur) from 8 px on instead of 128, so the micro network has them."""
    cfg = copy.deepcopy(base_cfg)
    if request.param == "stylegan-rosinality":
        from workflow_src.archs import rosinality

        monkeypatch.setattr(rosinality, "FUSED_FROM", 8)
        cfg["archs"]["stylegan"]["model"]["layout"] = "rosinality"
        return cfg, "stylegan"
    return cfg, request.param


@pytest.fixture(scope="module")
def featurenet_file(tmp_path_factory):
    torch.manual_seed(0)
    net = TinyFeatureNet(n_classes=8, input_size=16, width=8, dim=16)
    path = tmp_path_factory.mktemp("features") / "features.pt"
    torch_save({"hparams": {"n_classes": 8, "input_size": 16, "width": 8, "dim": 16}, "state_dict": net.state_dict()}, path)
    return path


# ------------------------------------------------------------------------------------ helpers
def _leaves(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj


def on_both(fn, check_device):
    """``fn(device, mode)`` on the CPU (``mode`` None) and on the checking device; every tensor the
    device run returns must be on the device.  Returns (CPU results, device results on the host, mode)."""
    ref = fn(CPU, None)
    with check_device() as mode:
        out = fn(DEVICE, mode)
        off = [tuple(t.shape) for t in _leaves(out) if torch.is_tensor(t) and not on_checked_device(t)]
        assert not off, f"results of shapes {off} were left on the CPU"
        host = to_cpu(out)
    return ref, host, mode


def assert_same(ref, got, path="result"):
    """Equal bit for bit (tensors, arrays, numbers), recursively."""
    if isinstance(ref, dict):
        assert set(ref) == set(got), path
        for k in ref:
            assert_same(ref[k], got[k], f"{path}[{k!r}]")
    elif isinstance(ref, (list, tuple)):
        assert len(ref) == len(got), path
        for i, (a, b) in enumerate(zip(ref, got)):
            assert_same(a, b, f"{path}[{i}]")
    elif torch.is_tensor(ref):
        assert ref.dtype == got.dtype and torch.equal(ref, got), f"{path} differs by {(ref.double() - got.double()).abs().max()}"
    elif isinstance(ref, np.ndarray):
        assert np.array_equal(ref, got), path
    else:
        assert ref == got or (ref != ref and got != got), f"{path}: {ref} != {got}"


def assert_no_network_on_host(mode):
    """No convolution, matrix product or fake quantization ran on CPU tensors: a network (or a stage
    that forgot to pass its device on) computing on the host mixes nothing, so mixing alone cannot
    show it."""
    ops = mode.ran_on_host(*NETWORK_OPS)
    assert not ops, f"networks ran on the host: {ops}"


def _inputs(arch, n, g):
    """CPU generator inputs drawn with ``g``: latents, or source images for CycleGAN."""
    if arch.input_kind == "latent":
        return arch.sample_inputs(n, g)
    return torch.rand(n, 3, arch.resolution, arch.resolution, generator=g) * 2 - 1


def _batches(arch, seed):
    """Endless CPU training batches, as ``data.train_batches`` yields them."""
    g = torch.Generator().manual_seed(seed)
    keys = ["x"] if arch.input_kind == "latent" else ["A", "B"]
    while True:
        yield {k: torch.rand(4, 3, arch.resolution, arch.resolution, generator=g) * 2 - 1 for k in keys}


def _syncs(mode):
    return 0 if mode is None else len(mode.syncs())


# ------------------------------------------------------------------------------------ FP paths
def test_fp_forward_generate_display_and_train_step_run_on_the_device(layout, check_device):
    cfg, arch_name = layout

    def run(device, mode):
        torch.manual_seed(0)
        arch = make_arch(cfg, arch_name)
        state = arch.init_state(device)
        G = arch.generator(state).eval()
        g = torch.Generator().manual_seed(1)
        x, extras = _inputs(arch, 6, g), arch.sample_extras(6, g)  # on the CPU, as saved by eval_inputs
        out = {"generate": arch.generate(G, x, 4, extras),   # batches of 4 and 2, each with its extras
               "default_extras": arch.generate(G, x, 4),
               "display": arch.display(G, x[:3], 0.7)}       # StyleGAN: truncation in W from seeded CPU latents
        batches = _batches(arch, 2)
        torch.manual_seed(3)
        before = _syncs(mode)
        out["losses"] = [arch.train_step(state, batches, step) for step in range(2)]  # StyleGAN: R1 at step 0
        assert _syncs(mode) == before, "a training step read a value from the device"
        out["networks"] = {k: v.state_dict() for k, v in state.items() if isinstance(v, torch.nn.Module)}
        # Adam's moments (its step counts are CPU scalars by design, also on CUDA)
        out["moments"] = {k: {i: {n: t for n, t in s.items() if n != "step"} for i, s in v.state_dict()["state"].items()}
                          for k, v in state.items() if isinstance(v, torch.optim.Optimizer)}
        return out

    ref, got, mode = on_both(run, check_device)
    assert_same(ref, got)
    assert_no_network_on_host(mode)


def test_fp_training_loop_runs_on_the_device_and_reads_losses_per_interval(base_cfg, tmp_path, monkeypatch, check_device):
    """train(): data batches moved to the device, the losses read once per logging interval (the
    progress bar every 10 steps, the loss log at checkpoints), results saved as CPU tensors."""
    from workflow_src.datasets import prepared as datasets
    from workflow_src.workflow.training import train

    monkeypatch.setenv("QGAN_TRACKING", "off")
    cfg = copy.deepcopy(base_cfg)
    cfg["train"]["checkpoint_every"] = 100
    data = tmp_path / "h2z"
    datasets.prepare("h2z-synthetic", {**cfg["datasets"]["h2z-synthetic"], "n_train": 16, "n_test": 4}, data)

    def run(device, steps, mode=None):
        cfg["archs"]["cyclegan"]["train"].update(steps=steps, batch_size=2)
        out = tmp_path / f"{device.type}-{steps}.pt"
        before = _syncs(mode)
        train(cfg, "cyclegan", data, out, tmp_path / f"{device.type}-{steps}.ckpt.pt", device)
        return torch_load(out), out.with_suffix(".losses.csv").read_text(), _syncs(mode) - before

    ref, ref_log, _ = run(CPU, 8)
    with check_device() as mode:
        got, got_log, syncs = run(DEVICE, 8, mode)
        _, _, fewer = run(DEVICE, 4, mode)
        assert_no_network_on_host(mode)
    assert_same(ref, got)
    assert ref_log == got_log
    assert syncs == fewer, "host reads grow with the number of steps"


# ------------------------------------------------------------------------------------ quantized paths
def _spec(kind):
    obs = "minmax" if kind == "minmax" else "quantile"
    return QuantSpec(w_bits=4, a_bits=8, per_channel=kind in ("minmax", "adaround"), w_observer=obs, a_observer=obs,
                     w_quantiles=(0.9999, 0.0001), a_quantiles=(0.999, 0.001), momentum=0.9)


def _use_kind(q, kind):
    """The quantizer kind under test in place of the calibrated static quantizers."""
    if kind == "lsq":
        map_quantizers(q, qat_mod._to_lsq)
    elif kind == "adaround":
        for m in q.modules():
            if isinstance(m, (QuantConv2d, QuantLinear)):
                m.weight_quant = AdaRoundQuantizer.from_static(m.weight_quant, m.weight.detach())


@pytest.mark.parametrize("kind", KINDS)
def test_quantized_paths_run_on_the_device(layout, kind, featurenet_file, check_device):
    """Calibration, generation with extras, one BRECQ step on one block, one QAT distillation step
    with the perceptual loss and the discriminator, and FID features, for each kind of quantizer."""
    cfg, arch_name = layout

    def run(device, mode):
        torch.manual_seed(0)
        arch = make_arch(cfg, arch_name)
        state = arch.init_state(device)
        G, D = arch.generator(state).eval(), arch.discriminator(state)
        g = torch.Generator().manual_seed(1)
        x, extras = _inputs(arch, 8, g), arch.sample_extras(8, g)
        y = arch.generate(G, x, 4).half().cpu()  # the distillation targets, as saved
        q = quantize_model(G, _spec(kind))
        calibrate(q, x.split(4))
        out = {"calibrated": q.state_dict()}

        # BRECQ: one block (the last but one) reconstructed from the calibrated static start (AdaRound or LSQ + STE)
        rq, fp = copy.deepcopy(q), bake(copy.deepcopy(G)).eval()
        qb, fb = split_blocks(rq, arch.block_containers)[-2], split_blocks(fp, arch.block_containers)[-2]
        x_rec, target = capture(rq, qb, x, 4, "inputs"), capture(fp, fb, x, 4, "outputs")
        mode_name = "ar-brecq" if kind == "adaround" else "ste-brecq"
        before, n_quantizers = _syncs(mode), sum(isinstance(m, FakeQuantizer) for b in qb.modules for m in b.modules())
        brecq_mod._reconstruct_block(qb, x_rec, target, mode_name, cfg["brecq"], torch.Generator().manual_seed(5))
        # once per quantizer (is it calibrated?), the progress bar's first value and AdaRound's balance
        # record (read once, at the start of annealing); none per step
        assert mode is None or _syncs(mode) - before <= n_quantizers + 2, mode.syncs()[before:]
        out["brecq"] = rq.state_dict()
        out["brecq_mse"] = brecq_mod._block_mse(qb, x_rec, target, 4)

        _use_kind(q, kind)
        out["generate"] = arch.generate(q, x, 4, extras)

        # QAT: one distillation step (static kinds: MA-QAT ranges follow the batch)
        qat_mod.set_tracking(q, kind in ("minmax", "quantile"), 0.9)
        torch.manual_seed(7)
        pnet = VGGFeatures(cfg["perceptual"]["tinyvgg"]["layers"]).to(device)
        loss = qat_mod.make_loss(cfg, qat_mod.qat_params(cfg, arch_name), pnet)
        opt_g, opt_d = torch.optim.Adam(q.parameters(), lr=1e-3), torch.optim.Adam(D.parameters(), lr=1e-3)
        before = _syncs(mode)
        out["qat_losses"] = qat_mod.distill_step(q, D, to_device(x[:4], device), to_device(y[:4], device).float(), loss, 0.01, opt_g, opt_d)
        assert _syncs(mode) == before, "the QAT step read a value from the device"
        qat_mod.set_tracking(q, False)
        out["qat"] = q.state_dict()
        out["qat_generate"] = arch.generate(q, x, 4, extras)

        fs = fid.load_feature_space("tinycnn", featurenet_file, device)
        out["features"] = fs.extract(out["generate"].split(4))  # numpy on the host, for pytorch-fid
        return out

    ref, got, mode = on_both(run, check_device)
    assert_same(ref, got)
    assert_no_network_on_host(mode)


# ------------------------------------------------------------------------------------ whole methods
@pytest.mark.parametrize("method", ["ar-brecq", "lsq-qat"])
def test_methods_run_on_the_device_with_checkpoints_and_spill(base_cfg, method, tmp_path, check_device):
    """A whole BRECQ run (block inputs spilled to memory-mapped files) and a whole LSQ-QAT run (MA-QAT
    epoch, then LSQ; a checkpoint per epoch, the loss log), StyleGAN with per-sample noise."""
    cfg = copy.deepcopy(base_cfg)
    cfg["runtime"]["max_cache_mb"] = 1e-3  # spill every captured block input and output
    cfg["qat"].update(lsq_epochs=1)

    def run(device, mode):
        work = tmp_path / device.type
        work.mkdir(exist_ok=True)
        torch.manual_seed(0)
        arch = make_arch(cfg, "stylegan")
        state = arch.init_state(device)
        G, D = arch.generator(state).eval(), arch.discriminator(state)
        g = torch.Generator().manual_seed(1)
        x, extras = _inputs(arch, 8, g), arch.sample_extras(8, g)
        distill = {"inputs": x, "outputs": arch.generate(G, x, 4).half().cpu()}
        torch.manual_seed(7)
        pnet = VGGFeatures(cfg["perceptual"]["tinyvgg"]["layers"]).to(device)
        q, _, info = get_method(method)(G, x, Variant.parse(f"{method}-tensor-w4a8"), cfg["archs"]["stylegan"], cfg, arch=arch,
                                       ckpt=work / "q.ckpt.pt", distill=distill, discriminator=D, perceptual=pnet,
                                       losses_out=work / "losses.csv")
        out = {"state": q.state_dict(), "generate": arch.generate(q, x, 4, extras)}
        info.pop("train_seconds", None)
        log = list(csv.DictReader(open(work / "losses.csv"))) if method == "lsq-qat" else []
        return out, info, log

    (ref, ref_info, ref_log), (got, got_info, got_log), mode = on_both(run, check_device)
    assert_same(ref, got)
    assert_same(ref_info, got_info)
    assert ref_log == got_log and len(got_log) == (4 if method == "lsq-qat" else 0)  # 2 epochs x 2 steps, logged once each
    assert_no_network_on_host(mode)


def test_qat_reads_the_losses_once_per_epoch(base_cfg, check_device):
    """The QAT loop's host reads do not grow with the steps of an epoch."""
    cfg = base_cfg

    def syncs(n):
        with check_device() as mode:
            torch.manual_seed(0)
            arch = make_arch(cfg, "cyclegan")
            state = arch.init_state(DEVICE)
            G, D = arch.generator(state).eval(), arch.discriminator(state)
            x = _inputs(arch, n, torch.Generator().manual_seed(1))
            y = arch.generate(G, x, 4).half().cpu()
            q = quantize_model(G, _spec("quantile"))
            calibrate(q, x.split(4))
            loss = qat_mod.make_loss(cfg, qat_mod.qat_params(cfg, "cyclegan"), VGGFeatures(cfg["perceptual"]["tinyvgg"]["layers"]).to(DEVICE))
            before = len(mode.syncs())
            qat_mod.train_qat(q, D, x, y, "ma-qat", {**cfg["qat"], "epochs": 1}, loss, seed=0)
            return len(mode.syncs()) - before

    assert syncs(8) == syncs(16)  # 2 and 4 steps


# ------------------------------------------------------------------------------------ features, perceptual network
def test_inception_features_run_on_the_device_and_are_read_once(random_fid_inception, check_device):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def run(device, mode):
        fs = fid.load_feature_space("inception", random_fid_inception, device)
        before = _syncs(mode)
        feats = fs.extract(images.split(1))  # CPU batches, as real_stats reads them
        assert mode is None or len(mode.syncs()) - before == 1, "features are read from the device once"
        return torch.from_numpy(feats)

    ref = run(CPU, None)
    with check_device() as mode:
        got = run(DEVICE, mode)
        assert_no_network_on_host(mode)
    assert_same(ref, got)


def test_vgg16_perceptual_loss_runs_on_the_device(tmp_path, check_device):
    torch.manual_seed(0)
    net = VGGFeatures(VGG16_CFG)
    torch.save({f"features.{k}": v for k, v in net.features.state_dict().items()}, tmp_path / VGG16_FILE)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def run(device, mode):
        loss = PerceptualLoss(load_perceptual("vgg16", str(tmp_path / VGG16_FILE), device), "relu2_2", ["relu1_2", "relu2_2", "relu3_3"])
        out = to_device(x.clone(), device).requires_grad_(True)
        content, style = loss(out, to_device(x.flip(3), device))
        (content + style).backward()
        return {"content": content.detach(), "style": style.detach(), "grad": out.grad}

    ref, got, _ = on_both(run, check_device)
    assert_same(ref, got)


# ------------------------------------------------------------------------------------ the stages
def test_stages_compute_on_the_device_they_are_given(base_cfg, tmp_path, monkeypatch, check_device):
    """Every stage that computes (train_features, train_perceptual, real_stats, distill, quantize
    with a PTQ and a QAT method, evaluate, quantile_sweep, sensitivity, sample_figure), given ``device``: no
    network runs on the host, and the files they write hold CPU tensors and equal those of the same
    stages run on the CPU.  (``train`` is test_fp_training_loop_...)"""
    from workflow_src.datasets import prepared as datasets
    from workflow_src.reporting import samples
    from workflow_src.workflow import data as data_stage
    from workflow_src.workflow import distill as distill_stage
    from workflow_src.workflow import evaluate as evaluate_stage
    from workflow_src.workflow import networks, quantize as quantize_stage, sensitivity as sensitivity_stage, sweep as sweep_stage

    monkeypatch.setenv("QGAN_TRACKING", "off")
    cfg = copy.deepcopy(base_cfg)
    cfg["features"]["tinycnn"].update(steps=2, batch_size=8, width=8, dim=16, input_size=16)
    cfg["perceptual"]["tinyvgg"].update(steps=2, batch_size=8, refuse_at_chance=False)  # 2 steps: about placement, not quality
    cfg["matrix"].update(methods=["ptq-quantile", "lsq-qat"], w_bits=[4])  # the sample figure's rows
    cfg["qat"]["epochs"] = cfg["qat"]["ma_epochs"] = 1
    cfg["sweep"]["validation_samples"] = cfg["eval"]["n_samples"]
    cfg["sensitivity"]["max_units"] = 3  # one layer's three rows, then every quantizer on
    arch_name, variants = "stylegan", ["ptq-quantile-tensor-w4a8", "lsq-qat-tensor-w4a8"]
    data = tmp_path / "digits"
    cfg["datasets"]["digits"]["resolution"] = cfg["archs"][arch_name]["resolution"]
    datasets.prepare("digits", cfg["datasets"]["digits"], data)
    torch.manual_seed(0)
    fp = tmp_path / "fp.pt"
    torch_save({"arch": arch_name, "steps": 0, "state": _state_dicts(make_arch(cfg, arch_name).init_state(CPU))}, fp)
    inputs = str(tmp_path / "inputs.pt")
    distill_stage.eval_inputs(cfg, arch=arch_name, data=str(data), out=inputs)
    stage_modules = (networks, data_stage, distill_stage, quantize_stage, evaluate_stage, sweep_stage, sensitivity_stage, samples)
    for mod in stage_modules:  # every computing stage resolves runtime.device this way
        assert mod.resolve_device is resolve_device, mod.__name__

    def run(device):
        for mod in stage_modules:  # runtime.device, resolved to the device under test
            monkeypatch.setattr(mod, "resolve_device", lambda cfg, device=device: device)
        d = tmp_path / device.type
        d.mkdir()
        feats = str(d / "features.pt")
        networks.train_features(cfg, data=[str(data)], out=feats)
        networks.train_perceptual(cfg, data=[str(data)], out=str(d / "perceptual.pt"))
        data_stage.real_stats(cfg, dataset="digits", split="test", data=str(data), features=feats, out=str(d / "real.npz"))
        distill_stage.distill(cfg, arch=arch_name, data=str(data), fp=str(fp), out=str(d / "distill.pt"))
        for v in variants:
            quantize_stage.quantize(cfg, arch=arch_name, variant=v, fp=str(fp), distill=str(d / "distill.pt"), model=str(d / f"{v}.pt"),
                                    info=str(d / f"{v}.info.json"), perceptual=str(d / "perceptual.pt"),
                                    losses=str(d / f"{v}.losses.csv") if registry.method(Variant.parse(v).method).trains else None)
        evaluate_stage.evaluate_fp(cfg, arch=arch_name, model=str(fp), inputs=inputs, features=feats, real_stats=str(d / "real.npz"),
                                   metrics=str(d / "fp.json"), stats=str(d / "fp_stats.npz"), samples=str(d / "fp.png"))
        for v in variants:
            evaluate_stage.evaluate(cfg, arch=arch_name, variant=v, model=str(d / f"{v}.pt"), inputs=inputs, features=feats,
                                    real_stats=str(d / "real.npz"), fp_stats=str(d / "fp_stats.npz"), metrics=str(d / f"{v}.json"),
                                    samples=str(d / f"{v}.png"))
        sweep_stage.run_sweep(cfg, arch=arch_name, fp=str(fp), distill=str(d / "distill.pt"), data=str(data), features=feats,
                              csv=str(d / "sweep.csv"), best=str(d / "best.json"))
        sensitivity_stage.run_sensitivity(cfg, arch=arch_name, fp=str(fp), distill=str(d / "distill.pt"), data=str(data), features=feats,
                                          csv=str(d / "sensitivity.csv"), quantiles=str(d / "best.json"))
        samples.sample_figure(cfg, arch=arch_name, models=[str(d / f"{v}.pt") for v in variants],
                              metrics=[str(d / f"{v}.json") for v in ["fp", *variants]], fp=str(fp), inputs=inputs, out=str(d / "figure.png"))
        return d

    ref_dir = run(CPU)
    with check_device() as mode:
        got_dir = run(DEVICE)
        assert_no_network_on_host(mode)
    for f in sorted(ref_dir.iterdir()):
        g = got_dir / f.name
        if f.suffix == ".pt":
            ref, got = torch_load(f), torch_load(g)
            assert all(t.device == CPU for t in _leaves(got) if torch.is_tensor(t))
            for r in (ref, got):
                r.get("info", {}).pop("seconds", None), r.get("info", {}).pop("train_seconds", None)
            if "info" in ref:  # the job records where it computed
                assert (ref["info"].pop("environment")["device"], got["info"].pop("environment")["device"]) == ("cpu", str(DEVICE)), f.name
            assert_same(ref, got, f.name)
        elif f.suffix == ".json":
            ref, got = (json.loads(p.read_text()) for p in (f, g))
            for r in (ref, got):
                for k in ("generate_seconds", "seconds", "train_seconds"):
                    r.pop(k, None)
            if f.name != "fp_stats.json":  # every JSON a computing job writes says where it computed
                assert (ref.pop("environment")["device"], got.pop("environment")["device"]) == ("cpu", str(DEVICE)), f.name
            assert ref == got, f.name
        elif f.suffix == ".npz":
            with np.load(f) as a, np.load(g) as b:
                assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a), f.name
        else:  # csv, png
            assert f.read_bytes() == g.read_bytes(), f.name


# ------------------------------------------------------------------------------------ observers
@pytest.mark.parametrize("make", [
    lambda: MinMaxObserver(per_sample=True), lambda: MinMaxObserver(channels=4, axis=1),
    lambda: QuantileObserver(0.99, 0.01, per_sample=True), lambda: QuantileObserver(0.99, 0.01, channels=4, axis=1),
], ids=["minmax", "minmax-channel", "quantile", "quantile-channel"])
def test_observers_update_on_the_device_without_host_reads(make, check_device):
    xs = [torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    ref = make()
    for x in xs:
        ref.update(x)
    with check_device() as mode:
        obs = make().to(DEVICE)
        q = FakeQuantizer(8, symmetric=False, observer=obs, axis=obs.axis if obs.channels else None).to(DEVICE)
        for x in xs[:2]:
            obs.update(to_device(x, DEVICE))
        q.freeze()
        q.tracking = True  # MA-QAT: update and re-derive the step size every forward
        q(to_device(xs[2], DEVICE))
        assert mode.syncs() == [], mode.syncs()
        got = to_cpu({"lo": obs.lo, "hi": obs.hi, "count": obs.count})
    assert_same({"lo": ref.lo, "hi": ref.hi, "count": ref.count}, got)


def test_observer_count_is_read_once_after_loading_a_state(check_device):
    obs = QuantileObserver(0.99, 0.01, per_sample=True)
    obs.update(torch.randn(2, 8))
    state = obs.state_dict()
    with check_device() as mode:
        other = QuantileObserver(0.99, 0.01, per_sample=True).to(DEVICE)
        other.load_state_dict(state)
        for _ in range(3):
            other.update(torch.randn(2, 8).to(DEVICE))
        assert len(mode.syncs()) == 1
        assert int(other.count) == 8


# ------------------------------------------------------------------------------------ the checking device itself
def test_the_checking_device_catches_a_tensor_left_on_the_cpu(check_device):
    conv = torch.nn.Conv2d(3, 4, 3)
    with check_device():
        conv.to(DEVICE)
        with pytest.raises(DevicePlacementError, match=r"aten\.convolution.*cpu \(1, 3, 8, 8\)"):
            conv(torch.zeros(1, 3, 8, 8))  # conv2d with a meta input and a CPU weight does not raise on plain meta
        with pytest.raises(DevicePlacementError, match=r"aten\.mul\.Tensor.*meta \(checked device\) \(3,\), cpu \(3,\)"):
            torch.ones(3, device=DEVICE) * torch.ones(3)
        with pytest.raises(DevicePlacementError, match="generator"):
            torch.randn(3, device=DEVICE, generator=torch.Generator())
        with pytest.raises(TypeError, match="numpy"):
            torch.ones(3, device=DEVICE).numpy()
        assert float((torch.ones(3, device=DEVICE) * torch.tensor(2.0)).sum()) == 6.0  # a CPU scalar in a pointwise op, as on CUDA
        # the fused fake-quant ops have no Meta kernels; here they compute
        x = torch.tensor([0.26, -1.0]).to(DEVICE)
        assert torch.fake_quantize_per_tensor_affine(x, 0.1, 10, 0, 255).tolist() == pytest.approx([0.3, -1.0])


# ------------------------------------------------------------------------------------ the policy
def test_runtime_device_setting(monkeypatch):
    assert resolve_device({"runtime": {"device": "cpu"}}) == CPU
    assert resolve_device({}) == resolve_device("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(RuntimeError, match=rf"runtime\.device = '{spec}'.*CUDA is not available"):
            resolve_device({"runtime": {"device": spec}})
    with pytest.raises(ValueError, match=r"runtime\.device = 'gpu'"):
        resolve_device("gpu")
    base = qcfg.load([ROOT / "params.yaml"])
    assert base["runtime"]["device"] == "auto"
    for ok in ("auto", "cpu", "cuda", "cuda:3"):
        qcfg.validate({**base, "runtime": {**base["runtime"], "device": ok}})
    with pytest.raises(qcfg.ConfigError, match=r"runtime\.device"):
        qcfg.validate({**base, "runtime": {**base["runtime"], "device": "cuda0"}})


def test_runtime_settings_are_no_params_of_any_job():
    """Changing runtime.device reruns nothing: no rule or method reads the `runtime` section."""
    from workflow_src.workflow.stages import STAGES, param_keys

    cfg = qcfg.load([ROOT / "params.yaml"])
    wildcards = {"arch": "stylegan", "variant": "lsq-qat-tensor-w4a8", "dataset": "digits", "split": "test"}
    keys = [k for rule in STAGES for k in param_keys(cfg, rule, wildcards)]
    keys += [k for m in registry.methods().values() for k in m.params_keys(cfg, "stylegan")]
    assert keys and not [k for k in keys if k.startswith("runtime")]


def test_describe_runtime_records_device_versions_and_numerics_settings():
    info = describe_runtime(CPU)
    assert info["device"] == "cpu" and info["gpu_name"] is None and info["torch_version"] == torch.__version__
    assert info["cuda_version"] == torch.version.cuda
    assert info["matmul_allow_tf32"] == torch.backends.cuda.matmul.allow_tf32
    assert info["cudnn_allow_tf32"] == torch.backends.cudnn.allow_tf32
    assert info["cudnn_benchmark"] == torch.backends.cudnn.benchmark
    assert info["cudnn_deterministic"] == torch.backends.cudnn.deterministic
    json.dumps(info)  # goes into each job's JSON as it is


def test_rng_state_round_trip_on_the_cpu():
    torch.manual_seed(0)
    saved = rng_state(CPU)
    assert set(saved) == {"rng"}  # the CUDA states only when computing on CUDA
    a = torch.randn(3)
    restore_rng(saved, CPU)
    assert torch.equal(torch.randn(3), a)


def test_results_are_saved_as_cpu_tensors(tmp_path, check_device):
    lin = torch.nn.Linear(2, 2)
    ref = lin.state_dict()
    with check_device():
        sd = lin.to(DEVICE).state_dict()
        torch_save({"state_dict": sd, "rows": [torch.ones(2, device=DEVICE)]}, tmp_path / "x.pt")
        rows = rows_to_host([{"step": 0, "loss": torch.tensor(0.5).to(DEVICE)}, {"step": 1, "loss": 0.25}])
    saved = torch_load(tmp_path / "x.pt")
    assert_same(dict(ref), dict(saved["state_dict"]))
    assert saved["state_dict"]._metadata == ref._metadata  # module versions survive
    assert rows == [{"step": 0, "loss": 0.5}, {"step": 1, "loss": 0.25}]
    assert map_tensors(lambda t: t * 2, {"a": [torch.ones(1)]})["a"][0].item() == 2.0
