"""The quantile sweep (Figure 1) and `quantiles: sweep`."""
import json
from pathlib import Path

import pytest
import yaml

from workflow_src import config as qcfg
from workflow_src.workflow import dvc_yaml
from workflow_src.workflow.artifacts import arch_params

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_pairs_are_validated():
    cfg = qcfg.load([ROOT / "params.yaml"])
    cfg["sweep"]["activation"].append([0.5, 0.6])
    with pytest.raises(qcfg.ConfigError, match=r"sweep\.activation\.4"):
        qcfg.validate(cfg)
    cfg = qcfg.load([ROOT / "params.yaml"])
    cfg["archs"]["sagan"]["quantiles"] = "best"
    with pytest.raises(qcfg.ConfigError, match="archs.sagan.quantiles"):
        qcfg.validate(cfg)


def test_arch_params_take_the_sweeps_best_pair(tmp_path):
    cfg = qcfg.load([ROOT / "params.yaml"])
    cfg["archs"]["sagan"]["quantiles"] = "sweep"
    cfg["archs"]["stylegan"]["quantiles"] = {"activation": {"upper": 0.999, "lower": 0.001}, "weight": {"upper": 1.0, "lower": 0.0}}
    qcfg.validate(cfg)
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"activation": {"upper": 0.99, "lower": 0.01}, "weight": {"upper": 1.0, "lower": 0.0}}))
    assert arch_params(cfg, "sagan", str(best))["quantiles"]["activation"] == {"upper": 0.99, "lower": 0.01}
    with pytest.raises(ValueError, match="sweep"):
        arch_params(cfg, "sagan", None)
    assert arch_params(cfg, "stylegan", None)["quantiles"] == cfg["archs"]["stylegan"]["quantiles"]


def test_quantile_readers_wait_for_the_sweep_when_asked(tmp_path):
    override = tmp_path / "sweep.yaml"
    pairs = {"activation": {"upper": 0.999, "lower": 0.001}, "weight": {"upper": 1.0, "lower": 0.0}}
    override.write_text(yaml.safe_dump({"archs": {"sagan": {"quantiles": "sweep"}, "stylegan": {"quantiles": pairs}}}))
    jobs = {j["name"]: j for j in dvc_yaml.snakemake_jobs(ROOT, [str(override)])}
    assert "sweeps/sagan/best.json" in jobs["quantize.sagan.ptq-quantile-tensor-w4a8"]["inputs"]
    assert "sweeps/sagan/best.json" in jobs["quantize.sagan.ar-brecq-tensor-w4a8"]["inputs"]
    assert "sweeps/sagan/best.json" not in jobs["quantize.sagan.ptq-minmax-tensor-w4a8"]["inputs"]
    assert "sweeps/stylegan/best.json" not in jobs["quantize.stylegan.ptq-quantile-tensor-w4a8"]["inputs"]
    assert {"quantile_sweep.sagan", "quantile_sweep.stylegan", "quantile_sweep.cyclegan", "fig1"} <= set(jobs)
