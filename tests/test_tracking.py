"""MLflow tracking: concurrent writers lose nothing; an unreachable store never costs a result; the
jobs that record their runs instead of logging them live (every stage but training) leave MLflow
the same runs once flushed, without importing it themselves."""
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from workflow_src.workflow import tracking

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import sys
sys.path.insert(0, {root!r})
from workflow_src.workflow import tracking
cfg = {{"profile": "conc"}}
for i in range(3):
    with tracking.run("train", cfg, {{"arch": "w{{}}".format(sys.argv[1]), "variant": str(i)}}, {{"i": i, "writer": sys.argv[1]}}) as r:
        r.log_metrics({{"fid": float(i), "qfid": 10.0 + i}})
        r.log_step_metrics([{{"step": s, "loss": s * 0.5}} for s in range(20)])
"""


def test_four_concurrent_writers_lose_nothing_even_creating_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # no store yet: the writers race to create it (jobs run by DVC or by hand have no onstart to do it
    # first); without the lock around creation 2 of 8 runs were recorded ("duplicate column name: step")
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT)))
    procs = [subprocess.Popen([sys.executable, str(script), str(w)], cwd=tmp_path, stderr=subprocess.PIPE, text=True) for w in range(4)]
    errs = [p.communicate()[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    import mlflow

    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    runs = mlflow.search_runs(experiment_names=["qgan-bench-conc"])
    assert len(runs) == 12
    assert (runs["status"] == "FINISHED").all()
    assert sorted(runs["params.writer"].astype(int).tolist()) == sorted([w for w in range(4) for _ in range(3)])
    assert runs["metrics.qfid"].notna().all() and runs["metrics.fid"].notna().all()
    client = mlflow.tracking.MlflowClient()
    assert all(len(client.get_metric_history(r, "loss")) == 20 for r in runs["run_id"])


def test_unreachable_store_warns_and_the_job_completes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    done = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tracking.run("train", {"profile": "x"}, {"arch": "a"}, {"p": 1}) as r:
            r.log_metrics({"fid": 1.0})
            (tmp_path / "result.json").write_text("{}")
            done = True
    assert done and (tmp_path / "result.json").exists()
    assert any("unavailable" in str(w.message) for w in caught)


RECORDER = """
import sys
sys.path.insert(0, {root!r})
from workflow_src.workflow import tracking
cfg = {{"profile": "rec"}}
open("samples.png", "wb").write(b"png")
with tracking.run("evaluate", cfg, {{"arch": "sagan", "variant": "v1"}}, {{"eval": {{"n_samples": 200}}}}) as r:
    r.log_metrics({{"fid": 1.5, "qfid": 0.25}})
    r.log_metrics({{"block_mse": 0.5}}, step=3)
    r.log_step_metrics([{{"step": s, "loss": s * 0.5}} for s in range(1500)])  # more than one log_batch holds
    r.log_artifact("samples.png")
try:
    with tracking.run("quantize", cfg, {{"arch": "sagan", "variant": "v2"}}) as r:
        raise RuntimeError("the job fails")
except RuntimeError:
    pass
