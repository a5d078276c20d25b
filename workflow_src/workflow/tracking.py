"""MLflow tracking: every training, quantization, evaluation and export job is one run.

* Live or recorded: training jobs (:data:`LIVE_STAGES`: FP training and QAT, which run for hours on
  the paper profile) talk to MLflow while they run, so their loss curves show as they come.  Every
  other job writes its run -- tags, params, metrics with their steps and times, artifacts, status --
  to a record under ``.qgan/mlflow-pending/`` and never imports MLflow (measured: importing it and
  opening the sqlite store cost 4 s a job on this machine, more than most evaluate jobs compute).
  :func:`flush` logs the pending records as MLflow runs, one process for all of them: Snakemake's
  onsuccess and onerror handlers call it, so does the report stage (for DVC), and so does
  ``python -m workflow_src track``.  A record is deleted only once its run is logged; an unreachable
  store leaves it for the next flush.

* Store: ``MLFLOW_TRACKING_URI`` when set (a shared server); otherwise ``sqlite:///mlflow.db`` in the
  working directory with artifacts under ``./mlruns`` -- the local, file-backed store MLflow 3
  recommends (its plain file store is deprecated).  Concurrent first-time schema migrations race, so
  whichever process comes first creates the database under a file lock (``mlflow.db.lock``); the
  workflow's onstart does it before jobs start (:func:`init_store`).
* One experiment per profile (``qgan-bench-<profile>``); runs are tagged with arch, method,
  per_channel, w_bits, a_bits, profile, stage and the workflow invocation (``workflow_id``).
* Logging never costs a result: any tracking failure becomes a warning and the job goes on.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ContextManager, Dict, Iterator, List, Mapping, Optional

WORKFLOW_ENV = "QGAN_WORKFLOW_ID"
DISABLE_ENV = "QGAN_TRACKING"  # "off": no tracking at all; "live": every stage logs while it runs
LIVE_STAGES = frozenset({"train"})  # stages logged while they run; the others are recorded, then flushed
PENDING = Path(".qgan") / "mlflow-pending"  # relative to the working directory, like mlflow.db


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the sqlite store in the working directory as an absolute URI
    (MLflow caches stores by URI, so a relative one would follow the first directory it saw)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def experiment_name(profile: str) -> str:
    return f"qgan-bench-{profile}"


def _configure() -> None:
    # fail fast instead of retrying for minutes when a server is unreachable
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _store_lock() -> ContextManager:
    """One process at a time opens the local sqlite store first and creates experiments in it:
    MLflow's first-time schema migration and experiment creation race between processes (measured:
    4 fresh processes, 2 of 8 runs recorded, "duplicate column name: step"; ``set_tracking_uri``
    already starts opening the store, so it goes under the lock too).  A lock file beside the
    database (``filelock``), so jobs run by hand or by DVC are covered too; a tracking server
    (``MLFLOW_TRACKING_URI``) serialises this itself."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(str(Path("mlflow.db.lock").resolve()), timeout=600)


# The experiment's kind as MLflow 3 records it: classic model development, not GenAI
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def _experiment_id(profile: str) -> str:
    """The profile's experiment, created (with the store) if need be."""
    import mlflow

    _configure()
    with _store_lock():
        mlflow.set_tracking_uri(tracking_uri())
        exp = mlflow.get_experiment_by_name(experiment_name(profile))
        if exp is None:
            artifacts = None if os.environ.get("MLFLOW_TRACKING_URI") else Path("mlruns").resolve().as_uri()
            return mlflow.create_experiment(experiment_name(profile), artifact_location=artifacts, tags=dict([EXPERIMENT_KIND]))
        if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # an experiment made before the tag was set
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id


def init_store(profile: str) -> Optional[str]:
    """Create the store and the profile's experiment (once, before parallel jobs; every job's
    :func:`run` would do it too, under the same lock)."""
    if os.environ.get(DISABLE_ENV) == "off":
        return None
    try:
        return _experiment_id(profile)
    except Exception as exc:  # noqa: BLE001 - tracking must never break the workflow
        warnings.warn(f"MLflow store {tracking_uri()!r} unavailable, runs will not be tracked: {exc}")
        return None


