"""The registry: what each method and arch file declares is read without importing the file, is
checked (mistakes name the file and the key), and agrees with the implementation it points to."""
from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest

from workflow_src import config as qcfg
from workflow_src import registry
from workflow_src.archs.base import GANArch

ROOT = Path(__file__).resolve().parents[1]
TINY = qcfg.load([ROOT / "params.yaml"])


def test_every_declared_method_points_to_its_implementation():
    methods = registry.methods()
    assert methods, "no method declared"
    for name, m in methods.items():
        run = m.implementation()
        assert callable(run), name
        params = list(inspect.signature(run).parameters)
        assert params[:5] == ["generator", "calib_inputs", "variant", "arch_cfg", "cfg"], (name, params)
        assert m.kind in registry.KINDS and set(m.tables) <= set(registry.TABLES)
        assert m.tables or m.mixed, name  # a mixed-precision method's w_bits is a budget: it has the size front instead
        keys = m.params_keys(TINY, "stylegan")
        assert keys[: len(registry.COMMON_READS)] == list(registry.COMMON_READS) and len(keys) == len(set(keys))
        # what a need implies is read (the tiny profile's StyleGAN: every need of every method holds),
        # and a method that trains writes a loss log (rule qat)
        for need in ("quantiles", "perceptual", "validation"):
            if m.may_need(need):
                assert set(registry.NEED_READS[need]) <= set(keys), name
        assert m.rule == ("qat" if m.kind == "qat" else "quantize")


def test_a_job_reads_the_keys_of_the_needs_that_hold_for_its_arch():
    """On the micro config CycleGAN's QAT keeps the epoch the validation qFID ranks best and distils with
    pixel MSE, the other archs keep the last epoch with the perceptual loss: each QAT job reads the
    scorer's keys (the validation count, the feature network, the eval batch size and bootstrap count),
    or the perceptual network's, only where that holds."""
    micro = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    qat = registry.method("lsq-qat")
    cyc, sty = set(qat.params_keys(micro, "cyclegan")), set(qat.params_keys(micro, "stylegan"))
    assert set(registry.NEED_READS["validation"]) <= cyc and not set(registry.NEED_READS["validation"]) & sty
    assert "perceptual" in sty and "perceptual" not in cyc
    assert {"qat", "archs.{arch}.qat"} <= cyc & sty  # what decides the needs is read either way


def test_reports_order_and_tables_follow_kinds():
    kinds = [m.kind for m in registry.methods().values()]
    assert kinds == sorted(kinds, key=registry.KINDS.index)
    for table, shown in registry.TABLES.items():
        assert registry.methods_in_table(table) == [m.name for m in registry.methods().values() if m.kind in shown and not m.mixed]
    assert registry.swept_method().may_need("quantiles")


def test_every_declared_arch_points_to_its_class():
    assert registry.archs()
    for name, a in registry.archs().items():
        cls = a.implementation()
        assert issubclass(cls, GANArch) and cls.name == name
        assert set(a.per_level) <= set(a.model)
    assert list(registry.archs()) == sorted(registry.archs())


def test_conditional_needs_read_per_arch_sections():
    cfg = {"qat": {"distill_loss": "perceptual"}, "archs": {"a": {"qat": {"distill_loss": "mse"}}, "b": {"qat": {}}, "c": {}}}
    trained = [registry.method(n) for n in registry.trained_methods()]
    assert trained, "no method trains against the FP generator"
    for m in trained:
        if any(n.when for n in m.needs):
            assert "perceptual" not in m.needs_for(cfg, "a") and "perceptual" in m.needs_for(cfg, "b")
            assert "perceptual" in m.needs_for(cfg, "c")
    assert registry.section_value(cfg, "a", "qat.distill_loss", ("qat",)) == "mse"
    assert registry.section_value(cfg, "a", "qat.distill_loss", ()) == "perceptual"
    assert registry.section_value(cfg, "b", "qat.missing", ("qat",)) is None


def test_unknown_names_are_named():
    with pytest.raises(KeyError, match="ptq-magic.*implemented methods"):
        registry.method("ptq-magic")
    with pytest.raises(KeyError, match="biggan.*known"):
        registry.arch("biggan")


def _read(tmp_path, text):
    path = tmp_path / "workflow_src" / "methods" / "m.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_declaration_mistakes_name_the_file_and_the_key(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "PACKAGE", tmp_path / "workflow_src")
    cases = [
        ('METHODS = [{"name": "x", "kind": "ptq", "title": "X"}]', r"m\.py: METHODS\[0\]: lacks \['run'\]"),
        ('METHODS = [{"name": "x", "kind": "fancy", "title": "X", "run": "f"}]', r"kind 'fancy' is not one of"),
        ('METHODS = [{"name": "x", "kind": "ptq", "title": "X", "run": "f", "needs": ["gpu"]}]', r"need 'gpu' is not one of"),
        ('METHODS = [{"name": "x", "kind": "ptq", "title": "X", "run": "f", "colour": 1}]', r"unknown keys \['colour'\]"),
        ('METHODS = [{"name": "x", "kind": "ptq", "title": "X", "run": "f"}]\nPARAMS = {"per_arch": ["s"]}', r"per_arch names \['s'\]"),
        ('N = "x"\nMETHODS = [{"name": N, "kind": "ptq", "title": "X", "run": "f"}]', r"METHODS must be a literal"),
    ]
    for text, message in cases:
        path = _read(tmp_path, text)
        with pytest.raises(registry.RegistryError, match=message):
            registry._method_file(path)
    path = _read(tmp_path, 'import torch\nMETHODS = [{"name": "x", "kind": "qat", "title": "X", "run": "f"}]\n')
    _, (m,) = registry._method_file(path)  # read without importing (torch is never imported here)
    assert (m.name, m.trains, m.tables) == ("x", True, ("table4",))