assert "mlflow" not in sys.modules, "a recorded run imported MLflow"
"""


def test_recorded_runs_reach_mlflow_on_flush_as_they_were(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("QGAN_WORKFLOW_ID", "wf1")
    (tmp_path / "job.py").write_text(RECORDER.format(root=str(ROOT)))
    t0 = time.time() * 1000
    proc = subprocess.run([sys.executable, "job.py"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    t1 = time.time() * 1000
    assert len(tracking.pending()) == 2 and not (tmp_path / "mlflow.db").exists()
    assert tracking.flush() == 2
    assert tracking.pending() == [] and tracking.flush() == 0  # logged once, then nothing left
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    runs = mlflow.search_runs(experiment_names=["qgan-bench-rec"]).set_index("tags.variant")
    ok, failed = runs.loc["v1"], runs.loc["v2"]
    assert ok["status"] == "FINISHED" and failed["status"] == "FAILED"
    assert ok["tags.stage"] == "evaluate" and ok["tags.workflow_id"] == "wf1" and ok["tags.mlflow.runName"] == "evaluate-sagan-v1"
    assert ok["params.eval.n_samples"] == "200" and ok["metrics.fid"] == 1.5 and ok["metrics.qfid"] == 0.25
    assert t0 <= ok["start_time"].timestamp() * 1000 <= ok["end_time"].timestamp() * 1000 <= t1  # the job's times, not the flush's
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(ok["run_id"], "loss")
    assert sorted(m.step for m in history) == list(range(1500)) and {m.value for m in history} == {s * 0.5 for s in range(1500)}
    assert [m.step for m in client.get_metric_history(ok["run_id"], "block_mse")] == [3]
    assert [a.path for a in client.list_artifacts(ok["run_id"])] == ["samples.png"]


def test_unreachable_store_keeps_the_records_for_the_next_flush(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with tracking.run("evaluate", {"profile": "keep"}, {"arch": "a"}, {"p": 1}) as r:
        r.log_metrics({"fid": 1.0})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.warns(UserWarning, match="1 job record.*kept"):
        assert tracking.flush() == 0
    assert len(tracking.pending()) == 1
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.flush() == 1 and tracking.pending() == []


def test_tracking_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QGAN_TRACKING", "off")
    with tracking.run("train", {"profile": "x"}, {}) as r:
        r.log_metrics({"a": 1.0})
    assert not (tmp_path / "mlflow.db").exists()
    # and a job with tracking off never imports MLflow (seconds of start-up), whatever it logs
    job = ("import sys; sys.path.insert(0, %r)\nfrom workflow_src.workflow import tracking\n"
           "for stage in ('train', 'evaluate'):\n"
           "    with tracking.run(stage, {'profile': 'x'}, {'arch': 'a'}, {'p': 1}) as r:\n"
           "        r.log_params({'q': 2}); r.log_metrics({'a': 1.0}); r.log_step_metrics([{'step': 0, 'l': 1.0}]); r.log_artifact('x')\n"
           "assert 'mlflow' not in sys.modules\n") % str(ROOT)
    run = subprocess.run([sys.executable, "-c", job], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not (tmp_path / ".qgan").exists()


def test_live_mode_logs_every_stage_while_it_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("QGAN_TRACKING", "live")
    with tracking.run("evaluate", {"profile": "live"}, {"arch": "a", "variant": "v"}) as r:
        r.log_metrics({"fid": 2.0})
        import mlflow

        assert mlflow.active_run() is not None  # in the store already, before the job ends
    assert tracking.pending() == []
    mlflow.set_tracking_uri(tracking.tracking_uri())
    runs = mlflow.search_runs(experiment_names=["qgan-bench-live"])
    assert list(runs["metrics.fid"]) == [2.0] and list(runs["status"]) == ["FINISHED"]


def _record(variant: str, params=None) -> None:
    with tracking.run("evaluate", {"profile": "q"}, {"arch": "a", "variant": variant}, params or {"p": 1}) as r:
        r.log_metrics({"fid": 1.0})


def _runs(tag_filter: str = ""):
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    return mlflow.search_runs(experiment_names=["qgan-bench-q"], filter_string=tag_filter)


def test_a_bad_record_is_set_aside_and_the_others_are_logged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _record("good")
    _record("refused", {"bad!key": 1})  # MLflow allows no "!" in a param name
    corrupt = tracking.PENDING / "0-corrupt.json"
    corrupt.write_text('{"profile": "q", "start_ms"')  # a record cut short
    with pytest.warns(UserWarning) as seen:
        assert tracking.flush() == 1
    text = " ".join(str(w.message) for w in seen)
    assert "0-corrupt.json cannot be logged (not readable JSON" in text and "MLflow refused it" in text
    assert tracking.pending() == [] and sorted(p.name for p in tracking.QUARANTINE.iterdir())[0] == "0-corrupt.json"
    assert len(list(tracking.QUARANTINE.iterdir())) == 2
    assert list(_runs()["tags.variant"]) == ["good"]  # the refused one's half-made run is deleted


def test_a_flush_killed_half_way_is_redone_without_duplicates(tmp_path, monkeypatch):
    """Killed after logging a run but before deleting its record: not logged again.  Killed after
    creating a run but before finishing it: that run is deleted and the record logged afresh."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _record("done-before")
    saved = {p: p.read_text() for p in tracking.pending()}
    assert tracking.flush() == 1
    for p, text in saved.items():  # the record a killed flush would have left behind
        p.write_text(text)
    assert tracking.flush() == 0 and tracking.pending() == []
    _record("half-done")
    (path,) = tracking.pending()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    exp = client.get_experiment_by_name("qgan-bench-q").experiment_id
    client.create_run(exp, tags={tracking.RECORD_TAG: path.stem, "variant": "half-done"})  # left RUNNING
    assert tracking.flush() == 1
    runs = _runs()
    assert sorted(runs["tags.variant"]) == ["done-before", "half-done"] and set(runs["status"]) == {"FINISHED"}
    assert runs.loc[runs["tags.variant"] == "half-done", "metrics.fid"].item() == 1.0


