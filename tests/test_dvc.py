"""DVC follows the Snakemake DAG: dvc.yaml is generated from it, never stale, and DVC's own reading
of dvc.yaml has the same stages, files and edges as Snakemake's plan."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_src.workflow import dvc_yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def jobs():
    return dvc_yaml.snakemake_jobs(ROOT)


def test_dvc_yaml_is_not_stale():
    committed = (ROOT / "dvc.yaml").read_text()
    assert committed == dvc_yaml.render_dvc_yaml(ROOT), "dvc.yaml is stale: run `python -m workflow_src dvc-yaml --out dvc.yaml`"


def test_dvc_and_snakemake_agree(jobs):
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = {s.name: s for s in repo.index.stages}
        graph = repo.index.graph
        assert set(stages) == {j["name"] for j in jobs}
        for j in jobs:
            st = stages[j["name"]]
            assert sorted(o.def_path for o in st.outs) == sorted(j["outputs"]), j["name"]
            deps = [d.def_path for d in st.deps if d.def_path != "params.yaml"]
            assert sorted(d for d in deps if not d.startswith("workflow_src/")) == sorted(j["inputs"]), j["name"]
            assert [d for d in deps if d.startswith("workflow_src/")] == dvc_yaml.code_deps(j["rule"], j["wildcards"], j["inputs"]), j["name"]
        # edges: a DVC stage depends on exactly the stages whose outputs Snakemake feeds into it
        producer = {o: j["name"] for j in jobs for o in j["outputs"]}
        for j in jobs:
            expected = {producer[i] for i in j["inputs"] if i in producer}
            got = {s.name for s in graph.successors(stages[j["name"]])}
            assert got == expected, j["name"]


def test_every_job_outranks_the_jobs_that_read_its_outputs(jobs):
    """Snakemake starts ready jobs in priority order (rules/common.smk: stages.rule_priorities, from
    the declared artifacts): every job's priority, as the plan prints it, is above that of each job
    reading one of its outputs, and the report's is the lowest."""
    producer = {out: j for j in jobs for out in j["outputs"]}
    edges = 0
    for j in jobs:
        for path in j["inputs"]:
            p = producer.get(path) or next((producer[d] for d in producer if path.startswith(d.rstrip("/") + "/")), None)
            if p is not None:
                edges += 1
                assert p["priority"] > j["priority"], f"{p['name']} (priority {p['priority']}) feeds {j['name']} (priority {j['priority']})"
    assert edges > len(jobs)
    assert min(j["priority"] for j in jobs) == next(j["priority"] for j in jobs if j["rule"] == "report") == 0


def test_params_name_exactly_what_each_stage_reads(jobs):
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    q = doc["quantize.s0.stylegan.ptq-quantile-tensor-w4a8"]["params"]
    m = doc["quantize.s0.stylegan.ptq-minmax-tensor-w4a8"]["params"]
    assert "archs.stylegan.quantiles" in q and "archs.stylegan.quantiles" not in m
    assert not any("sagan" in p or "cyclegan" in p for p in q)
    # the report reads the profile (MLflow), the matrix and the bootstrap size and sample count (its caption); which QAT loss
    # each row trained with (the appendix B comparison) comes with the row (results.csv's distill_loss)
    assert doc["report"]["params"] == ["profile", "matrix", "mixed.budgets", "eval.bootstrap", "eval.n_samples"]  # budgets: the variant list
    qat = doc["qat.s0.sagan.lsq-qat-tensor-w4a8"]["params"]
    assert {"qat", "archs.sagan.qat", "perceptual"} <= set(qat) and "brecq" not in qat
    assert "resources/perceptual/tinyvgg.pt" in doc["qat.s0.sagan.lsq-qat-tensor-w4a8"]["deps"]