LOCAL_UI = "http://127.0.0.1:5000"  # where `make mlflow-server` serves the local store


def experiment_link(profile: str) -> tuple:
    """(text, URL) of the profile's experiment in the MLflow UI, opened on its runs: the tracking
    server's own address, or for the local store the address `make mlflow-server` serves it on;
    URL "" when tracking is off or the store cannot be reached."""
    name = experiment_name(profile)
    if os.environ.get(DISABLE_ENV) == "off":
        return f"not tracked ({DISABLE_ENV}=off)", ""
    exp = init_store(profile)
    if exp is None:
        return f"experiment {name}: store {tracking_uri()} unavailable when this page was written", ""
    server = os.environ.get("MLFLOW_TRACKING_URI", "")
    base = server if server.startswith(("http://", "https://")) else LOCAL_UI
    how = "" if base == server else f" (store {tracking_uri()}; serve it with `make mlflow-server`)"
    # workflowType: MLflow 3.17's UI opens every experiment on its GenAI overview, whatever the experiment's
    # kind tag says (seen in headless Chromium), unless the address asks for the model-training views
    return f"experiment {name}, its runs{how}", f"{base.rstrip('/')}/#/experiments/{exp}/runs?workflowType=machine_learning"


def _flat(d: Mapping[str, Any], prefix: str = "") -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


class Run:
    """A tracked job; every method is a no-op (with one warning) once tracking has failed."""

    def __init__(self, run: Any = None):
        self._run = run

    def _call(self, fn, *args, **kwargs) -> None:
        if self._run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"MLflow logging failed, tracking stops for this job: {exc}")
            self._run = None

    # Each method returns before importing MLflow when there is no run (tracking off or failed):
    # the import alone costs seconds.
    def log_params(self, params: Mapping[str, Any]) -> None:
        if self._run is None:
            return
        import mlflow

        self._call(mlflow.log_params, _flat(params))

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        if self._run is None:
            return
        import mlflow

        self._call(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step)

    def log_step_metrics(self, rows: List[Mapping[str, float]]) -> None:
        """Per-step losses (rows with a ``step`` key), in one batch."""
        if self._run is None or not rows:
            return
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        now = _now_ms()
        metrics = [Metric(k, float(v), now, int(r["step"])) for r in rows for k, v in r.items() if k != "step"]
        client = MlflowClient()
        for i in range(0, len(metrics), 1000):
            self._call(client.log_batch, self._run.info.run_id, metrics=metrics[i : i + 1000])

    def log_artifact(self, path: str | Path) -> None:
        if self._run is None:
            return
        import mlflow

        self._call(mlflow.log_artifact, str(path))