def test_make_mlflow_server_serves_the_store_that_jobs_log_to(tmp_path, monkeypatch):
    """`make mlflow-server` (the cluster's tracking server) serves MLFLOW_DIR's store over HTTP: a
    live job (training) and a recorded one, flushed, both become runs on it, read back through the
    server, and its sqlite file is the one in MLFLOW_DIR."""
    from mlflow_server import served_store

    store = tmp_path / "store"
    store.mkdir()
    with served_store(store) as uri:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.delenv("QGAN_TRACKING", raising=False)
        with tracking.run("train", {"profile": "srv"}, {"arch": "a", "variant": "fp"}) as r:  # live
            r.log_step_metrics([{"step": s, "loss": 1.0 / (s + 1)} for s in range(5)])
        with tracking.run("evaluate", {"profile": "srv"}, {"arch": "a", "variant": "v"}) as r:  # recorded
            r.log_metrics({"fid": 3.0})
        assert len(tracking.pending()) == 1 and tracking.flush() == 1
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        runs = {run.data.tags["stage"]: run for run in client.search_runs([client.get_experiment_by_name("qgan-bench-srv").experiment_id])}
        assert set(runs) == {"train", "evaluate"} and runs["evaluate"].data.metrics["fid"] == 3.0
        assert [m.step for m in client.get_metric_history(runs["train"].info.run_id, "loss")] == list(range(5))
        assert (store / "mlflow.db").stat().st_size > 0 and not (tmp_path / "mlflow.db").exists()


def test_the_experiment_opens_on_its_runs_and_the_page_links_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    old = mlflow.create_experiment("qgan-bench-old")  # made before the kind tag existed
    text, url = tracking.experiment_link("old")
    assert url == f"http://127.0.0.1:5000/#/experiments/{old}/runs?workflowType=machine_learning" and "make mlflow-server" in text
    new_id = tracking.init_store("new")
    for exp in (old, new_id):  # recorded as model development, not GenAI
        assert mlflow.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    monkeypatch.setenv("QGAN_TRACKING", "off")
    assert tracking.experiment_link("new")[1] == ""


def test_each_variant_gets_one_parent_run_with_its_params_and_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = {"profile": "par"}
    v = {"arch": "sagan", "variant": "ar-brecq-tensor-w4a8", "method": "ar-brecq", "per_channel": False, "w_bits": 4, "a_bits": 8}
    fp = {"arch": "sagan", "variant": "fp", "method": "fp", "per_channel": None, "w_bits": 32, "a_bits": 32}

    def jobs(iters):
        with tracking.run("quantize", cfg, v, {"brecq.iters": iters, "calibration.images": 64}) as r:
            r.log_metrics({"block_mse": 0.5})
        with tracking.run("evaluate", cfg, v, {"eval.n_samples": 200}) as r:
            r.log_metrics({"fid": 3.0, "qfid": 0.25})
        with tracking.run("evaluate", cfg, fp, {"eval.n_samples": 200}) as r:
            r.log_metrics({"fid": 2.0, "qfid": 0.0})
        with tracking.run("evaluate", cfg, {**v, "arch": "cyclegan"}, {"eval.n_samples": 100}) as r:  # another arch: not this row's
            r.log_metrics({"fid": 9.0, "qfid": 9.0})
        tracking.flush()

    import mlflow

    jobs(100)
    assert tracking.link_variants("par", [v, fp]) == 2
    assert tracking.link_variants("par", [v, fp]) == 2  # the report again: the same parents
    mlflow.set_tracking_uri(tracking.tracking_uri())
    runs = mlflow.search_runs(experiment_names=["qgan-bench-par"])
    rows = runs[runs["tags.stage"] == "variant"].set_index("tags.variant")
    assert sorted(rows.index) == ["ar-brecq-tensor-w4a8", "fp"]
    row = rows.loc["ar-brecq-tensor-w4a8"]
    assert (row["params.brecq.iters"], row["params.calibration.images"], row["params.eval.n_samples"]) == ("100", "64", "200")
    assert (row["metrics.fid"], row["metrics.qfid"], row["metrics.block_mse"]) == (3.0, 0.25, 0.5) and row["status"] == "FINISHED"
    kids = runs[runs["tags.mlflow.parentRunId"] == row["run_id"]]
    assert sorted(kids["tags.stage"]) == ["evaluate", "quantize"] and set(kids["tags.arch"]) == {"sagan"}
    jobs(200)  # rerun with another hyperparameter: a new parent holds it and the newest runs
    monkeypatch.setenv("QGAN_WORKFLOW_ID", "second")
    tracking.link_variants("par", [v, fp])
    runs = mlflow.search_runs(experiment_names=["qgan-bench-par"], order_by=["attributes.start_time DESC"])
    brecq = runs[(runs["tags.stage"] == "variant") & (runs["tags.variant"] == v["variant"])]
    assert sorted(brecq["params.brecq.iters"]) == ["100", "200"]
    newest = brecq.sort_values("start_time").iloc[-1]
    assert newest["params.brecq.iters"] == "200" and (runs["tags.mlflow.parentRunId"] == newest["run_id"]).sum() == 2
    # each parent names the workflow invocation that linked it last: the FP parent was reused by the second
    assert set(runs[runs["tags.stage"] == "variant"].set_index("tags.variant").loc["fp", ["tags.workflow_id"]]) == {"second"}
    assert newest["tags.workflow_id"] == "second"
