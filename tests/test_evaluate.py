"""Evaluation and the quantile sweep at scale (issue 15): images are generated and scored one
segment at a time (``runtime.eval_segment``), so memory holds one segment's images, and a job
killed at its wall time resumes where it stopped.  The references are the same stages run without
a kill, or in one segment: the numbers must be equal, not close."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from workflow_src import config as qcfg
from workflow_src.datasets import prepared
from workflow_src.utils import torch_save
from workflow_src.workflow import data as data_stage
from workflow_src.workflow import distill as distill_stage
from workflow_src.workflow import evaluate as evaluate_stage
from workflow_src.workflow import networks
from workflow_src.workflow import sweep as sweep_stage
from workflow_src.workflow.artifacts import make_arch
from workflow_src.workflow.training import _state_dicts

ROOT = Path(__file__).resolve().parents[1]
ARCH = "stylegan"


class Killed(Exception):
    """The job's wall time ran out."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A micro StyleGAN (random FP weights), its eval inputs (with per-sample noise seeds), the
    distillation set, a tiny feature network and the real statistics."""
    env = pytest.MonkeyPatch()  # undone after this module: later modules test tracking
    env.setenv("QGAN_TRACKING", "off")
    tmp = tmp_path_factory.mktemp("eval")
    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    cfg["archs"][ARCH].update(resolution=8, model={"latent_dim": 16, "n_mlp": 2, "channels": [16, 8], "d_channels": [16, 8]})
    cfg["datasets"]["digits"]["resolution"] = 8
    cfg["features"]["tinycnn"].update(steps=2, batch_size=8, width=8, dim=16, input_size=16)
    cfg["eval"].update(n_samples=40, batch_size=8, grid=4, bootstrap=3)
    cfg["distill"].update(size=16, batch_size=8)
    cfg["calibration"]["images"] = 8
    cfg["sweep"].update(activation=[[1.0, 0.0], [0.999, 0.001]], weight=[[1.0, 0.0], [0.99, 0.01]], validation_samples=40)
    cfg["runtime"].update(device="cpu", eval_segment=16)  # 40 samples: segments of 16, 16 and 8
    data = tmp / "digits"
    prepared.prepare("digits", cfg["datasets"]["digits"], data)
    torch.manual_seed(0)
    fp = tmp / "fp.pt"
    torch_save({"arch": ARCH, "steps": 0, "state": _state_dicts(make_arch(cfg, ARCH).init_state(torch.device("cpu")))}, fp)
    files = {"data": str(data), "fp": str(fp), "inputs": str(tmp / "inputs.pt"), "distill": str(tmp / "distill.pt"),
             "features": str(tmp / "features.pt"), "real": str(tmp / "real.npz")}
    distill_stage.eval_inputs(cfg, arch=ARCH, data=files["data"], out=files["inputs"])
    distill_stage.distill(cfg, arch=ARCH, data=files["data"], fp=files["fp"], out=files["distill"])
    networks.train_features(cfg, data=[files["data"]], out=files["features"])
    data_stage.real_stats(cfg, dataset="digits", split="test", data=files["data"], features=files["features"], out=files["real"])
    yield cfg, files
    env.undo()


def _evaluate_fp(cfg, files, d: Path):
    d.mkdir(exist_ok=True)
    evaluate_stage.evaluate_fp(cfg, arch=ARCH, model=files["fp"], inputs=files["inputs"], features=files["features"],
                               real_stats=files["real"], metrics=str(d / "fp.json"), stats=str(d / "fp_stats.npz"),
                               samples=str(d / "fp.png"))
    metrics = json.loads((d / "fp.json").read_text())
    for k in ("generate_seconds", "environment"):
        metrics.pop(k)
    with np.load(d / "fp_stats.npz") as z:
        stats = {k: z[k] for k in z}
    return metrics, stats, (d / "fp.png").read_bytes()


def _count_segments(monkeypatch, module, kill_after=None):
    """Count the segments ``module`` generates; with ``kill_after``, the job dies when it starts the
    next one."""
    from workflow_src.workflow import artifacts

    calls = []
    real = artifacts.segment_features

    def counted(cfg, arch, model, inputs, extras, fs, sl, *args, **kwargs):
        if kill_after is not None and len(calls) == kill_after:
            raise Killed
        calls.append((sl.start, sl.stop))
        return real(cfg, arch, model, inputs, extras, fs, sl, *args, **kwargs)

    monkeypatch.setattr(module, "segment_features", counted)
    return calls


def test_evaluation_is_the_same_in_any_number_of_segments(world, tmp_path, monkeypatch):
    cfg, files = world
    calls = _count_segments(monkeypatch, evaluate_stage)
    segmented = _evaluate_fp(cfg, files, tmp_path / "segmented")
    assert calls == [(0, 16), (16, 32), (32, 40)]
    whole_cfg = copy.deepcopy(cfg)
    whole_cfg["runtime"]["eval_segment"] = 4096
    calls.clear()
    whole = _evaluate_fp(whole_cfg, files, tmp_path / "whole")
    assert calls == [(0, 40)]
    assert segmented[0] == whole[0]
    assert all(np.array_equal(segmented[1][k], whole[1][k]) for k in whole[1])
    assert segmented[2] == whole[2]  # the sample grid


def test_evaluation_killed_mid_way_resumes_at_the_next_segment(world, tmp_path, monkeypatch):
    cfg, files = world
    reference = _evaluate_fp(cfg, files, tmp_path / "reference")
    d = tmp_path / "killed"
    _count_segments(monkeypatch, evaluate_stage, kill_after=2)
    with pytest.raises(Killed):
        _evaluate_fp(cfg, files, d)
    ckpt = d / "fp.json.ckpt.pt"
    assert ckpt.exists() and not (d / "fp.json").exists()
    calls = _count_segments(monkeypatch, evaluate_stage)
    resumed = _evaluate_fp(cfg, files, d)
    assert calls == [(32, 40)]  # only what the killed job had not scored
    assert resumed[0] == reference[0] and resumed[2] == reference[2]
    assert all(np.array_equal(resumed[1][k], reference[1][k]) for k in reference[1])
    assert not ckpt.exists()


def test_evaluation_does_not_resume_other_work(world, tmp_path, monkeypatch, capsys):
    """A checkpoint of another model (or other inputs, params, code) is not resumed."""
    cfg, files = world
    d = tmp_path / "other"
    _count_segments(monkeypatch, evaluate_stage, kill_after=1)
    with pytest.raises(Killed):
        _evaluate_fp(cfg, files, d)
    other = copy.deepcopy(cfg)
    other["eval"]["grid"] = 2  # a params key evaluate reads
    calls = _count_segments(monkeypatch, evaluate_stage)
    capsys.readouterr()
    _evaluate_fp(other, files, d)
    assert "not resuming" in capsys.readouterr().out and calls[0] == (0, 16)


def _sweep(cfg, files, d: Path):
    d.mkdir(exist_ok=True)
    sweep_stage.run_sweep(cfg, arch=ARCH, fp=files["fp"], distill=files["distill"], data=files["data"], features=files["features"],
                          csv=str(d / "sweep.csv"), best=str(d / "best.json"))
    best = json.loads((d / "best.json").read_text())
    best.pop("environment")
    return (d / "sweep.csv").read_text(), best


def test_sweep_killed_mid_way_resumes_at_the_next_pair(world, tmp_path, monkeypatch):
    cfg, files = world
    cfg = copy.deepcopy(cfg)  # one weight width (w4): without mixed precision's widths and the w8a6 include
    cfg["matrix"].update(methods=[m for m in cfg["matrix"]["methods"] if m != "mp-quantile"], include=[])
    reference = _sweep(cfg, files, tmp_path / "reference")
    assert len(reference[0].splitlines()) == 1 + 4  # header + 2 x 2 pairs
    d = tmp_path / "killed"
    # 40 validation samples, segments of 16: 3 segments for the FP reference, then 3 per pair
    _count_segments(monkeypatch, distill_stage, kill_after=3 + 2 * 3 + 1)  # during the third pair (the sweep scores through distill.ValidationQFID)
    with pytest.raises(Killed):
        _sweep(cfg, files, d)
    assert (d / "sweep.csv.ckpt.pt").exists() and not (d / "sweep.csv").exists()
    calls = _count_segments(monkeypatch, distill_stage)
    resumed = _sweep(cfg, files, d)
    assert len(calls) == 3 + 2 * 3  # the FP reference again (not checkpointed), then the third and fourth pairs only
    assert resumed == reference
    assert not (d / "sweep.csv.ckpt.pt").exists()


def test_noise_floor_is_the_fp_generator_against_itself_and_real_split_against_split(world, tmp_path):
    """qfid_floor: pytorch-fid's distance between the FP generator's features on the evaluation
    latents and on latents drawn, as documented, from seed + 606; fid_floor: pytorch-fid's distance
    between the real test and train statistics."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    from workflow_src.workflow.artifacts import feature_space
    from workflow_src.workflow.training import load_generator

    cfg, files = world
    d = tmp_path / "floor"
    _evaluate_fp(cfg, files, d)
    train = str(tmp_path / "real-train.npz")
    data_stage.real_stats(cfg, dataset="digits", split="train", data=files["data"], features=files["features"], out=train)
    out = d / "noise_floor.json"
    evaluate_stage.noise_floor(cfg, arch=ARCH, model=files["fp"], fp_stats=str(d / "fp_stats.npz"), data=files["data"],
                               features=files["features"], real_test=files["real"], real_train=train, out=str(out))
    floor = json.loads(out.read_text())

    def stats(path):
        with np.load(path) as z:
            return z["mu"], z["sigma"]
    assert floor["fid_floor"] == pytest.approx(calculate_frechet_distance(*stats(files["real"]), *stats(train)), rel=1e-6)
    n, dim = cfg["eval"]["n_samples"], cfg["archs"][ARCH]["model"]["latent_dim"]
    g = torch.Generator().manual_seed(cfg["seed"] + 606)
    z = torch.randn(n, dim, generator=g)
    a = make_arch(cfg, ARCH)
    extras = a.sample_extras(n, g)
    images = a.generate(load_generator(cfg, ARCH, files["fp"], torch.device("cpu")), z, n, extras)
    feats = feature_space(cfg, files["features"]).extract([images], total=1).astype(np.float64)
    want = calculate_frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), *stats(d / "fp_stats.npz"))
    assert floor["qfid_floor"] == pytest.approx(want, rel=1e-4) and floor["qfid_floor"] > 1e-6


