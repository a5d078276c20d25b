"""Block reconstruction: the block registry, AdaRound/STE-BRECQ on real generators, resumption."""
import copy
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workflow_src import config as qcfg
from workflow_src.config import Variant
from workflow_src.methods import brecq as brecq_mod
from workflow_src.archs.layers import bake
from workflow_src.quant import QuantConv2d, QuantLinear, QuantOp, weight_quantizers
from workflow_src.quant.blocks import split_blocks
from workflow_src.workflow.artifacts import make_arch

ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def cfg():
    c = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    for a in c["archs"].values():
        a["quantiles"] = {"activation": {"upper": 0.999, "lower": 0.001}, "weight": {"upper": 0.9999, "lower": 0.0001}}
    c["brecq"].update(calib_images=32, batch_size=8, ar_steps=150, ar_warmup=30, ste_steps=60, lr_qparams=1e-4)
    return c


def _generator(cfg, arch):
    torch.manual_seed(0)
    return make_arch(cfg, arch).build_generator().eval()


def test_block_registry(cfg):
    """StyleGAN: each mapping linear + LeakyReLU pair (the first with the pixel norm), each styled
    conv block, the RGB layer.  SAGAN (heykeetae's layout): each (upsample +) conv + BN + ReLU stage,
    each attention layer, the output stage."""
    m = cfg["archs"]["stylegan"]["model"]
    expected = ["mapping[0:2]"] + [f"mapping[{2 * i + 1}:{2 * i + 2}]" for i in range(1, m["n_mlp"])]
    expected += [f"blocks.{i}" for i in range(len(m["channels"]))] + ["to_rgb"]
    g = bake(_generator(cfg, "stylegan"))
    assert [b.name for b in split_blocks(g, make_arch(cfg, "stylegan").block_containers)] == expected
    g = bake(_generator(cfg, "sagan"))
    blocks = split_blocks(g, make_arch(cfg, "sagan").block_containers)
    assert [b.name for b in blocks] == ["net[l1:l1]", "net[attn1:attn1]", "net[l2:l2]", "net[attn2:attn2]", "net[last:last]"]
    assert [type(b.modules[0]).__name__ for b in blocks] == ["Sequential", "SelfAttention", "Sequential", "SelfAttention", "Sequential"]
    layers = [m for b in blocks for mod in b.modules for m in mod.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == len(set(map(id, layers))) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in g.modules())


def test_cyclegan_blocks_cover_every_weight_layer_once(cfg):
    g = bake(_generator(cfg, "cyclegan"))
    blocks = split_blocks(g, make_arch(cfg, "cyclegan").block_containers)
    layers = [m for b in blocks for mod in b.modules for m in mod.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == len(set(map(id, layers))) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in g.modules())
    n = cfg["archs"]["cyclegan"]["model"]
    assert len(blocks) == 1 + n["n_downsampling"] + n["n_blocks"] + n["n_downsampling"] + 1  # stem, down, res, up, head


def test_bake_leaves_the_original_usable(cfg):
    g = _generator(cfg, "sagan")
    z = torch.randn(2, cfg["archs"]["sagan"]["model"]["latent_dim"])
    ref = g(z)
    bake(copy.deepcopy(g))
    bake(copy.deepcopy(g))  # parametrised classes are shared by deep copies: must not be edited
    assert torch.allclose(g(z), ref)


def test_reconstruction_loss_is_brecqs_lp_loss():
    """BRECQ's ``lp_loss(pred, tgt, p=2)``: squared error summed over dim 1, mean over the batch and
    the remaining positions; written out here element by element."""
    pred = torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2) / 10
    tgt = torch.zeros(2, 3, 2, 2)
    tgt[0, 1, 0, 1], tgt[1, 2, 1, 0] = 1.0, -2.0
    total = 0.0
    for n in range(2):
        for h in range(2):
            for w in range(2):
                total += sum((float(pred[n, c, h, w]) - float(tgt[n, c, h, w])) ** 2 for c in range(3))
    want = total / (2 * 2 * 2)  # mean over N, H, W of the channel sums
    got = brecq_mod.reconstruction_loss(pred, tgt)
    assert abs(float(got) - want) < 1e-5 and abs(float(got) - 3 * float(F.mse_loss(pred, tgt))) < 1e-5
    # a linear block's (N, features) output: sum over features, mean over the batch
    a, b = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert float(brecq_mod.reconstruction_loss(a, b)) == ((1 + 4 + 0) + (1 + 1 + 4)) / 2


def _run(cfg, arch, variant, ckpt=None):
    g = _generator(cfg, arch)
    a = make_arch(cfg, arch)
    inputs = a.sample_inputs(32, torch.Generator().manual_seed(1))
    return brecq_mod.brecq(Variant.parse(variant).method)(g, inputs, Variant.parse(variant), cfg["archs"][arch], cfg, arch=a, ckpt=ckpt)


