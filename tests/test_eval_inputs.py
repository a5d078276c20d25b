"""The evaluation inputs file (stage ``eval_inputs``): seeded latents and, for StyleGAN, one noise
seed per sample, saved once and read back by evaluation, the quantile sweep and the sample figures."""
from pathlib import Path

import pytest
import torch

from workflow_src import config as qcfg
from workflow_src.workflow.artifacts import load_eval_inputs
from workflow_src.workflow.distill import eval_inputs
from workflow_src.workflow.artifacts import make_arch
from workflow_src.archs.stylegan import fixed_noise, noise_layers

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
    # then one int64 seed per sample; sample i's noise maps (one per noise layer, two per resolution
    # level 4 .. resolution) come from a generator seeded with its seed
    model = cfg["archs"]["stylegan"]["model"]
    res = int(cfg["archs"]["stylegan"]["resolution"])
    g = torch.Generator().manual_seed(cfg["seed"] + 202)
    z = torch.randn(7, int(model["latent_dim"]), generator=g)
    seeds = torch.randint(0, 2**62, (7,), generator=g, dtype=torch.int64)
    sizes = [4 * 2**i for i in range(len(model["channels"])) for _ in range(2)]
    assert sizes[-1] == res

    assert torch.equal(inputs, z)
    assert sorted(extras) == ["noise_seed"] and torch.equal(extras["noise_seed"], seeds)

    # the same file drives the generator, batch by batch, whatever the batch size, sample i with its noise
    arch = make_arch(cfg, "stylegan")
    torch.manual_seed(0)
    G = arch.build_generator().eval()
    for _, m in noise_layers(G):
        torch.nn.init.constant_(m.weight, 0.5)
    images = arch.generate(G, inputs, 7, extras)
    torch.testing.assert_close(arch.generate(G, inputs, 3, extras), images, atol=1e-4, rtol=0)
    for i in (0, 6):
        gi = torch.Generator().manual_seed(int(seeds[i]))
        with torch.no_grad(), fixed_noise(G, [torch.randn(1, 1, s, s, generator=gi) for s in sizes]):
            torch.testing.assert_close(G(z[i:i + 1]), images[i:i + 1], atol=1e-4, rtol=0)
    # seeds fit any generator layout: the maps take each layer's size
    small = make_arch(dict(cfg, archs=dict(cfg["archs"], stylegan=dict(cfg["archs"]["stylegan"], resolution=8,
                      model=dict(model, channels=[8, 8], d_channels=[8, 8])))), "stylegan")
    assert small.generate(small.build_generator().eval(), inputs, 7, extras).shape == (7, 3, 8, 8)


def test_eval_inputs_file_names_its_arch(cfg, tmp_path):
    out = tmp_path / "inputs.pt"
    eval_inputs(cfg, arch="sagan", data=str(tmp_path), out=str(out))
    inputs, extras = load_eval_inputs(str(out), "sagan")
    assert extras == {} and inputs.shape == (7, int(cfg["archs"]["sagan"]["model"]["latent_dim"]))
    with pytest.raises(ValueError, match=r"holds eval inputs of arch 'sagan', expected 'stylegan'"):
        load_eval_inputs(str(out), "stylegan")


def _rows(images: torch.Tensor) -> set:
    return {bytes(x.numpy().tobytes()) for x in images}


def test_validation_inputs_are_disjoint_from_the_evaluation_and_distillation_inputs(cfg, tmp_path):
    """The quantile sweep's validation split (issue 14.2): latents of their own seed (seed + 505),
    and for CycleGAN training images that the distillation set never draws, never test images."""
    from workflow_src.datasets import prepared
    from workflow_src.utils import torch_save
    from workflow_src.workflow import distill as distill_stage
    from workflow_src.workflow.training import _state_dicts

    inputs, extras = distill_stage.validation_inputs(cfg, "stylegan", str(tmp_path / "no-data-needed"))
    n = cfg["sweep"]["validation_samples"]
    g = torch.Generator().manual_seed(cfg["seed"] + 505)
    assert torch.equal(inputs, torch.randn(n, cfg["archs"]["stylegan"]["model"]["latent_dim"], generator=g))
    assert torch.equal(extras["noise_seed"], torch.randint(0, 2**62, (n,), generator=g, dtype=torch.int64))
    eval_inputs(cfg, arch="stylegan", data="", out=str(tmp_path / "eval.pt"))
    assert not _rows(inputs) & _rows(load_eval_inputs(str(tmp_path / "eval.pt"), "stylegan")[0])

    data = tmp_path / "h2z"
    prepared.prepare("h2z-synthetic", cfg["datasets"]["h2z-synthetic"], data)
    fp = tmp_path / "fp.pt"
    torch_save({"arch": "cyclegan", "steps": 0, "state": _state_dicts(make_arch(cfg, "cyclegan").init_state(torch.device("cpu")))}, fp)
    distill_stage.distill(cfg, arch="cyclegan", data=str(data), fp=str(fp), out=str(tmp_path / "distill.pt"))
    distilled = torch.load(tmp_path / "distill.pt", weights_only=True)["inputs"]
    val, _ = distill_stage.validation_inputs(cfg, "cyclegan", str(data))
    n_train = cfg["datasets"]["h2z-synthetic"]["n_train"]
    assert len(val) == min(n, n_train // 5) and len(distilled) == min(cfg["distill"]["size"], n_train - len(val))
    train, test = (_rows(prepared.to_tensor(prepared.load_split(data, s)[:])) for s in ("trainA", "testA"))
    assert _rows(val) <= train and _rows(distilled) <= train
    assert not _rows(val) & _rows(distilled) and not _rows(val) & test
    # asking for more than a fifth of the training images holds out a fifth, and the distillation set shrinks to the rest
    big = dict(cfg, sweep=dict(cfg["sweep"], validation_samples=10 * n_train), distill=dict(cfg["distill"], size=10 * n_train))
    assert len(distill_stage.validation_inputs(big, "cyclegan", str(data))[0]) == n_train // 5
    distill_stage.distill(big, arch="cyclegan", data=str(data), fp=str(fp), out=str(tmp_path / "all.pt"))
    everything = torch.load(tmp_path / "all.pt", weights_only=True)["inputs"]
    assert len(everything) == n_train - n_train // 5 and not _rows(everything) & _rows(val)
