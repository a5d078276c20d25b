"""Layer sensitivity (workflow_src/workflow/sensitivity.py): each unit quantized alone, scored against
the FP generator; a layer whose weights lie on their quantizer's grid does no damage when its weights
alone are quantized."""
import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from workflow_src.archs.layers import bake
from workflow_src.quality import fid
from workflow_src.quant import QuantConv2d, QuantLinear, QuantOp, QuantSpec, calibrate, quantize_model
from workflow_src.quant.quantizer import FakeQuantizer
from workflow_src.workflow.sensitivity import figure, layer_sensitivity, units



@pytest.fixture(scope="module")
def sagan(micro_sagan):
    """The micro SAGAN (convs, linears, attention products) and its latents."""
    return micro_sagan[1:]


def _quantized(g, z):
    q = quantize_model(g, QuantSpec(w_bits=4, a_bits=4, per_channel=False))
    calibrate(q, z[:64].split(32))
    return q


def _scorer(fp, z):
    """qFID in a small feature space of the outputs (4x4 average-pooled pixels, 48-d) on inputs z."""
    def feats(m):
        with torch.no_grad():
            return F.adaptive_avg_pool2d(m(z), 4).flatten(1).double().numpy()
    ref = fid.statistics(feats(fp))
    return lambda m: {"qfid": fid.frechet_distance(fid.statistics(feats(m)), ref), "qfid_std": 0.0}


def test_every_quantizer_belongs_to_a_unit_and_each_unit_is_scored_alone(sagan):
    g, z = sagan
    q = _quantized(g, z)
    found = units(q)
    layers = [n for n, m in q.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    ops = [n for n, m in q.named_modules() if isinstance(m, QuantOp)]
    assert layers and ops
    assert [(u[0], u[2]) for u in found if u[2] != "operands"] == [(n, o) for n in layers for o in ("weight", "input", "layer")]
    assert [u[0] for u in found if u[2] == "operands"] == ops
    every = {id(fq) for fq in q.modules() if isinstance(fq, FakeQuantizer)}
    assert {id(fq) for u in found for fq in u[3]} == every
    seen = []
    rows = layer_sensitivity(q, lambda m: seen.append({id(fq) for fq in m.modules() if isinstance(fq, FakeQuantizer) and fq.enabled}) or {"qfid": 0.0},
                             found)
    assert seen == [{id(fq) for fq in u[3]} for u in found]  # only the unit's quantizers were on
    assert len(rows) == len(found)
    assert all(fq.enabled for fq in q.modules() if isinstance(fq, FakeQuantizer))  # left as they were


def test_a_layer_on_its_weight_grid_does_no_damage_alone_and_the_others_do(sagan):
    """The weights of one conv are put on the grid of its w4 quantizer, in the FP generator and the
    quantized one alike: quantizing those weights alone leaves the outputs unchanged (qFID 0), while
    its input at a4, and the weights of a layer not on its grid, do damage."""
    g, z = sagan
    g = bake(copy.deepcopy(g))  # spectral norm folded into plain weights, as quantize_model does: weights that can be set
    q = _quantized(g, z)
    # not an attention conv: an untrained SAGAN's attention is scaled by gamma = 0, so nothing there does damage
    name = next(n for n, m in q.named_modules() if isinstance(m, QuantConv2d) and "attn" not in n)
    other = [n for n, m in q.named_modules() if isinstance(m, (QuantConv2d, QuantLinear)) and n != name][-1]
    layer = q.get_submodule(name)
    wq = layer.weight_quant
    with torch.no_grad():
        on_grid = torch.clamp(torch.round(layer.weight / wq.scale), wq.qmin, wq.qmax) * wq.scale
        assert not torch.equal(on_grid, layer.weight)
        layer.weight.copy_(on_grid)
        g.get_submodule(name).weight.copy_(on_grid)
    torch.testing.assert_close(wq(layer.weight), layer.weight, rtol=0, atol=0)
    todo = [u for u in units(q) if (u[0], u[2]) in {(name, "weight"), (name, "input"), (other, "weight")}]
    rows = {(r["layer"], r["operand"]): r["qfid"] for r in layer_sensitivity(q, _scorer(g, z[64:]), todo)}
    assert abs(rows[(name, "weight")]) < 1e-9, rows
    assert rows[(name, "input")] > 1e-6 and rows[(other, "weight")] > 1e-6, rows


def test_the_figure_is_drawn_for_every_arch_and_the_tables_concatenated(tmp_path):
    tables = []
    for arch, worst in (("stylegan", "to_rgb"), ("sagan", "net.last.1")):
        rows = [{"arch": arch, "w_bits": 4, "a_bits": 4, "per_channel": False, "feature_space": "tinycnn-64d", "split": "validation",
                 "samples": 10, "layer": layer, "type": "Conv2d", "operand": op, "qfid": v, "qfid_std": 0.01, "rank": ""}
                for layer, op, v in ((worst, "layer", 0.9), (worst, "weight", 0.5), (worst, "input", 0.2), ("a", "layer", 0.1), ("all", "all", 1.2))]
        p = tmp_path / f"{arch}.csv"
        pd.DataFrame(rows).to_csv(p, index=False)
        tables.append(str(p))
    cfg = {"sensitivity": {"top": 15}}
    figure(cfg, tables=tables, png=str(tmp_path / "fig.png"), csv=str(tmp_path / "all.csv"))
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    both = pd.read_csv(tmp_path / "all.csv")
    assert list(both["arch"].unique()) == ["stylegan", "sagan"] and len(both) == 10
