"""The quantile sweep (Figure 1) and `quantiles: sweep`."""
import json
from pathlib import Path

import pytest
import yaml

from workflow_src import config as qcfg
from workflow_src.config import Variant
from workflow_src.workflow import dvc_yaml, stages
from workflow_src.workflow import sweep as sweep_stage
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


PAIR_8 = {"activation": {"upper": 1.0, "lower": 0.0}, "weight": {"upper": 0.9999, "lower": 0.0001}}
PAIR_4 = {"activation": {"upper": 0.99, "lower": 0.01}, "weight": {"upper": 1.0, "lower": 0.0}}
QAT_PAIR = {"activation": {"upper": 0.999, "lower": 0.001}, "weight": {"upper": 0.9999, "lower": 0.0001}}


def test_arch_params_take_the_sweeps_pair_of_the_variants_width(tmp_path):
    cfg = qcfg.load([ROOT / "params.yaml"])
    cfg["archs"]["sagan"]["quantiles"] = "sweep"
    cfg["archs"]["stylegan"]["quantiles"] = {"activation": {"upper": 0.999, "lower": 0.001}, "weight": {"upper": 1.0, "lower": 0.0}}
    qcfg.validate(cfg)
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"w_bits": {"8": {**PAIR_8, "qfid": 0.1}, "4": {**PAIR_4, "qfid": 0.2}}, "selected_on": "validation"}))
    w8, w4 = (Variant("ptq-quantile", False, b, 8) for b in (8, 4))
    got = arch_params(cfg, "sagan", str(best), w4)
    assert got["quantiles"] == PAIR_4 and got["quantiles_from"].startswith("sweep w4")
    assert arch_params(cfg, "sagan", str(best), w8)["quantiles"] == PAIR_8
    with pytest.raises(ValueError, match=r"w2"):
        arch_params(cfg, "sagan", str(best), Variant("ptq-quantile", False, 2, 8))
    with pytest.raises(ValueError, match="sweep"):
        arch_params(cfg, "sagan", None, w4)
    best.write_text(json.dumps(PAIR_4))  # one pair for every width: the old format, chosen on the evaluation inputs
    with pytest.raises(ValueError, match="rerun quantile_sweep"):
        arch_params(cfg, "sagan", str(best), w4)
    got = arch_params(cfg, "stylegan", None, w4)
    assert got["quantiles"] == cfg["archs"]["stylegan"]["quantiles"] and got["quantiles_from"] == "archs.stylegan.quantiles"


def test_qat_starts_from_its_own_pair_when_the_params_set_one(tmp_path):
    """The paper's MA-QAT pairs differ from its PTQ pairs (section 4.2): ``qat.quantiles`` (or
    ``archs.<arch>.qat.quantiles``) sets QAT's, and such a QAT job does not wait for the sweep."""
    cfg = qcfg.load([ROOT / "params.yaml"])
    cfg["archs"]["sagan"]["qat"] = {**cfg["archs"]["sagan"]["qat"], "quantiles": QAT_PAIR}
    qcfg.validate(cfg)
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"w_bits": {"4": PAIR_4, "8": PAIR_8}}))
    for method in ("ma-qat", "lsq-qat"):
        got = arch_params(cfg, "sagan", str(best), Variant(method, True, 4, 8))
        assert got["quantiles"] == QAT_PAIR and got["quantiles_from"] == "archs.sagan.qat.quantiles"
        assert stages.sweep_best(cfg, {"arch": "sagan", "variant": f"{method}-channel-w4a8"}) == []
        # other archs keep the PTQ pair (qat.quantiles: ptq)
        assert arch_params(cfg, "stylegan", str(best), Variant(method, True, 4, 8))["quantiles"] == PAIR_4
    assert arch_params(cfg, "sagan", str(best), Variant("ar-brecq", True, 4, 8))["quantiles"] == PAIR_4
    assert stages.sweep_best(cfg, {"seed": "0", "arch": "sagan", "variant": "ar-brecq-channel-w4a8"}) == "sweeps/s0/sagan/best.json"
    cfg["qat"]["quantiles"] = QAT_PAIR  # top level: every arch
    assert arch_params(cfg, "stylegan", str(best), Variant("ma-qat", True, 4, 8))["quantiles_from"] == "qat.quantiles"
    cfg["archs"]["sagan"]["qat"]["quantiles"] = {"activation": {"upper": 0.9, "lower": 0.95}, "weight": QAT_PAIR["weight"]}
    with pytest.raises(qcfg.ConfigError, match=r"archs\.sagan\.qat\.quantiles\.activation"):
        qcfg.validate(cfg)