class Record:
    """A job's run kept in memory and written to :data:`PENDING` when the job ends; the methods of
    :class:`Run`, without MLflow."""

    def __init__(self, profile: str, name: str, tags: Mapping[str, str]):
        self.data: Dict[str, Any] = {"profile": profile, "run_name": name, "tags": dict(tags), "params": {}, "metrics": [],
                                     "artifacts": [], "start_ms": _now_ms(), "end_ms": None, "status": "RUNNING"}

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.data["params"].update(_flat(params))

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        now = _now_ms()
        self.data["metrics"] += [[k, float(v), now, int(step or 0)] for k, v in metrics.items()]

    def log_step_metrics(self, rows: List[Mapping[str, float]]) -> None:
        now = _now_ms()
        self.data["metrics"] += [[k, float(v), now, int(r["step"])] for r in rows for k, v in r.items() if k != "step"]

    def log_artifact(self, path: str | Path) -> None:
        self.data["artifacts"].append(str(Path(path).resolve()))

    def close(self, status: str) -> None:
        from ..files import atomic_write_text

        self.data.update(status=status, end_ms=_now_ms())
        atomic_write_text(PENDING / f"{self.data['start_ms']}-{uuid.uuid4().hex[:12]}.json", json.dumps(self.data))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _tags_and_name(stage: str, cfg: Mapping[str, Any], tags: Mapping[str, Any]):
    """The run's tags (stage, profile, the caller's, the seed it ran with) and its name
    (stage-arch-variant-s<seed> for an arch's job)."""
    from ..config.trace import plain

    all_tags = {"stage": stage, "profile": cfg["profile"], **{k: str(v) for k, v in tags.items()}}
    seed = plain(cfg).get("seed")  # a replicate's job runs with its own (the CLI's --seed); not a params read
    if seed is not None:
        all_tags.setdefault("seed", str(seed))
    if os.environ.get(WORKFLOW_ENV):
        all_tags["workflow_id"] = os.environ[WORKFLOW_ENV]
    name = "-".join(str(all_tags[k]) for k in ("stage", "arch", "variant") if k in all_tags)
    return all_tags, name + (f"-s{all_tags['seed']}" if "arch" in all_tags and "seed" in all_tags else "")


@contextmanager
def run(stage: str, cfg: Mapping[str, Any], tags: Mapping[str, Any], params: Optional[Mapping[str, Any]] = None) -> Iterator[Run]:
    """``with run("evaluate", cfg, {"arch": ...}) as r: r.log_metrics(...)``: logged live for
    :data:`LIVE_STAGES`, else recorded for :func:`flush`."""
    if os.environ.get(DISABLE_ENV) == "off":
        yield Run(None)
        return
    all_tags, name = _tags_and_name(stage, cfg, tags)
    if stage not in LIVE_STAGES and os.environ.get(DISABLE_ENV) != "live":
        rec = Record(cfg["profile"], name, all_tags)
        if params:
            rec.log_params(params)
        status = "FAILED"
        try:
            yield rec  # type: ignore[misc]
            status = "FINISHED"
        finally:
            try:
                rec.close(status)
            except OSError as exc:
                warnings.warn(f"could not write this job's MLflow record under {PENDING}: {exc}")
        return
    active = None
    try:
        import mlflow

        mlflow.set_experiment(experiment_id=_experiment_id(cfg["profile"]))
        active = mlflow.start_run(run_name=name, tags=all_tags)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"MLflow store {tracking_uri()!r} unavailable, this job is not tracked: {exc}")
        active = None
    r = Run(active)
    if params:
        r.log_params(params)
    status = "FAILED"
    try:
        yield r
        status = "FINISHED"
    finally:
        if r._run is not None:
            try:
                import mlflow

                mlflow.end_run(status=status)
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"MLflow could not close the run: {exc}")


def pending() -> List[Path]:
    """The records not yet logged, oldest first."""
    return sorted(PENDING.glob("*.json")) if PENDING.is_dir() else []


QUARANTINE = PENDING / "unreadable"  # records that cannot be logged as they are (kept for a look, never retried)
RECORD_TAG = "qgan.record"  # each flushed run names its record: a flush killed half-way is redone, not duplicated
_FIELDS = ("profile", "start_ms", "end_ms", "tags", "run_name", "params", "metrics", "artifacts", "status")