def test_dvc_metrics_are_one_summary_file():
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert [m for st in doc.values() for item in st.get("metrics", []) for m in item] == ["reports/summary.json"]
    outs = {o if isinstance(o, str) else next(iter(o)): o for st in doc.values() for o in st.get("outs", [])}
    assert outs["metrics/s0/sagan/fp.json"] == {"metrics/s0/sagan/fp.json": {"cache": False}}  # each job's record: in git


def test_each_stage_depends_on_the_code_it_runs():
    """A stage's code dependencies are its stage module, the method and arch its wildcards name,
    and what they import: BRECQ's file for an AR-BRECQ variant, not QAT's; the arch's own file,
    not another arch's; no method file for the FP evaluation."""
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    code = lambda name: {d for d in doc[name]["deps"] if d.endswith(".py")}  # noqa: E731
    brecq = code("quantize.s0.cyclegan.ar-brecq-tensor-w4a8")
    assert {"workflow_src/workflow/quantize.py", "workflow_src/methods/brecq.py", "workflow_src/archs/cyclegan.py",
            "workflow_src/quant/adaround.py"} <= brecq
    assert "workflow_src/methods/qat.py" not in brecq and "workflow_src/archs/sagan.py" not in brecq
    assert "workflow_src/methods/qat.py" in code("qat.s0.cyclegan.ma-qat-tensor-w4a8")
    assert "workflow_src/methods/qat.py" in code("evaluate.s0.cyclegan.ma-qat-tensor-w4a8")  # loading the model imports its method
    assert {"workflow_src/methods/qat.py", "workflow_src/methods/brecq.py"} <= code("sample_figure.cyclegan")  # every method's models
    fp = code("evaluate_fp.s0.cyclegan")
    assert "workflow_src/workflow/evaluate.py" in fp and not any(d.startswith("workflow_src/methods/") for d in fp)
    assert all((ROOT / d).is_file() for s in doc for d in code(s))


