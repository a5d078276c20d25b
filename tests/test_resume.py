"""The fingerprint a checkpoint must match to be resumed (workflow_src/resume.py), and the file
plumbing beneath every checkpoint and output (workflow_src/files.py, utils.py)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from workflow_src import files, resume, utils

PACKAGE = Path(resume.__file__).resolve().parent
ROOT = PACKAGE.parent


def test_the_code_of_a_job_is_the_closure_of_its_package_imports():
    train = resume.source_digests(("workflow_src.workflow.training", "workflow_src.archs.sagan"))
    for f in ("workflow/training.py", "__init__.py", "datasets/prepared.py", "datasets/download.py", "archs/sagan.py",
              "archs/layers.py", "utils.py", "files.py", "config/params.py"):
        assert f"workflow_src/{f}" in train, f
    # bookkeeping (tracking, the stage table) and what the job does not import
    for f in ("reporting/report.py", "workflow/stages.py", "workflow/tracking.py", "methods/brecq.py", "deploy/onnx_qdq.py",
              "archs/cyclegan.py"):
        assert f"workflow_src/{f}" not in train, f
    brecq = resume.source_digests(("workflow_src.methods.brecq",))
    for f in ("methods/brecq.py", "methods/__init__.py", "methods/ptq.py", "quant/blocks.py", "quant/adaround.py", "utils.py"):
        assert f"workflow_src/{f}" in brecq, f
    assert brecq["workflow_src/quant/blocks.py"] == hashlib.sha256((PACKAGE / "quant" / "blocks.py").read_bytes()).hexdigest()


def test_a_job_fingerprint_covers_the_arch_module_it_loads_by_name(tmp_path):
    """Archs come from the registry (importlib), outside the import closure of the job's module;
    :func:`resume.modules_of` names them, so a change to the arch's file restarts the job."""
    from workflow_src.workflow.artifacts import make_arch
    from workflow_src import config as qcfg

    cfg = qcfg.load([ROOT / "params.yaml"])
    arch = make_arch(cfg, "sagan")
    assert resume.modules_of(arch, None) == ["workflow_src.archs.sagan"]
    fp = resume.job_fingerprint({"k": 1}, ["workflow_src.workflow.training", *resume.modules_of(arch)])
    assert "workflow_src/archs/sagan.py" in fp["code"]
    assert "workflow_src/archs/sagan.py" not in resume.job_fingerprint({"k": 1}, ["workflow_src.workflow.training"])["code"]


def test_a_checkpoint_is_resumed_only_by_its_own_fingerprint(tmp_path, capsys):
    fp = resume.fingerprint({"seed": 0, "lr": 1e-3, "nested": {"a": [1, 2]}}, ["workflow_src.utils"])
    ckpt = tmp_path / "x.ckpt.pt"
    utils.torch_save({"step": 5, "fingerprint": fp}, ckpt)
    assert resume.load_checkpoint(ckpt, fp)["step"] == 5
    other = resume.fingerprint({"seed": 1, "lr": 1e-3, "nested": {"a": [1, 3]}}, ["workflow_src.utils"])
    assert resume.load_checkpoint(ckpt, other) is None
    said = capsys.readouterr().out
    assert "params differ (nested.a: [1, 2] -> [1, 3], seed: 0 -> 1)" in said and "starting over" in said, said
    assert not ckpt.exists()
    utils.torch_save({"step": 5}, ckpt)  # written before fingerprints existed
    assert resume.load_checkpoint(ckpt, fp) is None
    assert "no fingerprint" in capsys.readouterr().out
    assert resume.load_checkpoint(tmp_path / "missing.pt", fp) is None


def test_tensor_digest_is_by_value():
    a = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(0), "n": torch.tensor(3)}
    assert resume.tensor_digest(a) == resume.tensor_digest({k: v.clone() for k, v in a.items()})
    assert resume.tensor_digest(a) != resume.tensor_digest({**a, "w": a["w"] + 1e-6})
    assert resume.tensor_digest(a) != resume.tensor_digest({**a, "w": a["w"].double()})


# ------------------------------------------------------------------ files
def test_outputs_are_readable_as_the_umask_says(tmp_path):
    """mkstemp made every output owner-only (0600) whatever the umask."""
    old = os.umask(0o022)
    try:
        files.write_json(tmp_path / "a.json", {"x": 1})
        utils.torch_save({"x": torch.zeros(1)}, tmp_path / "m.pt")
        with files.atomic_path(tmp_path / "p.png") as tmp:
            tmp.write_bytes(b"png")
    finally:
        os.umask(old)
    for name in ("a.json", "m.pt", "p.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    old = os.umask(0o077)
    try:
        files.write_json(tmp_path / "private.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600


def test_torch_save_syncs_the_data_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    utils.torch_save({"x": torch.ones(3)}, tmp_path / "c.ckpt.pt")
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert Path(events[0][1]).parent == tmp_path and Path(events[0][1]).name.startswith(".c.ckpt.pt.")  # the data
    assert events[2][1] == str(tmp_path)  # then the directory entry


def test_truncate_rows_drops_a_torn_last_line(tmp_path):
    """A kill in the middle of an append leaves a partial row; '1' is what is left of step 12's row
    and used to be kept as a row of step 1."""
    log = tmp_path / "l.csv"
    files.append_rows(log, [{"step": s, "loss": 0.5 + s} for s in range(8)])
    with open(log, "a") as fh:
        fh.write("1")
    files.truncate_rows(log, "step", 5)
    assert log.read_text().splitlines() == ["step,loss"] + [f"{s},{0.5 + s}" for s in range(5)]
    with open(log, "a") as fh:
        fh.write("3,0.")  # torn inside a field
    files.truncate_rows(log, "step", 10)
    assert [int(l.split(",")[0]) for l in log.read_text().splitlines()[1:]] == list(range(5))


def test_truncate_rows_loses_nothing_when_killed_while_rewriting(tmp_path, monkeypatch):
    log = tmp_path / "l.csv"
    files.append_rows(log, [{"step": s, "loss": s} for s in range(6)])
    before = log.read_text()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "append_rows", killed)
    with pytest.raises(KeyboardInterrupt):
        files.truncate_rows(log, "step", 3)
    assert log.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["l.csv"]
