"""Results do not depend on the thread count (issue 16.8): the stages that train or compute, run with
1 and with 2 intra-op threads (Snakemake's ``{threads}``), write bit-identical files; each job's
record names the thread count it ran with (``environment.threads``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workflow_src import config as qcfg
from workflow_src.datasets import prepared
from workflow_src.utils import torch_load, torch_save
from workflow_src.workflow import distill as distill_stage
from workflow_src.workflow import evaluate as evaluate_stage
from workflow_src.workflow import networks
from workflow_src.workflow import quantize as quantize_stage
from workflow_src.workflow import data as data_stage
from workflow_src.workflow.artifacts import make_arch
from workflow_src.workflow.training import _state_dicts

ROOT = Path(__file__).resolve().parents[1]
ARCH = "sagan"
VARIANTS = ["ptq-quantile-tensor-w4a8", "lsq-qat-tensor-w4a8"]


def _leaves(obj):
    if isinstance(obj, dict):
        for k in sorted(obj):
            yield from ((f"{k}.{p}", v) for p, v in _leaves(obj[k]))
    elif isinstance(obj, (list, tuple)):
        for i, x in enumerate(obj):
            yield from ((f"{i}.{p}", v) for p, v in _leaves(x))
    else:
        yield "", obj


def test_results_are_the_same_with_one_and_two_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("QGAN_TRACKING", "off")
    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    cfg["runtime"]["device"] = "cpu"
    cfg["archs"][ARCH]["quantiles"] = {"activation": {"upper": 0.999, "lower": 0.001}, "weight": {"upper": 0.9999, "lower": 0.0001}}
    cfg["qat"].update(epochs=2, ma_epochs=1)
    cfg["features"]["tinycnn"]["steps"] = cfg["perceptual"]["tinyvgg"]["steps"] = 10
    cfg["perceptual"]["tinyvgg"]["refuse_at_chance"] = False  # 10 steps: about thread counts, not quality
    cfg["distill"].update(size=32, batch_size=16)
    cfg["calibration"]["images"] = 32
    cfg["eval"].update(n_samples=64, batch_size=32)
    data = tmp_path / "digits"
    prepared.prepare("digits", cfg["datasets"]["digits"], data)
    torch.manual_seed(0)
    fp = tmp_path / "fp.pt"
    torch_save({"arch": ARCH, "steps": 0, "state": _state_dicts(make_arch(cfg, ARCH).init_state(torch.device("cpu")))}, fp)
    inputs = str(tmp_path / "inputs.pt")
    distill_stage.eval_inputs(cfg, arch=ARCH, data=str(data), out=inputs)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            d = tmp_path / f"threads{threads}"
            d.mkdir()
            networks.train_features(cfg, data=[str(data)], out=str(d / "features.pt"))  # training: backward passes
            networks.train_perceptual(cfg, data=[str(data)], out=str(d / "perceptual.pt"))
            data_stage.real_stats(cfg, dataset="digits", split="test", data=str(data), features=str(d / "features.pt"), out=str(d / "real.npz"))
            distill_stage.distill(cfg, arch=ARCH, data=str(data), fp=str(fp), out=str(d / "distill.pt"))
            for v in VARIANTS:
                quantize_stage.quantize(cfg, arch=ARCH, variant=v, fp=str(fp), distill=str(d / "distill.pt"), model=str(d / f"{v}.pt"),
                                        info=str(d / f"{v}.info.json"), perceptual=str(d / "perceptual.pt"),
                                        losses=str(d / f"{v}.losses.csv") if "qat" in v else None)
            evaluate_stage.evaluate_fp(cfg, arch=ARCH, model=str(fp), inputs=inputs, features=str(d / "features.pt"),
                                       real_stats=str(d / "real.npz"), metrics=str(d / "fp.json"), stats=str(d / "fp_stats.npz"),
                                       samples=str(d / "fp.png"))
            evaluate_stage.evaluate(cfg, arch=ARCH, variant=VARIANTS[1], model=str(d / f"{VARIANTS[1]}.pt"), inputs=inputs,
                                    features=str(d / "features.pt"), real_stats=str(d / "real.npz"), fp_stats=str(d / "fp_stats.npz"),
                                    metrics=str(d / "q.json"), samples=str(d / "q.png"))
    finally:
        torch.set_num_threads(before)
    one, two = tmp_path / "threads1", tmp_path / "threads2"
    for f in sorted(one.iterdir()):
        g = two / f.name
        if f.suffix == ".pt":
            a, b = (dict(_leaves(torch_load(p))) for p in (f, g))
            assert a.keys() == b.keys(), f.name
            for k in a:
                if torch.is_tensor(a[k]):
                    assert torch.equal(a[k], b[k]), (f.name, k)
                elif not any(t in k for t in ("seconds", "environment")):
                    assert a[k] == b[k], (f.name, k)
        elif f.suffix == ".json":
            a, b = (json.loads(p.read_text()) for p in (f, g))
            if "environment" in a:  # each record names its thread count
                assert (a.pop("environment")["threads"], b.pop("environment")["threads"]) == (1, 2), f.name
            for r in (a, b):
                for k in ("seconds", "generate_seconds", "train_seconds"):
                    r.pop(k, None)
            assert a == b, f.name
        else:  # npz, csv, png
            assert f.read_bytes() == g.read_bytes(), f.name