def _read_record(path: Path) -> Dict[str, Any]:
    """A pending record, or ValueError naming what is wrong with it."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"not readable JSON ({exc})") from None
    missing = [k for k in _FIELDS if not isinstance(rec, dict) or k not in rec]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return rec


def _quarantine(path: Path, why: str) -> None:
    QUARANTINE.mkdir(parents=True, exist_ok=True)
    os.replace(path, QUARANTINE / path.name)
    warnings.warn(f"MLflow record {path.name} cannot be logged ({why}): moved to {QUARANTINE / path.name}")


def flush() -> int:
    """Log every pending record as an MLflow run (start and end times, status, tags, params, metric
    histories, artifacts) and delete it; returns how many were logged.  Nothing pending: returns at
    once without importing MLflow.  One flush at a time (a lock beside the records).  A record that
    cannot be logged as it is (unreadable, or refused by MLflow) is moved to ``unreadable/`` with a
    warning and the others go on; a store that cannot be reached warns and keeps the records for the
    next flush.  Each run is tagged with its record: a run a killed flush left unfinished is deleted
    and logged again, one it finished is not logged twice."""
    if os.environ.get(DISABLE_ENV) == "off" or not pending():
        return 0
    from filelock import FileLock

    done = 0
    with FileLock(str(PENDING.resolve()) + ".lock", timeout=600):
        records = pending()
        if not records:
            return 0
        try:
            from mlflow.entities import Metric, Param, RunStatus
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode
            from mlflow.tracking import MlflowClient

            _configure()
            client = MlflowClient(tracking_uri())
            experiments: Dict[str, str] = {}
            for path in records:
                try:
                    rec = _read_record(path)
                except ValueError as exc:
                    _quarantine(path, str(exc))
                    continue
                if rec["profile"] not in experiments:
                    experiments[rec["profile"]] = _experiment_id(rec["profile"])
                earlier = client.search_runs([experiments[rec["profile"]]], filter_string=f"tags.`{RECORD_TAG}` = '{path.stem}'")
                if any(RunStatus.is_terminated(RunStatus.from_string(r.info.status)) for r in earlier):
                    path.unlink()  # logged in full by a flush that died before deleting the record
                    continue
                for r in earlier:  # begun by a flush that died half-way
                    client.delete_run(r.info.run_id)
                r = client.create_run(experiments[rec["profile"]], start_time=rec["start_ms"], tags={**rec["tags"], RECORD_TAG: path.stem},
                                      run_name=rec["run_name"])
                rid = r.info.run_id
                try:
                    params = [Param(k, v) for k, v in rec["params"].items()]
                    for i in range(0, len(params), 100):  # MLflow's per-batch limits: 100 params, 1000 metrics
                        client.log_batch(rid, params=params[i : i + 100])
                    metrics = [Metric(k, v, t, step) for k, v, t, step in rec["metrics"]]
                    for i in range(0, len(metrics), 1000):
                        client.log_batch(rid, metrics=metrics[i : i + 1000])
                except MlflowException as exc:
                    if exc.error_code != ErrorCode.Name(INVALID_PARAMETER_VALUE):
                        raise
                    client.delete_run(rid)
                    _quarantine(path, f"MLflow refused it: {str(exc)[:300]}")
                    continue
                for art in rec["artifacts"]:
                    if os.path.exists(art):
                        client.log_artifact(rid, art)
                    else:
                        warnings.warn(f"MLflow record {path.name}: artifact {art} is gone, not logged")
                client.set_terminated(rid, status=rec["status"], end_time=rec["end_ms"])
                path.unlink()
                done += 1
        except Exception as exc:  # noqa: BLE001 - tracking must never break the workflow
            warnings.warn(f"MLflow store {tracking_uri()!r}: {len(pending())} job record(s) not logged, kept under {PENDING} "
                          f"for the next flush (`python -m workflow_src track`): {exc}")
    return done


def flush_command(cfg: Mapping[str, Any]) -> None:
    """The ``track`` command."""
    print(f"{flush()} MLflow run(s) logged to {tracking_uri()}; {len(pending())} record(s) pending")


VARIANT_STAGE = "variant"  # the tag `stage` of a variant's parent run
CHILD_STAGES = ("train", "quantize", "evaluate", "export")  # the jobs whose runs a variant's parent gathers
DIGEST_TAG = "qgan.params_digest"


def _all_runs(client: Any, experiment_id: str) -> List[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def link_variants(profile: str, variant_tags: List[Mapping[str, Any]]) -> int:
    """One parent run per variant and seed (tag ``stage=variant``), so that ``mlflow.search_runs(filter_string=
    "tags.stage = 'variant'")`` gives one row per row of results.csv: it holds the params of the
    variant's newest finished runs (its quantization or QAT job, evaluation and export; for FP its
    training and evaluation), their final metrics, and is the parent of those runs.  A parent is
    reused while its params are the same (a rerun of the report adds nothing) and a new one made when
    they changed (MLflow params never change).  Returns how many variants were linked; failures warn."""
    if os.environ.get(DISABLE_ENV) == "off" or not variant_tags:
        return 0
    try:
        from mlflow.entities import Metric, Param, RunStatus
        from mlflow.tracking import MlflowClient

        from ..config import FP

        _configure()
        client = MlflowClient(tracking_uri())
        exp = _experiment_id(profile)
        newest: Dict[tuple, Any] = {}
        parents: Dict[tuple, Any] = {}
        for r in sorted(_all_runs(client, exp), key=lambda r: r.info.start_time or 0):
            t = r.data.tags
            if t.get("stage") == VARIANT_STAGE:
                parents[(t.get("arch"), t.get("variant"), t.get("seed"), t.get(DIGEST_TAG))] = r
            elif t.get("stage") in CHILD_STAGES and r.info.status == RunStatus.to_string(RunStatus.FINISHED):
                newest[(t["stage"], t.get("arch"), t.get("variant", FP if t["stage"] == "train" else None), t.get("seed"))] = r
        now = _now_ms()
        for tags in variant_tags:
            arch, variant, seed = str(tags["arch"]), str(tags["variant"]), (str(tags["seed"]) if "seed" in tags else None)
            kids = [newest[k] for k in ((s, arch, variant, seed) for s in CHILD_STAGES) if k in newest]
            params: Dict[str, str] = {}
            metrics: Dict[str, float] = {}
            for kid in kids:  # the first stage's value of a key both log (an environment record) stays
                for k, v in kid.data.params.items():
                    params.setdefault(k, v)
                for k, v in kid.data.metrics.items():
                    metrics.setdefault(k, v)
            digest = hashlib.sha256(json.dumps(sorted(params.items())).encode()).hexdigest()[:16]
            parent = parents.get((arch, variant, seed, digest))
            invocation = {"workflow_id": os.environ[WORKFLOW_ENV]} if os.environ.get(WORKFLOW_ENV) else {}  # the one that linked it last
            if parent is not None and invocation and parent.data.tags.get("workflow_id") != invocation["workflow_id"]:
                client.set_tag(parent.info.run_id, "workflow_id", invocation["workflow_id"])
            if parent is None:
                run_tags = {"stage": VARIANT_STAGE, "profile": profile, DIGEST_TAG: digest, **invocation, **{k: str(v) for k, v in tags.items()}}
                parent = client.create_run(exp, start_time=min(k.info.start_time for k in kids) if kids else now, tags=run_tags,
                                           run_name=f"{VARIANT_STAGE}-{arch}-{variant}" + (f"-s{seed}" if seed is not None else ""))
                ps = [Param(k, v) for k, v in params.items()]
                for i in range(0, len(ps), 100):
                    client.log_batch(parent.info.run_id, params=ps[i : i + 100])
            ms = [Metric(k, v, now, 0) for k, v in metrics.items()]
            for i in range(0, len(ms), 1000):
                client.log_batch(parent.info.run_id, metrics=ms[i : i + 1000])
            client.set_terminated(parent.info.run_id, status="FINISHED", end_time=max((k.info.end_time or now) for k in kids) if kids else now)
            for kid in kids:
                if kid.data.tags.get("mlflow.parentRunId") != parent.info.run_id:
                    client.set_tag(kid.info.run_id, "mlflow.parentRunId", parent.info.run_id)
        return len(variant_tags)
    except Exception as exc:  # noqa: BLE001 - tracking must never break the workflow
        warnings.warn(f"MLflow store {tracking_uri()!r}: variants not linked to parent runs: {exc}")
        return 0
