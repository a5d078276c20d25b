"""FP training checkpoints itself and resumes after being killed."""
import copy
from pathlib import Path

import pytest
import torch

from workflow_src import config as qcfg
from workflow_src.datasets import prepared as datasets
from workflow_src.workflow import training as train_mod
from workflow_src.workflow.artifacts import make_arch
from workflow_src.utils import torch_load

ROOT = Path(__file__).resolve().parents[1]


class Killed(Exception):
    pass


def test_training_resumes_from_last_checkpoint(tmp_path, monkeypatch):
    cfg = qcfg.load([ROOT / "params.yaml"])
    cfg["archs"]["sagan"]["train"].update(steps=12, batch_size=4)
    cfg["train"]["checkpoint_every"] = 5
    data_dir = tmp_path / "digits"
    datasets.prepare("digits", cfg["datasets"]["digits"], data_dir)
    out, ckpt = tmp_path / "sagan.pt", tmp_path / "sagan.ckpt.pt"

    arch_cls = type(make_arch(cfg, "sagan"))
    real_step = arch_cls.train_step
    calls = []

    def dying_step(self, state, batches, step):
        calls.append(step)
        if step == 7 and len(calls) == 8:
            raise Killed()
        return real_step(self, state, batches, step)

    monkeypatch.setattr(arch_cls, "train_step", dying_step)
    with pytest.raises(Killed):
        train_mod.train(cfg, "sagan", data_dir, out, ckpt, torch.device("cpu"))
    assert not out.exists(), "a killed run must not leave a final model"
    assert int(torch_load(ckpt)["step"]) == 5
    out.with_suffix(".losses.csv").unlink(missing_ok=True)  # Snakemake deletes a job's outputs before rerunning it

    train_mod.train(cfg, "sagan", data_dir, out, ckpt, torch.device("cpu"))
    assert calls == list(range(8)) + list(range(5, 12)), calls  # resumed at the checkpoint
    assert out.exists() and not ckpt.exists()
    steps = [int(l.split(",")[0]) for l in out.with_suffix(".losses.csv").read_text().splitlines()[1:]]
    assert steps == list(range(12)), "each step is logged exactly once"
    g = train_mod.load_generator(cfg, "sagan", out)
    assert g(torch.randn(2, cfg["archs"]["sagan"]["model"]["latent_dim"])).shape == (2, 3, 16, 16)


def test_load_generator_rejects_wrong_arch(tmp_path):
    cfg = qcfg.load([ROOT / "params.yaml"])
    torch.save({"arch": "cyclegan", "state": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="cyclegan"):
        train_mod.load_generator(cfg, "sagan", tmp_path / "x.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.pt"):
        train_mod.load_generator(cfg, "sagan", tmp_path / "bad.pt")