def test_real_statistics_of_a_sample_of_every_split(world, tmp_path):
    """``fid_split: all`` + ``fid_images``: the paper's FID against 50000 images sampled from the
    whole of FFHQ/CelebA (appendix A.1), here 100 of the digits' train + test images, drawn as
    documented (seed + 707, without replacement), against numpy's mean and covariance of their
    features."""
    from workflow_src.workflow.artifacts import feature_space

    cfg, files = world
    cfg = copy.deepcopy(cfg)
    cfg["datasets"]["digits"].update(fid_split="all", fid_images=100)
    tiny = qcfg.load([ROOT / "params.yaml"])
    tiny["datasets"]["digits"].update(fid_split="all", fid_images=100)
    qcfg.validate(tiny)  # the keys are in the schema
    tiny["datasets"]["digits"]["fid_split"] = "everything"
    with pytest.raises(qcfg.ConfigError, match="fid_split"):
        qcfg.validate(tiny)
    out = tmp_path / "all.npz"
    data_stage.real_stats(cfg, dataset="digits", split="all", data=files["data"], features=files["features"], out=str(out))
    images = np.concatenate([prepared.load_split(files["data"], s)[:] for s in ("train", "test")])
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg["seed"] + 707))[:100].sort().values.numpy()
    feats = feature_space(cfg, files["features"]).extract([prepared.to_tensor(images[idx])], total=1).astype(np.float64)
    with np.load(out) as z:
        assert int(z["n"]) == 100
        np.testing.assert_allclose(z["mu"], feats.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z["sigma"], np.cov(feats, rowvar=False), rtol=1e-4, atol=1e-7)
    # other splits (the noise floor's) are not sampled
    data_stage.real_stats(cfg, dataset="digits", split="test", data=files["data"], features=files["features"], out=str(tmp_path / "t.npz"))
    with np.load(tmp_path / "t.npz") as z:
        assert int(z["n"]) == len(prepared.load_split(files["data"], "test"))


def test_the_paper_profile_scores_fid_as_the_paper_did():
    from workflow_src.workflow import stages

    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "paper.yaml"])
    assert stages.real_statistics(cfg, {"arch": "stylegan"}) == "stats/ffhq-all.npz"
    assert stages.real_statistics(cfg, {"arch": "sagan"}) == "stats/celeba-all.npz"
    assert stages.real_statistics(cfg, {"arch": "cyclegan"}) == "stats/horse2zebra-testB.npz"
    assert cfg["datasets"]["ffhq"]["fid_images"] == cfg["datasets"]["celeba"]["fid_images"] == cfg["eval"]["n_samples"] == 50000
    tiny = qcfg.load([ROOT / "params.yaml"])
    assert stages.real_statistics(tiny, {"arch": "sagan"}) == "stats/digits-test.npz"