@pytest.mark.parametrize("variant", ["ar-brecq-tensor-w4a8", "ar-brecq-channel-w4a8", "ste-brecq-tensor-w8a8"])
def test_reconstruction_lowers_every_block_error_and_ends_on_the_grid(cfg, variant):
    q, spec, info = _run(cfg, "sagan", variant)
    assert info["blocks"] == len(info["recon"]) == 5
    for rec in info["recon"]:
        assert rec["mse_after"] < rec["mse_before"], rec
    v = Variant.parse(variant)
    if v.method == "ar-brecq":  # the two terms at the start of annealing are recorded for every block
        for rec in info["recon"]:
            assert rec["anneal_reg"] > rec["anneal_rec"] > 0 and rec["anneal_reg_grad"] > 0 and 0 <= rec["anneal_rec_led"] <= 1, rec
    qmin, qmax = -(2 ** (v.w_bits - 1)), 2 ** (v.w_bits - 1) - 1
    for layer in q.modules():
        if isinstance(layer, (QuantConv2d, QuantLinear)):
            s = layer.weight_quant.scale.view(-1, *[1] * (layer.weight.dim() - 1))
            k = layer.weight_quant(layer.weight) / s
            assert torch.allclose(k, k.round(), atol=1e-3) and k.min() >= qmin - 1e-3 and k.max() <= qmax + 1e-3
            if v.method == "ar-brecq":  # hard rounding: the stored weight itself lies on the grid
                assert torch.allclose(layer.weight / s, (layer.weight / s).round(), atol=1e-3)


def _kill_after_two_blocks(cfg, variant, ckpt, monkeypatch):
    """Run ``variant`` on sagan with checkpoint ``ckpt``, killed inside its third block."""
    real = brecq_mod._reconstruct_block
    calls = []

    def dying(block, *a, **k):
        calls.append(block.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(block, *a, **k)

    monkeypatch.setattr(brecq_mod, "_reconstruct_block", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, "sagan", variant, ckpt=ckpt)
    monkeypatch.setattr(brecq_mod, "_reconstruct_block", real)


def test_killed_reconstruction_resumes_at_the_next_block(cfg, tmp_path, monkeypatch):
    full, _, _ = _run(cfg, "sagan", "ste-brecq-tensor-w4a8")
    ckpt = tmp_path / "q.pt.ckpt.pt"
    _kill_after_two_blocks(cfg, "ste-brecq-tensor-w4a8", ckpt, monkeypatch)
    resumed, _, info = _run(cfg, "sagan", "ste-brecq-tensor-w4a8", ckpt=ckpt)
    assert [r["block"] for r in info["recon"]] == [0, 1, 2, 3, 4]
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), f"resumed run differs from the uninterrupted one at {k}"


def test_block_inputs_beyond_the_cache_limit_are_memory_mapped_with_the_same_result(cfg, tmp_path, monkeypatch):
    """With ``runtime.max_cache_mb`` below a block's captured inputs, they are written to
    memory-mapped files in the local temporary folder ($TMPDIR; removed after each block, and what a
    killed attempt left is removed when the next starts), and the reconstruction is bit-for-bit the
    in-memory one."""
    from workflow_src.methods.brecq import spill_folder
    from workflow_src.quant import blocks as blocks_mod

    local = tmp_path / "node-local"
    local.mkdir()
    monkeypatch.setenv("TMPDIR", str(local))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads $TMPDIR again
    ckpt = tmp_path / "shared" / "q.pt.ckpt.pt"
    ckpt.parent.mkdir()
    spill = spill_folder(ckpt)
    assert spill.parent == local
    spill.mkdir()
    (spill / "stylegan.block0.inputs.0.npy").write_bytes(b"left by a killed attempt")

    in_memory, _, _ = _run(cfg, "stylegan", "ste-brecq-tensor-w4a8")
    spilled_files = []
    real_rows = blocks_mod._Rows

    class Spy(real_rows):
        def __init__(self, first, n, path):
            super().__init__(first, n, path)
            if path is not None:
                spilled_files.append(path)

    monkeypatch.setattr(blocks_mod, "_Rows", Spy)
    c = copy.deepcopy(cfg)
    c["runtime"] = {"max_cache_mb": 1e-3}  # 1 KiB: every block spills
    spilled, _, _ = _run(c, "stylegan", "ste-brecq-tensor-w4a8", ckpt=ckpt)
    assert spilled_files and all(p.parent == spill for p in spilled_files)
    assert not spill.exists(), "spill files are removed after each block"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["q.pt.ckpt.pt"], "nothing spilled beside the checkpoint"
    for (k, a), (_, b) in zip(in_memory.state_dict().items(), spilled.state_dict().items()):
        assert torch.equal(a, b), k


