"""DVC follows the Snakemake DAG: dvc.yaml is generated from it, never stale, and DVC's own reading
of dvc.yaml has the same stages, files and edges as Snakemake's plan."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_src import dag

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def jobs():
    return dag.snakemake_jobs(ROOT)


def test_dvc_yaml_is_not_stale():
    committed = (ROOT / "dvc.yaml").read_text()
    assert committed == dag.render_dvc_yaml(ROOT), "dvc.yaml is stale: run `python -m workflow_src dvc-yaml --out dvc.yaml`"


def test_dvc_and_snakemake_agree(jobs):
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = {s.name: s for s in repo.index.stages}
        graph = repo.index.graph
        assert set(stages) == {j["name"] for j in jobs}
        for j in jobs:
            st = stages[j["name"]]
            assert sorted(o.def_path for o in st.outs) == sorted(j["outputs"]), j["name"]
            deps = sorted(d.def_path for d in st.deps if d.def_path != "params.yaml")
            assert deps == sorted(j["inputs"]), j["name"]
        # edges: a DVC stage depends on exactly the stages whose outputs Snakemake feeds into it
        producer = {o: j["name"] for j in jobs for o in j["outputs"]}
        for j in jobs:
            expected = {producer[i] for i in j["inputs"] if i in producer}
            got = {s.name for s in graph.successors(stages[j["name"]])}
            assert got == expected, j["name"]


def test_params_name_exactly_what_each_stage_reads(jobs):
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    q = doc["quantize.stylegan.ptq-quantile-tensor-w4a8"]["params"]
    m = doc["quantize.stylegan.ptq-minmax-tensor-w4a8"]["params"]
    assert "archs.stylegan.quantiles" in q and "archs.stylegan.quantiles" not in m
    assert not any("sagan" in p or "cyclegan" in p for p in q)
    assert doc["report"]["params"] == ["matrix"]
