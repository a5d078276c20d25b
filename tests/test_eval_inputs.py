"""The evaluation inputs file (stage ``eval_inputs``): seeded latents and, for StyleGAN, one
per-sample noise tensor per noise layer, saved once and read back by evaluation, the quantile sweep
and the sample figures."""
from pathlib import Path

import pytest
import torch

from workflow_src import config as qcfg
from workflow_src.workflow.artifacts import load_eval_inputs
from workflow_src.workflow.distill import eval_inputs
from workflow_src.workflow.artifacts import make_arch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg():
    c = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    c["eval"] = dict(c["eval"], n_samples=7)
    return c


def test_stylegan_eval_inputs_round_trip(cfg, tmp_path):
    out = tmp_path / "inputs.pt"
    eval_inputs(cfg, arch="stylegan", data=str(tmp_path / "no-data-needed"), out=str(out))
    inputs, extras = load_eval_inputs(str(out), "stylegan")

    # reference: the documented draw order from one generator seeded with seed + 202: the latents,
    # then one (n, 1, H, W) normal tensor per noise layer, two per resolution level 4 .. resolution
    model = cfg["archs"]["stylegan"]["model"]
    res = int(cfg["archs"]["stylegan"]["resolution"])
    g = torch.Generator().manual_seed(cfg["seed"] + 202)
    z = torch.randn(7, int(model["latent_dim"]), generator=g)
    sizes = [4 * 2**i for i in range(len(model["channels"])) for _ in range(2)]
    assert sizes[-1] == res
    noise = [torch.randn(7, 1, s, s, generator=g).half() for s in sizes]

    assert torch.equal(inputs, z)
    assert sorted(extras) == ["noise"] and len(extras["noise"]) == len(noise)
    for got, want in zip(extras["noise"], noise):
        assert got.dtype == torch.float16 and torch.equal(got, want)

    # the same file drives the generator, batch by batch, whatever the batch size
    arch = make_arch(cfg, "stylegan")
    G = arch.build_generator().eval()
    torch.testing.assert_close(arch.generate(G, inputs, 3, extras), arch.generate(G, inputs, 7, extras), atol=1e-4, rtol=0)


def test_eval_inputs_file_names_its_arch(cfg, tmp_path):
    out = tmp_path / "inputs.pt"
    eval_inputs(cfg, arch="sagan", data=str(tmp_path), out=str(out))
    inputs, extras = load_eval_inputs(str(out), "sagan")
    assert extras == {} and inputs.shape == (7, int(cfg["archs"]["sagan"]["model"]["latent_dim"]))
    with pytest.raises(ValueError, match=r"holds eval inputs of arch 'sagan', expected 'stylegan'"):
        load_eval_inputs(str(out), "stylegan")


def test_noise_for_another_generator_is_a_clear_error(cfg, tmp_path):
    """Eval inputs drawn for a smaller StyleGAN do not fit the configured one."""
    small = dict(cfg, archs=dict(cfg["archs"], stylegan=dict(cfg["archs"]["stylegan"], resolution=8,
                 model=dict(cfg["archs"]["stylegan"]["model"], channels=[8, 8], d_channels=[8, 8]))))
    out = tmp_path / "inputs.pt"
    eval_inputs(small, arch="stylegan", data=str(tmp_path), out=str(out))
    inputs, extras = load_eval_inputs(str(out), "stylegan")
    arch = make_arch(cfg, "stylegan")
    with pytest.raises(ValueError, match=r"got 4 noise tensors for a model with \d+ noise layers"):
        arch.generate(arch.build_generator().eval(), inputs, 7, extras)
