"""FP training checkpoints itself and resumes after being killed."""
import copy
from pathlib import Path

import pytest
import torch

from workflow_src import config as qcfg
from workflow_src.datasets import prepared as datasets
from workflow_src.workflow import training as train_mod
from workflow_src.workflow.artifacts import make_arch
from workflow_src import resume
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


# ------------------------------------------------------------------ resuming only the same work, exactly
def _setup(tmp_path, monkeypatch, steps=12):
    monkeypatch.setenv("QGAN_TRACKING", "off")
    cfg = qcfg.load([ROOT / "params.yaml"])
    cfg["archs"]["sagan"]["train"].update(steps=steps, batch_size=4)
    cfg["archs"]["cyclegan"]["train"].update(steps=steps, batch_size=2)
    cfg["train"]["checkpoint_every"] = 5
    dirs = {}
    for arch in ("sagan", "cyclegan"):
        name = cfg["archs"][arch]["dataset"]
        dirs[arch] = tmp_path / "data" / name
        datasets.prepare(name, cfg["datasets"][name], dirs[arch])
    return cfg, dirs


def _tensors(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}{k}.")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}{i}.")
    elif isinstance(obj, torch.Tensor):
        yield prefix[:-1], obj


def _assert_same_weights(a: Path, b: Path):
    """Every tensor of every network and optimiser in the two final files is equal."""
    ta, tb = dict(_tensors(torch_load(a)["state"])), dict(_tensors(torch_load(b)["state"]))
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} of {len(ta)} tensors differ, e.g. {differ[:3]}"


def _kill_at_step(monkeypatch, cfg, arch, kill_step):
    arch_cls = type(train_mod.make_arch(cfg, arch))
    real_step = arch_cls.train_step
    armed = [True]

    def dying_step(self, state, batches, step):
        if armed[0] and step == kill_step:
            armed[0] = False
            raise Killed()
        return real_step(self, state, batches, step)

    monkeypatch.setattr(arch_cls, "train_step", dying_step)


@pytest.mark.parametrize("arch", ["sagan", "cyclegan"])
def test_a_resumed_training_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch, arch):
    """Killed at step 7 (checkpoint at 5) and resumed: the same batches, flips and random draws as
    an uninterrupted run, so every tensor ends equal (the data stream used to be reseeded from the
    step, and the flip generator's state was lost)."""
    cfg, dirs = _setup(tmp_path, monkeypatch)
    dev = torch.device("cpu")
    train_mod.train(cfg, arch, dirs[arch], tmp_path / "full.pt", tmp_path / "full.ckpt.pt", dev)
    _kill_at_step(monkeypatch, cfg, arch, 7)
    out, ckpt = tmp_path / "r.pt", tmp_path / "r.ckpt.pt"
    with pytest.raises(Killed):
        train_mod.train(cfg, arch, dirs[arch], out, ckpt, dev)
    assert int(torch_load(ckpt)["step"]) == 5
    train_mod.train(cfg, arch, dirs[arch], out, ckpt, dev)
    _assert_same_weights(tmp_path / "full.pt", out)
    assert out.with_suffix(".losses.csv").read_text() == (tmp_path / "full.losses.csv").read_text()


def test_a_checkpoint_made_with_other_params_is_not_resumed(tmp_path, monkeypatch, capsys):
    """Killed at step 7, then `seed` and `lr_g` changed: the job starts over with the new params
    (the same weights as a fresh run with them) and says why, instead of mixing the two."""
    cfg, dirs = _setup(tmp_path, monkeypatch)
    dev = torch.device("cpu")
    out, ckpt = tmp_path / "r.pt", tmp_path / "r.ckpt.pt"
    _kill_at_step(monkeypatch, cfg, "sagan", 7)
    with pytest.raises(Killed):
        train_mod.train(cfg, "sagan", dirs["sagan"], out, ckpt, dev)
    assert ckpt.exists()
    new = copy.deepcopy(cfg)
    new["seed"] += 1
    new["archs"]["sagan"]["train"]["lr_g"] *= 2
    capsys.readouterr()
    train_mod.train(new, "sagan", dirs["sagan"], out, ckpt, dev)
    said = capsys.readouterr().out
    assert "not resuming" in said and "seed: 0 -> 1" in said and "archs.sagan.train.lr_g" in said, said
    assert "resuming sagan" not in said.replace("not resuming", "")
    train_mod.train(new, "sagan", dirs["sagan"], tmp_path / "fresh.pt", tmp_path / "fresh.ckpt.pt", dev)
    _assert_same_weights(tmp_path / "fresh.pt", out)
    steps = [int(l.split(",")[0]) for l in out.with_suffix(".losses.csv").read_text().splitlines()[1:]]
    assert steps == list(range(12))


def test_the_loss_log_is_complete_whatever_moment_the_kill_comes(tmp_path, monkeypatch):
    """The job is killed at each step of its finishing sequence (the last log rows, the model, the
    log's copy, MLflow calls, the checkpoint's and the log's deletion; an append torn mid-row),
    Snakemake deletes the job's outputs, and the rerun ends with the log and weights of an
    uninterrupted run.  The log used to be moved before the checkpoint was deleted: a kill between
    them resumed with an empty log."""
    import os

    from workflow_src.workflow import tracking

    cfg, dirs = _setup(tmp_path, monkeypatch)
    dev = torch.device("cpu")
    train_mod.train(cfg, "sagan", dirs["sagan"], tmp_path / "full.pt", tmp_path / "full.ckpt.pt", dev)
    want_log = (tmp_path / "full.losses.csv").read_text()

    ops, kill = [], [None]

    def wrap(owner, name):
        real = getattr(owner, name)

        def op(*args, **kwargs):
            ops.append(name)
            if len(ops) - 1 == kill[0]:
                if name == "append_rows":  # a kill mid-write leaves a torn last line
                    with open(args[0], "a") as fh:
                        fh.write("1")
                raise Killed(name)
            return real(*args, **kwargs)
        monkeypatch.setattr(owner, name, op)

    for owner, name in [(os, "replace"), (os, "unlink"), (train_mod, "append_rows"),
                        (tracking.Run, "log_step_metrics"), (tracking.Run, "log_artifact")]:
        wrap(owner, name)
    train_mod.train(cfg, "sagan", dirs["sagan"], tmp_path / "trace.pt", tmp_path / "trace.ckpt.pt", dev)
    trace = list(ops)
    finishing = len(trace) - 1 - trace[::-1].index("append_rows")  # the last rows onwards
    assert "log_artifact" in trace[finishing:] and len(trace) - finishing >= 5, trace
    for k in range(finishing, len(trace)):
        run_dir = tmp_path / f"kill{k}"
        out, ckpt = run_dir / "m.pt", run_dir / "m.ckpt.pt"
        ops.clear()
        kill[0] = k
        with pytest.raises(Killed):
            train_mod.train(cfg, "sagan", dirs["sagan"], out, ckpt, dev)
        kill[0] = None
        out.unlink(missing_ok=True)  # Snakemake deletes an incomplete job's outputs before rerunning it
        out.with_suffix(".losses.csv").unlink(missing_ok=True)
        train_mod.train(cfg, "sagan", dirs["sagan"], out, ckpt, dev)
        assert out.with_suffix(".losses.csv").read_text() == want_log, f"killed at {trace[k]} (operation {k})"
        _assert_same_weights(tmp_path / "full.pt", out)
        assert not ckpt.exists() and not resume.log_beside(ckpt).exists()