def test_capture_keeps_arguments_broadcast_over_the_batch(cfg):
    """StyleGAN's first block gets the constant input (batch 1) and the style (batch n)."""
    from workflow_src.quant.blocks import capture, index_record, record_len

    g = bake(_generator(cfg, "stylegan"))
    blocks = split_blocks(g, make_arch(cfg, "stylegan").block_containers)
    first_styled = next(b for b in blocks if b.name == "blocks.0")
    z = make_arch(cfg, "stylegan").sample_inputs(10, torch.Generator().manual_seed(0))
    (args, kwargs) = capture(g, first_styled, z, 4, "inputs")
    assert record_len((args, kwargs)) == 10
    sub, _ = index_record((args, kwargs), torch.tensor([1, 7]))
    assert all(a.shape[0] in (1, 2) for a in sub if torch.is_tensor(a))


@pytest.mark.parametrize("arch", ["stylegan", "cyclegan"])
def test_one_pass_captures_the_outputs_of_the_next_blocks_as_one_pass_each_would(cfg, arch):
    """BRECQ's FP targets: capture_outputs serves the block and the blocks after it that fit in
    max_bytes from one forward pass per batch, each output bit for bit what capture() gives alone,
    StyleGAN's per-sample noise fed to every sample; with a limit of two blocks' outputs, windows of
    two; below one block's, that block alone (spilled, as capture does); fewer forward passes."""
    from workflow_src.methods.ptq import sample_batches
    from workflow_src.quant.blocks import capture, capture_outputs

    a = make_arch(cfg, arch)
    g = bake(_generator(cfg, arch))
    blocks = split_blocks(g, a.block_containers)
    r = cfg["archs"][arch]["resolution"]
    inputs = torch.rand(10, 3, r, r, generator=torch.Generator().manual_seed(2)) * 2 - 1 if arch == "cyclegan" \
        else a.sample_inputs(10, torch.Generator().manual_seed(2))
    extras = a.sample_extras(10, torch.Generator().manual_seed(3)) or None
    batches = lambda: sample_batches(a, g, inputs, 4, extras)  # noqa: E731
    one_by_one = [capture(g, b, inputs, 4, "outputs", batches=batches()) for b in blocks]
    passes = []
    hook = g.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        every = capture_outputs(g, blocks, inputs, 4, batches=batches)
        assert len(every) == len(blocks) and len(passes) == 3  # 3 batches, one pass each for every block
        for j, (x, y) in enumerate(zip(every, one_by_one)):
            assert torch.equal(x, y), blocks[j].name
        two = sum(12 * one_by_one[j][0].numel() * 4 for j in (1, 2))  # 3 batches of 4 rows of float32, as the first batch counts
        window = capture_outputs(g, blocks[1:], inputs, 4, max_bytes=two, batches=batches)
        assert len(window) == 2 and all(torch.equal(x, y) for x, y in zip(window, one_by_one[1:]))
        with tempfile.TemporaryDirectory() as spill:
            alone = capture_outputs(g, blocks, inputs, 4, spill_dir=Path(spill), max_bytes=8, batches=batches)
            assert len(alone) == 1 and torch.equal(alone[0], one_by_one[0]) and list(Path(spill).glob("*.npy"))
    finally:
        hook.remove()


@pytest.mark.parametrize("change", ["params", "fp-weights", "code"])
def test_a_checkpoint_of_other_work_is_not_resumed(cfg, tmp_path, monkeypatch, capsys, change):
    """Killed after two blocks, then the brecq params, the FP weights or the code change: the job
    starts over at block 0 (saying why) and ends as a fresh run of the new work would."""
    from workflow_src import resume

    variant = "ste-brecq-tensor-w4a8"
    ckpt = tmp_path / "q.pt.ckpt.pt"
    _kill_after_two_blocks(cfg, variant, ckpt, monkeypatch)
    new = copy.deepcopy(cfg)
    if change == "params":
        new["brecq"]["lr_qparams"] *= 10
    elif change == "fp-weights":
        real_generator = _generator
        monkeypatch.setitem(globals(), "_generator", lambda c, a: _perturbed(real_generator(c, a)))
    else:
        real_digests = resume.source_digests
        # as if quant/blocks.py had been edited since
        monkeypatch.setattr(resume, "source_digests", lambda modules: {**real_digests(modules), "workflow_src/quant/blocks.py": "0" * 64})
    capsys.readouterr()
    resumed, _, info = _run(new, "sagan", variant, ckpt=ckpt)
    said = capsys.readouterr().out
    assert [r["block"] for r in info["recon"]] == [0, 1, 2, 3, 4], "started over"
    expected = {"params": "brecq.lr_qparams", "fp-weights": "inputs:", "code": "code differs (workflow_src/quant/blocks.py)"}[change]
    assert "not resuming" in said and expected in said, said
    fresh, _, _ = _run(new, "sagan", variant)
    for (k, a), (_, b) in zip(fresh.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def _perturbed(g):
    with torch.no_grad():
        next(iter(g.parameters())).add_(1e-3)
    return g