def test_the_sweep_runs_at_every_width_where_a_method_reads_the_pair():
    tiny = qcfg.load([ROOT / "params.yaml"])
    assert sweep_stage.sweep_widths(tiny) == [8, 6, 4]  # 8 and 4: the matrix; 6: a width mixed precision gives layers
    micro = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    assert sweep_stage.sweep_widths(micro) == [8, 4]  # mixed precision's widths there (and w8a6 quantile PTQ)
    micro["matrix"]["methods"] = [m for m in micro["matrix"]["methods"] if m != "mp-quantile"]
    assert sweep_stage.sweep_widths(micro) == [8, 4]  # the include's w8a6 reads the w8 pair
    micro["matrix"]["include"] = []
    assert sweep_stage.sweep_widths(micro) == [4]  # w8 is min-max only there, which reads no pair
    micro["sensitivity"]["w_bits"] = 6  # the layer sensitivity quantizes with the swept method: its width is swept too
    assert sweep_stage.sweep_widths(micro) == [6, 4]
    tiny["sweep"]["w_bits"] = [4]  # the old key: widths come from the matrix now
    with pytest.raises(qcfg.ConfigError, match="w_bits"):
        qcfg.validate(tiny)


def test_the_best_pair_is_chosen_per_width():
    def row(a, w, bits, qfid):
        return {"act_upper": a[0], "act_lower": a[1], "weight_upper": w[0], "weight_lower": w[1], "w_bits": bits, "qfid": qfid}
    rows = [row((1.0, 0.0), (1.0, 0.0), 8, 0.01), row((0.99, 0.01), (1.0, 0.0), 8, 0.03),
            row((1.0, 0.0), (1.0, 0.0), 4, 0.9), row((0.99, 0.01), (1.0, 0.0), 4, 0.2)]
    best = sweep_stage.choose(rows)
    assert best["8"]["activation"] == {"upper": 1.0, "lower": 0.0} and best["8"]["qfid"] == 0.01
    assert best["4"]["activation"] == {"upper": 0.99, "lower": 0.01} and best["4"]["qfid"] == 0.2


def test_the_sweep_reads_no_evaluation_input_or_statistics():
    """Its pair is chosen on validation inputs; the evaluation inputs and the FP and real
    statistics that the report scores are not among its inputs."""
    jobs = {j["name"]: j for j in dvc_yaml.snakemake_jobs(ROOT, [])}
    for arch in ("stylegan", "sagan", "cyclegan"):
        inputs = jobs[f"quantile_sweep.s0.{arch}"]["inputs"]
        assert not [f for f in inputs if f.startswith(("eval/", "stats/"))], inputs
        assert f"data/{'h2z-synthetic' if arch == 'cyclegan' else 'digits'}" in inputs


def test_quantile_readers_wait_for_the_sweep_when_asked(tmp_path):
    override = tmp_path / "sweep.yaml"
    pairs = {"activation": {"upper": 0.999, "lower": 0.001}, "weight": {"upper": 1.0, "lower": 0.0}}
    override.write_text(yaml.safe_dump({"archs": {"sagan": {"quantiles": "sweep"}, "stylegan": {"quantiles": pairs}}}))
    jobs = {j["name"]: j for j in dvc_yaml.snakemake_jobs(ROOT, [str(override)])}
    assert "sweeps/s0/sagan/best.json" in jobs["quantize.s0.sagan.ptq-quantile-tensor-w4a8"]["inputs"]
    assert "sweeps/s0/sagan/best.json" in jobs["quantize.s0.sagan.ar-brecq-tensor-w4a8"]["inputs"]
    assert "sweeps/s0/sagan/best.json" not in jobs["quantize.s0.sagan.ptq-minmax-tensor-w4a8"]["inputs"]
    assert "sweeps/s0/stylegan/best.json" not in jobs["quantize.s0.stylegan.ptq-quantile-tensor-w4a8"]["inputs"]
    assert {"quantile_sweep.s0.sagan", "quantile_sweep.s0.stylegan", "quantile_sweep.s0.cyclegan", "fig1"} <= set(jobs)