def _dvc(args, cwd, check=True, warm=False):
    """`dvc ARGS`; warm: under `python -m workflow_src.workflow.forkserver run`, its stages forked
    from one warm process (the project's own copy of workflow_src)."""
    warm_cmd = [sys.executable, "-m", "workflow_src.workflow.forkserver", "run", "--"] if warm else []
    proc = subprocess.run([*warm_cmd, sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1", "QGAN_TRACKING": "off"})
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory):
    """A copy of the project whose params.yaml is the micro config cut to one arch, three methods
    (min-max and quantile PTQ, MA-QAT: the quantile pair's readers under both rules and a method
    that does not read it) and w4, with its own generated dvc.yaml, built once with `dvc repro`."""
    from workflow_src import config as qcfg

    proj = tmp_path_factory.mktemp("dvcproj")
    for item in ("Snakefile", "rules", "workflow_src", "profiles", "envs", "configs", "Makefile"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, proj / item)
    cfg = qcfg.deep_merge(qcfg.load_yaml(ROOT / "params.yaml"), qcfg.load_yaml(ROOT / "configs" / "micro.yaml"))
    cfg["matrix"].update(archs=["sagan"], methods=["ptq-minmax", "ptq-quantile", "ma-qat"], w_bits=[4], exclude=[], include=[])
    cfg["archs"]["sagan"]["quantiles"] = {"activation": {"upper": 0.9999, "lower": 0.0001}, "weight": {"upper": 0.9999, "lower": 0.0001}}
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run([sys.executable, "-m", "workflow_src", "dvc-yaml", "--out", "dvc.yaml"], cwd=proj, check=True)
    _dvc(["init", "--no-scm", "-q"], proj)
    _dvc(["config", "core.analytics", "false"], proj)
    _dvc(["repro", "-q"], proj, warm=True)
    assert (proj / ".qgan" / "forkserver.log").read_text().count("exited 0") == len(yaml.safe_load((proj / "dvc.yaml").read_text())["stages"])
    return proj


@pytest.mark.workflow
def test_dvc_repro_builds_then_is_a_no_op(dvc_project):
    assert (dvc_project / "reports" / "results.csv").exists()
    assert (dvc_project / "dvc.lock").exists()
    out = _dvc(["repro"], dvc_project)
    assert "Stage 'report' didn't change" in out and "Running stage" not in out
    assert "up to date" in _dvc(["status"], dvc_project).lower()
    import json

    import pandas as pd

    shown = json.loads(_dvc(["metrics", "show", "--json"], dvc_project))
    files = {f: d["data"] for ws in shown.values() for f, d in ws["data"].items()}
    assert list(files) == ["reports/summary.json"]
    results = pd.read_csv(dvc_project / "reports" / "results.csv")
    variants = files["reports/summary.json"]["sagan"]
    assert len(variants) == len(results)
    for _, r in results.iterrows():
        name = "fp" if r["method"] == "fp" else f"{r['method']}-{'channel' if r['per_channel'] else 'tensor'}-w{r['w_bits']}a{r['a_bits']}"
        assert variants[name]["qfid"] == pytest.approx(r["qfid"], rel=1e-5) and variants[name]["fid"] == pytest.approx(r["fid"], rel=1e-5)


def _tool_env():
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "QGAN_TRACKING": "off",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # this environment's dvc and snakemake


def _make_adopt(project):
    # `-o`: the copy has no environment of its own to set up; it uses this one
    proc = subprocess.run(["make", "-o", ".venv/.installed", "adopt"], cwd=project, capture_output=True, text=True, env=_tool_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.workflow
def test_make_adopt_hands_a_tree_from_one_tool_to_the_other(dvc_project):
    """Built by DVC: after `make adopt` Snakemake has nothing to run either.  Then Snakemake reruns
    the report: DVC sees exactly that stage changed, and `make adopt` leaves both with nothing to run."""
    import json

    out = _make_adopt(dvc_project)
    assert "Snakemake: nothing to be done." in out and "Data and pipelines are up to date" in out, out
    smk = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--forcerun", "report", "report"], cwd=dvc_project,
                         capture_output=True, text=True, env=_tool_env())
    assert smk.returncode == 0, smk.stderr[-3000:]
    assert set(json.loads(_dvc(["status", "--json"], dvc_project))) == {"report"}
    out = _make_adopt(dvc_project)
    assert "Snakemake: nothing to be done." in out and "Data and pipelines are up to date" in out, out
    assert json.loads(_dvc(["status", "--json"], dvc_project)) == {}


@pytest.mark.workflow
def test_changing_one_quantile_reruns_only_its_readers(dvc_project):
    before = (dvc_project / "params.yaml").read_text()
    params = yaml.safe_load(before)
    params["archs"]["sagan"]["quantiles"]["activation"]["upper"] = 0.995
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        _check_only_quantile_readers_change(dvc_project, params)
    finally:  # the other tests share the built project: its params as they were, nothing to rerun
        (dvc_project / "params.yaml").write_text(before)


def _check_only_quantile_readers_change(dvc_project, params):
    status = _dvc(["status", "--json"], dvc_project)
    import json

    changed = set(json.loads(status))
    # the methods whose files say they need the quantile pair (BRECQ and QAT start from it); min-max does not read it
    from workflow_src import registry

    from workflow_src import config as qcfg

    readers = [v for v in qcfg.variants(params) if registry.method(v.method).may_need("quantiles")]
    assert {registry.method(v.method).rule for v in readers} == {"quantize", "qat"}
    # and the layer sensitivity, which quantizes with the swept method (quantile PTQ) from the arch's pair
    assert changed == {f"{registry.method(v.method).rule}.s0.sagan.{v.name}" for v in readers} | {"sensitivity.s0.sagan"}
    dry = _dvc(["repro", "--dry"], dvc_project)
    ran = {line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")}
    assert ran and not any("ptq-minmax" in s or "train" in s or "distill" in s for s in ran), ran


@pytest.mark.workflow
def test_editing_a_method_file_reruns_only_the_stages_that_run_it(dvc_project):
    """A comment appended to MA-QAT's file changes exactly the stages whose code it is (its
    training, evaluation, export and the figures and report that load its models): never the
    FP training, the distillation set or the PTQ variants."""
    qat = dvc_project / "workflow_src" / "methods" / "qat.py"
    before = qat.read_text()
    qat.write_text(before + "# an edit\n")
    try:
        import json

        changed = set(json.loads(_dvc(["status", "--json"], dvc_project)))
    finally:  # the other tests share the built project
        qat.write_text(before)
    assert "qat.s0.sagan.ma-qat-tensor-w4a8" in changed
    assert changed and all("ma-qat" in s or s.split(".")[0] in ("report", "sample_figure") for s in changed), sorted(changed)
    assert "up to date" in _dvc(["status"], dvc_project).lower()


@pytest.mark.workflow
def test_directory_remote_round_trip(dvc_project, tmp_path):
    _dvc(["remote", "add", "-f", "-d", "local", str(tmp_path / "remote")], dvc_project)
    _dvc(["push", "-q"], dvc_project)
    shutil.rmtree(dvc_project / "models")
    (dvc_project / "reports" / "results.csv").unlink()
    assert "deleted" in _dvc(["status"], dvc_project)
    _dvc(["pull", "-q"], dvc_project)
    assert (dvc_project / "models" / "s0" / "fp" / "sagan.pt").exists() and (dvc_project / "reports" / "results.csv").exists()
    assert "deleted" not in _dvc(["status"], dvc_project)


@pytest.mark.workflow
def test_dvc_exp_run_sweeps_a_param(dvc_project):
    git = lambda *a: subprocess.run(["git", *a], cwd=dvc_project, check=True, capture_output=True, text=True)
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "init")
    _dvc(["config", "core.no_scm", "false"], dvc_project)
    # the project was built without git: saving its outputs again now writes their .gitignore entries,
    # so that the baseline commit holds the pipeline and the lock, not the outputs
    _dvc(["commit", "-f", "-q"], dvc_project)
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "baseline")
    _dvc(["exp", "run", "-q", "-n", "q999", "-S", "archs.sagan.quantiles.activation.upper=0.999"], dvc_project, warm=True)
    shown = _dvc(["exp", "show", "--json"], dvc_project)
    assert "q999" in shown and "0.999" in shown


