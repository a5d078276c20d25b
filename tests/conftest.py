import os
import sys
from pathlib import Path

# Workflow jobs (Snakemake shell commands, DVC stage commands) call `python`: make it this interpreter.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("MPLBACKEND", "Agg")

# The tests' tensors and models are tiny: one intra-op thread is fastest, and leaves the other core
# to the workflow jobs some tests start.
import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def published_stylegan_checkpoint(tmp_path_factory):
    """A full-size checkpoint in rosinality's published layout (random values), written once."""
    from rosinality_layout import write_published_checkpoint

    path = tmp_path_factory.mktemp("published") / "stylegan-ffhq-128.model"
    write_published_checkpoint(path)
    return path


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server over tmp_path (tests/local_http.py): archives, a flaky endpoint, a
    stalling one, HTML pages and Google Drive's confirmation flow."""
    from local_http import LocalServer

    server = LocalServer(tmp_path)
    yield server
    server.close()


@pytest.fixture(scope="session")
def random_fid_inception(tmp_path_factory):
    """A random-weight stand-in for pytorch-fid's FID Inception weights (the real file cannot be
    downloaded here), saved where both pytorch-fid and our loader look: <dir>/checkpoints/<file>."""
    from inception_standin import save_random_fid_inception

    root = tmp_path_factory.mktemp("torchhub")
    save_random_fid_inception(root)
    return root


@pytest.fixture
def check_device():
    """The checking device of tests/devicecheck.py: ``with check_device() as mode:`` runs a block
    with ``torch.device("meta")`` standing for a GPU (values computed on the CPU, a tensor left on
    the CPU raises :class:`devicecheck.DevicePlacementError`, host syncs recorded in ``mode.events``)."""
    from devicecheck import checking_device

    return checking_device
