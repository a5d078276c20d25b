"""Params validation: every bad input is rejected with a message naming the key and the value."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_src import config as qcfg
from workflow_src import registry
from workflow_src.workflow.stages import resources_problems

ROOT = Path(__file__).resolve().parents[1]


PAIRS = {"activation": {"upper": 0.999, "lower": 0.001}, "weight": {"upper": 0.9999, "lower": 0.0001}}


@pytest.fixture(scope="module")
def base():
    cfg = qcfg.load_yaml(ROOT / "params.yaml")
    for arch in cfg["archs"].values():  # explicit pairs, so that single quantiles can be broken
        arch["quantiles"] = copy.deepcopy(PAIRS)
    return cfg


def test_shipped_configs_are_valid(base):
    qcfg.validate(base)
    paper = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "paper.yaml"])
    assert paper["profile"] == "paper" and paper["calibration"]["images"] == 500
    assert paper["brecq"]["ar_steps"] == 20000 and paper["qat"]["loss_weights"]["style"] == 3e4
    assert [paper["archs"][a]["resolution"] for a in ("stylegan", "sagan", "cyclegan")] == [128, 64, 256]


def _mutated(base, path, value):
    cfg = copy.deepcopy(base)
    cur = cfg
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return cfg


@pytest.mark.parametrize("path,value,needles", [
    (("matrix", "w_bits"), [8, 9], ["matrix.w_bits.1", "9"]),
    (("matrix", "a_bits"), [1], ["matrix.a_bits.0", "1"]),
    (("matrix", "archs"), ["stylegan", "biggan"], ["matrix.archs.1", "biggan"]),
    (("matrix", "methods"), ["ptq-minmax", "ptq-magic"], ["matrix.methods.1", "ptq-magic"]),
    (("archs", "stylegan", "quantiles", "activation", "upper"), 1.5, ["archs.stylegan.quantiles.activation.upper", "1.5"]),
    (("archs", "sagan", "quantiles", "weight", "lower"), -0.1, ["archs.sagan.quantiles.weight.lower", "-0.1"]),
    (("archs", "stylegan", "train", "steps"), "many", ["archs.stylegan.train.steps", "many"]),
    (("calibration", "momentum"), "fast", ["calibration.momentum", "fast"]),
    (("eval", "n_samples"), 1.5, ["eval.n_samples", "1.5"]),
    (("seeds",), [0, -3], ["seeds.1", "-3"]),
    (("seeds",), [], ["seeds"]),
    (("seeds",), [5, 5], ["seeds", "5"]),
    # cross-key and numeric constraints a schema bound cannot see (issue 16.9)
    (("archs", "sagan", "train", "lr_g"), float("nan"), ["archs.sagan.train.lr_g", "nan", "finite"]),
    (("qat", "lr_weights"), float("inf"), ["qat.lr_weights", "inf", "finite"]),
    (("calibration", "momentum"), float("nan"), ["calibration.momentum", "finite"]),
    (("archs", "stylegan", "train", "betas"), [0.0, 1.0], ["archs.stylegan.train.betas.1", "1.0"]),
    (("brecq", "zeta"), 1.0, ["brecq.zeta", "1.0"]),
    (("brecq", "gamma"), 0.05, ["brecq.gamma", "0.05"]),
    (("datasets", "digits", "resolution"), 32, ["archs.stylegan.resolution", "datasets.digits.resolution", "32"]),
])
def test_schema_errors_name_key_and_value(base, path, value, needles):
    with pytest.raises(qcfg.ConfigError) as exc:
        qcfg.validate(_mutated(base, path, value))
    for needle in needles:
        assert needle in str(exc.value)


def test_unknown_keys_are_named(base):
    cfg = _mutated(base, ("calibration", "imags"), 10)
    with pytest.raises(qcfg.ConfigError, match="'imags'.*'calibration'"):
        qcfg.validate(cfg)
    cfg = copy.deepcopy(base)
    cfg["archs"]["biggan"] = cfg["archs"]["sagan"]
    with pytest.raises(qcfg.ConfigError, match="biggan"):
        qcfg.validate(cfg)


def test_lower_quantile_must_be_below_upper(base):
    cfg = _mutated(base, ("archs", "cyclegan", "quantiles", "activation"), {"upper": 0.9, "lower": 0.9})
    with pytest.raises(qcfg.ConfigError, match=r"archs\.cyclegan\.quantiles\.activation.*0\.9"):
        qcfg.validate(cfg)
    # a method's own pair, top-level and per arch, named once each
    for where in (("qat",), ("archs", "sagan", "qat")):
        cfg = _mutated(base, (*where, "quantiles"), {**PAIRS, "weight": {"upper": 0.5, "lower": 0.6}})
        with pytest.raises(qcfg.ConfigError) as err:
            qcfg.validate(cfg)
        key = ".".join(where) + ".quantiles.weight"
        assert str(err.value).count(f"'{key}'") == 1, str(err.value)


def test_cross_references(base):
    with pytest.raises(qcfg.ConfigError, match="archs.sagan.dataset.*celebahq"):
        qcfg.validate(_mutated(base, ("archs", "sagan", "dataset"), "celebahq"))
    with pytest.raises(qcfg.ConfigError, match="channels"):
        qcfg.validate(_mutated(base, ("archs", "stylegan", "model", "channels"), [8, 8]))
    # the deployable scheme's runtimes are timed against FP32 files that export.runtimes writes, and include onnxruntime
    with pytest.raises(qcfg.ConfigError, match=r"'export\.deployable_runtimes'.*\['inductor-x86'\] not in 'export\.runtimes'"):
        qcfg.validate(_mutated(base, ("export", "deployable_runtimes"), ["onnxruntime", "inductor-x86"]))
    with pytest.raises(qcfg.ConfigError, match="deployable_runtimes"):
        qcfg.validate(_mutated(base, ("export", "deployable_runtimes"), ["inductor-x86"]))


def test_schema_names_what_the_registry_declares(base):
    """The schema's enums and arch entries come from the registry: a method or arch that its file
    declares is accepted, any other name is refused naming the key."""
    schema = qcfg.schema()
    assert schema["$defs"]["method_name"]["enum"] == list(registry.methods())
    assert set(schema["properties"]["archs"]["properties"]) == set(registry.archs())
    for name, a in registry.archs().items():  # each arch's own model keys, and only those
        assert set(schema["properties"]["archs"]["properties"][name]["properties"]["model"]["properties"]) == set(a.model)
    for f in registry.method_files():  # the sections methods own
        assert set(f.sections) <= set(schema["properties"])
    with pytest.raises(qcfg.ConfigError, match=r"'channels'.*'archs\.cyclegan\.model'"):
        qcfg.validate(_mutated(base, ("archs", "cyclegan", "model", "channels"), [8]))


def test_variant_names_round_trip(base):
    vs = qcfg.variants(base)
    # uniform methods at w8/w4 x both granularities, mixed precision at each budget, and the includes (w6a8, w8a6: ptq-quantile)
    n_mixed = sum(m == "mp-quantile" for m in base["matrix"]["methods"])
    assert len(vs) == (len(base["matrix"]["methods"]) - n_mixed) * 2 * 2 + n_mixed * len(base["mixed"]["budgets"]) * 2 + 2 * 2
    assert {v.name for v in vs if v.method == "mp-quantile"} == {f"mp-quantile-{g}-w{b}a8" for g in ("channel", "tensor") for b in base["mixed"]["budgets"]}
    for v in vs:
        assert qcfg.Variant.parse(v.name) == v
    with pytest.raises(qcfg.ConfigError, match="nonsense"):
        qcfg.Variant.parse("nonsense")


def test_exclude_drops_exactly_the_matching_variants(base):
    cfg = copy.deepcopy(base)
    cfg["matrix"].update(methods=["ptq-minmax", "ma-qat"], per_channel=[True, False], w_bits=[8, 4], a_bits=[8])
    cfg["matrix"]["exclude"] = [{"method": "ma-qat", "w_bits": 8}, {"per_channel": True, "w_bits": 4}]
    qcfg.validate(cfg)
    got = {v.name for v in qcfg.variants(cfg)}
    assert got == {"ptq-minmax-channel-w8a8", "ptq-minmax-tensor-w8a8", "ptq-minmax-tensor-w4a8", "ma-qat-tensor-w4a8"}


def test_include_adds_sub_matrices_after_exclude(base):
    cfg = copy.deepcopy(base)
    cfg["matrix"].update(methods=["ptq-minmax", "ptq-quantile"], per_channel=[True, False], w_bits=[8, 4], a_bits=[8])
    cfg["matrix"]["exclude"] = [{"method": "ptq-quantile", "w_bits": 8}]
    cfg["matrix"]["include"] = [{"methods": ["ptq-quantile"], "w_bits": [6], "per_channel": [False]},
                                {"methods": ["ptq-quantile"], "w_bits": [8], "a_bits": [6, 8]}]  # w8a8 comes back: include is after exclude
    qcfg.validate(cfg)
    got = [v.name for v in qcfg.variants(cfg)]
    assert got == ["ptq-minmax-channel-w8a8", "ptq-minmax-channel-w4a8", "ptq-minmax-tensor-w8a8", "ptq-minmax-tensor-w4a8",
                   "ptq-quantile-channel-w4a8", "ptq-quantile-tensor-w4a8", "ptq-quantile-tensor-w6a8",
                   "ptq-quantile-channel-w8a6", "ptq-quantile-channel-w8a8", "ptq-quantile-tensor-w8a6", "ptq-quantile-tensor-w8a8"]
    cfg["matrix"]["methods"] = ["ptq-minmax"]  # the matrix's methods say what runs: their includes go with them
    assert [v.name for v in qcfg.variants(cfg)] == ["ptq-minmax-channel-w8a8", "ptq-minmax-channel-w4a8", "ptq-minmax-tensor-w8a8", "ptq-minmax-tensor-w4a8"]
    for entry, words in [({"methods": ["ptq-minmax"], "w_bits": [8]}, ["matrix.include.0", "adds no variant"]),
                         ({"bits": [6]}, ["matrix.include.0", "bits"])]:
        cfg["matrix"]["include"] = [entry]
        with pytest.raises(qcfg.ConfigError) as e:
            qcfg.validate(cfg)
        assert all(w in str(e.value) for w in words), str(e.value)


def test_mixed_budgets_lie_within_the_widths(base):
    cfg = copy.deepcopy(base)
    cfg["mixed"]["budgets"] = [3, 6]
    with pytest.raises(qcfg.ConfigError, match=r"mixed.budgets.0' = 3: outside the widths"):
        qcfg.validate(cfg)
    del cfg["mixed"]
    with pytest.raises(qcfg.ConfigError, match=r"lists \['mp-quantile'\] but 'mixed.budgets' is not set"):
        qcfg.validate(cfg)


@pytest.mark.parametrize("entry, words", [
    ({"method": "ptq-minmax", "w_bits": 2}, ["matrix.exclude.0", "matches no variant"]),  # a typo is not a silent no-op
    ({"bits": 8}, ["matrix.exclude.0", "bits"]),  # unknown key
    ({}, ["matrix.exclude.0"]),  # an empty entry would drop everything
    ({"method": "ptq-magic"}, ["matrix.exclude.0.method", "ptq-magic"]),
])
def test_bad_exclude_entries_are_named(base, entry, words):
    cfg = copy.deepcopy(base)
    cfg["matrix"]["exclude"] = [entry]
    with pytest.raises(qcfg.ConfigError) as e:
        qcfg.validate(cfg)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_deep_merge_overrides_leaves_only():
    merged = qcfg.deep_merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1}


def test_cli_rejects_bad_params_before_work(tmp_path, base):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"matrix": {"w_bits": [8, 16]}}))
    proc = subprocess.run([sys.executable, "-m", "workflow_src", "--config", str(ROOT / "params.yaml"), "--config", str(bad), "validate"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "matrix.w_bits.1" in proc.stderr and "16" in proc.stderr


def test_snakemake_rejects_bad_params_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"archs": {"stylegan": {"quantiles": {**PAIRS, "activation": {"upper": 0.5, "lower": 0.7}}}}}))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "report", "--configfile", str(bad)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert "archs.stylegan.quantiles.activation" in proc.stdout + proc.stderr


def test_job_resources_are_the_default_overridden_per_rule():
    tiny = qcfg.load([ROOT / "params.yaml"])
    assert qcfg.rule_resources(tiny, "report") == tiny["resources"]["default"]
    paper = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "paper.yaml"])
    assert qcfg.rule_resources(paper, "train_fp") == {"cpus": 8, "mem_mb": 32000, "runtime": 1440}
    assert qcfg.rule_resources(paper, "distill") == {"cpus": 4, "mem_mb": 16000, "runtime": 120}


def test_bad_job_resources_are_named(base):
    with pytest.raises(qcfg.ConfigError, match=r"resources\.rules\.train_fp\.mem_mb.*lots"):
        qcfg.validate(_mutated(base, ("resources", "rules", "train_fp"), {"mem_mb": "lots"}))
    with pytest.raises(qcfg.ConfigError, match=r"'gpus'.*resources\.rules\.qat"):
        qcfg.validate(_mutated(base, ("resources", "rules", "qat"), {"gpus": 2}))
    with pytest.raises(qcfg.ConfigError, match=r"resources\.rules\.trian_fp.*no such rule"):
        qcfg.validate(_mutated(base, ("resources", "rules", "trian_fp"), {"runtime": 5}), extra_checks=[resources_problems])
    with pytest.raises(qcfg.ConfigError, match=r"resources\.default.*runtime"):
        qcfg.validate(_mutated(base, ("resources", "default"), {"cpus": 1, "mem_mb": 1000}))


def test_traced_params_record_exactly_the_reads_a_hand_count_gives():
    """The record behind the per-job params test (config/trace.py), against reads counted by hand:
    CPython's dict fast paths (`{**d}`, `dict(d)`, json) must not bypass it, and a section handed
    on is no read until a leaf is taken from it."""
    import copy
    import json

    from workflow_src.config import trace

    data = {"a": {"x": 1, "y": {"z": 2}}, "b": 3, "c": {}, "d": {"u": 4, "v": 5}, "e": {"w": 6}, "f": {"k": [7]}}
    reads: set = set()
    t = trace.Traced(data, reads)
    section = t["a"]["y"]  # handed on, not read
    assert reads == set() and isinstance(section, dict)
    assert {**t["d"]} == {"u": 4, "v": 5}  # the ** fast path
    assert t.get("missing", 9) == 9 and not t["c"]  # an absent key's default; an empty section's truthiness
    assert json.dumps(t["e"]) == '{"w": 6}' and copy.deepcopy(t["f"]) == {"k": [7]}
    assert reads == {"d", "d.u", "d.v", "missing", "c", "e", "e.w", "f", "f.k"}
    assert trace.plain(t) == data and reads == {"d", "d.u", "d.v", "missing", "c", "e", "e.w", "f", "f.k"}  # unrecorded
    assert trace.plain(data) is data  # untraced params are returned as they are