@pytest.mark.workflow
def test_adding_a_seed_leaves_every_stage_of_the_first_seed_as_it_was(dvc_project):
    """seeds [0] -> [0, 7], dvc.yaml regenerated: DVC sees the new seed's stages (never run) and the
    report that aggregates them changed, not one stage of seed 0 and nothing shared."""
    import json

    before = {p: (dvc_project / p).read_text() for p in ("params.yaml", "dvc.yaml")}
    params = yaml.safe_load(before["params.yaml"])
    params["seeds"] = [0, 7]
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        subprocess.run([sys.executable, "-m", "workflow_src", "dvc-yaml", "--out", "dvc.yaml"], cwd=dvc_project, check=True)
        stages = set(yaml.safe_load((dvc_project / "dvc.yaml").read_text())["stages"])
        changed = set(json.loads(_dvc(["status", "--json"], dvc_project)))
    finally:  # the other tests share the built project
        for p, text in before.items():
            (dvc_project / p).write_text(text)
    seed0, seed7 = {s for s in stages if ".s0." in s}, {s for s in stages if ".s7." in s}
    # seed 7 runs what its results need: every job of seed 0 but those only the first seed's figures and exports read
    assert seed7 and seed7 <= {s.replace(".s0.", ".s7.") for s in seed0}
    assert {s.split(".")[0] for s in seed0 - {s.replace(".s7.", ".s0.") for s in seed7}} <= {"quantile_sweep", "sensitivity", "export", "export_fp"}
    assert {s for s in seed7 if s.startswith("evaluate")} == {s.replace(".s0.", ".s7.") for s in seed0 if s.startswith("evaluate")}
    assert changed == seed7 | {"report"}, sorted(changed)
