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


@pytest.fixture(scope="module")
def micro_sagan():
    """The micro config, an untrained micro SAGAN (convs, linears, attention products; torch seed 0) and
    96 of its latents (seed 1)."""
    from workflow_src import config as qcfg
    from workflow_src.workflow.artifacts import make_arch

    cfg = qcfg.load([Path(__file__).resolve().parents[1] / "params.yaml", Path(__file__).resolve().parents[1] / "configs" / "micro.yaml"])
    a = make_arch(cfg, "sagan")
    torch.manual_seed(0)
    return cfg, a.build_generator().eval(), a.sample_inputs(96, torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """The directory of one whole run of the micro workflow (tests/micro.py), shared by the tests that
    inspect it (the workflow's, and the runner's kill -9 test as its uninterrupted reference)."""
    from micro import run_micro

    return run_micro(tmp_path_factory.mktemp("micro"))


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


# ----------------------------------------------------------------------------- the paper-smoke run
# The paper tests (marker `paper`, tests/test_paper_smoke.py) inspect one run of the paper-smoke DAG.
# It starts as soon as the session knows they are selected, in the background on one core, so that
# it computes while the rest of the suite runs (mostly one thread; the SLURM run, also in the
# background, mostly waits on the scheduler's polling), and the paper tests run last and wait for it.  Alone (`pytest -m paper`) it
# gets both cores.
PAPER_RUN: dict = {}


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected
def pytest_collection_modifyitems(session, config, items):
    # the tests of the background runs last, in the order the runs tend to finish: SLURM, then paper-smoke
    slurm = [i for i in items if i.get_closest_marker("slurm")]
    paper = [i for i in items if i.get_closest_marker("paper")]
    items[:] = [i for i in items if not i.get_closest_marker("slurm") and not i.get_closest_marker("paper")] + slurm + paper
    if not paper or config.option.collectonly:
        return
    import shlex
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parents[1]
    base = Path(tempfile.mkdtemp(prefix="qgan-paper-smoke-"))
    work, inputs = base / "run", base / "inputs"
    work.mkdir()
    configs = [root / "configs" / "paper.yaml", root / "configs" / "paper-smoke.yaml", inputs / "inputs.yaml"]
    cores = 2 if len(paper) == len(items) else 1
    py = shlex.quote(sys.executable)
    cmd = (f"{py} {shlex.quote(str(root / 'tests' / 'paper_inputs.py'))} {shlex.quote(str(inputs))} > /dev/null && "
           f"exec {py} -m snakemake -s {shlex.quote(str(root / 'Snakefile'))} -d {shlex.quote(str(work))} --cores {cores} report "
           f"--configfile {' '.join(shlex.quote(str(c)) for c in configs)}")
    with open(base / "snakemake.log", "w") as log:  # the child holds its own descriptor
        proc = subprocess.Popen(["bash", "-c", cmd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    PAPER_RUN.update(proc=proc, base=base, work=work, configs=configs, log=base / "snakemake.log")


def pytest_sessionfinish(session, exitstatus):
    proc = PAPER_RUN.get("proc")
    if proc is not None and proc.poll() is None:  # the session ended before the paper tests waited for it
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    if PAPER_RUN.get("base") is not None:
        import shutil

        shutil.rmtree(PAPER_RUN["base"], ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def slurm_background(request, tmp_path_factory):
    """The SLURM integration run (tests/slurm_run.py), started when the session's first test starts
    if any SLURM test is selected (else None); its cluster is torn down when the session ends, and a
    failure to do so is an error of the session."""
    if not any(i.get_closest_marker("slurm") for i in request.session.items):
        yield None
        return
    from slurm_run import SlurmRun

    run = SlurmRun(tmp_path_factory.mktemp("slurm")).start()
    yield run
    problem = run.close()
    assert problem is None, problem


@pytest.fixture(scope="session")
def paper_run():
    """(run directory, configs) of the finished paper-smoke run; fails with its log if it failed."""
    if not PAPER_RUN:
        pytest.skip("no paper test was collected")
    proc = PAPER_RUN["proc"]
    rc = proc.wait()
    if rc != 0:
        work = PAPER_RUN["work"]
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "logs").rglob("*.log"))) if (work / "logs").exists() else ""
        pytest.fail(f"paper-smoke workflow failed (exit {rc}):\n{PAPER_RUN['log'].read_text()[-6000:]}\n{logs}")
    return PAPER_RUN["work"], PAPER_RUN["configs"]
