"""Resumable checkpoints that only ever continue the same work.

A checkpoint (FP training's ``models/s<seed>/fp/<arch>.ckpt.pt``, BRECQ's per block and QAT's per epoch
``<out>.ckpt.pt``) carries a *fingerprint* of what made it:

* ``params``: the values of the params keys the job reads (``workflow.stages.param_values``, the keys Snakemake
  reruns the job on) plus what the job derives from its inputs (a dataset's split digests, the FP
  weights, ...), as canonical JSON;
* ``code``: the sha256 of every source file of the package the job's code runs: the modules named
  as entry points and, transitively, every package module they import, at module level or inside a
  function (read from the source, so the set is the same in every process), except the
  bookkeeping modules (:data:`BOOKKEEPING`).

A checkpoint whose fingerprint differs from the job's is not resumed: the job starts over and says
why in its log.  Snakemake promises a rerun from scratch when params or code change; without the
fingerprint a resumed job would mix the old settings' first steps with the new settings' last.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

import torch

from .utils import torch_load

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = __name__.rpartition(".")[0]
# Modules that record or describe a job but compute nothing of it (MLflow logging, the params keys
# of each rule, this module): their imports are not followed and their edits restart no job.
BOOKKEEPING = frozenset(f"{PACKAGE}.{m}" for m in ("workflow.tracking", "workflow.stages", "resume"))


def _module_file(module: str) -> Optional[Path]:
    """The source file of package module ``module`` (None for an attribute or a foreign name)."""
    base = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=None)
def _imported(module: str, path: Path) -> frozenset[str]:
    """Package modules (and possibly attributes) that ``module`` imports anywhere in its source,
    function-level imports included.  Read once per process, like :func:`source_digests`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from . import data`: a module
    return frozenset(m for m in found if (m == PACKAGE or m.startswith(PACKAGE + ".")) and m not in BOOKKEEPING)


@functools.lru_cache(maxsize=None)
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_sources() -> None:
    """Parse and hash every source file of the package now: the warm process does, so that the jobs
    it forks find them read (it forks none after a source changes: they would be stale)."""
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        _imported(".".join(rel[:-1] if rel[-1] == "__init__" else rel), path)
        _sha256(path)


@functools.lru_cache(maxsize=None)
def source_digests(entry_modules: tuple[str, ...]) -> Dict[str, str]:
    """``{file relative to the package's parent: sha256}`` for ``entry_modules`` and every package
    module they import, transitively (parent packages included: importing a module runs them)."""
    todo, files = list(entry_modules), {}
    while todo:
        module = todo.pop()
        if module in files:
            continue
        files[module] = path = _module_file(module)
        if path is None:
            continue
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(_imported(module, path))
    return {p.relative_to(PACKAGE_DIR.parent).as_posix(): _sha256(p)
            for p in sorted(p for p in files.values() if p is not None)}


def tensor_digest(*objs: Any) -> str:
    """sha256 of tensors (and nested dicts/lists of them, e.g. a state dict) by value: what a job
    derives from an input file, independent of how the file was serialised."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, Mapping):
            for k in sorted(obj):
                h.update(str(k).encode())
                feed(obj[k])
        elif isinstance(obj, (list, tuple)):
            for x in obj:
                feed(x)
        elif isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(obj).encode())

    for obj in objs:
        feed(obj)
    return h.hexdigest()


def fingerprint(params: Mapping[str, Any], code: Iterable[str]) -> Dict[str, Any]:
    """What made a checkpoint: ``params`` (JSON-able) and the sources of the ``code`` modules."""
    return {"params": json.dumps(params, sort_keys=True, default=str), "code": source_digests(tuple(sorted(code)))}


def modules_of(*objs: Any) -> list:
    """The modules defining the classes of ``objs`` (``None`` skipped): code a job loads by name
    (an arch from the registry), which the import closure of its own module cannot see."""
    return [type(o).__module__ for o in objs if o is not None]


def job_fingerprint(job_params: Optional[Mapping[str, Any]], code: Iterable[str], **derived: Any) -> Dict[str, Any]:
    """The fingerprint of a workflow job: ``job_params``, the values of the params keys it reads
    (``workflow.stages.param_values``, computed by the stage that runs it) and ``derived`` values
    (digests of its inputs, settings it computed)."""
    return fingerprint({"params": dict(job_params or {}), **derived}, code)


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    if not isinstance(saved, Mapping) or "params" not in saved or "code" not in saved:
        return "it carries no fingerprint (written by an older version)"
    why = []
    old, new = _flat(json.loads(saved["params"])), _flat(json.loads(current["params"]))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>"))
    if changed:
        shown = ", ".join(f"{k}: {old.get(k, '<unset>')} -> {new.get(k, '<unset>')}" for k in changed[:6])
        why.append(f"params differ ({shown}{', ...' if len(changed) > 6 else ''})")
    files = sorted(f for f in saved["code"].keys() | current["code"].keys() if saved["code"].get(f) != current["code"].get(f))
    if files:
        why.append(f"code differs ({', '.join(files[:6])}{', ...' if len(files) > 6 else ''})")
    return "; ".join(why)


def _flat(obj: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(obj, Mapping):
        out: Dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def load_checkpoint(ckpt: str | Path, fp: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The content of checkpoint ``ckpt`` if it exists and was made by the same params and code
    (``fp``); otherwise None, and a checkpoint made by other params or code is deleted with a
    line in the log saying what differs."""
    ckpt = Path(ckpt)
    if not ckpt.exists():
        return None
    saved = torch_load(ckpt)
    if saved.get("fingerprint") == fp:
        return saved
    print(f"not resuming from {ckpt}: {_differences(saved.get('fingerprint'), fp)}; starting over", flush=True)
    ckpt.unlink()
    return None


def log_beside(ckpt: str | Path) -> Path:
    """The loss log that grows beside checkpoint ``ckpt`` (a workflow manager deletes a job's
    outputs before rerunning it, never this) and is copied to the job's output at its end."""
    return Path(ckpt).with_suffix(".losses.csv")


def finish(ckpt: str | Path, *beside: str | Path) -> None:
    """A finished job's last step: delete its checkpoint, then what grew beside it (its loss log).
    In this order a kill at any moment leaves either the checkpoint with its complete log (the job
    resumes) or no checkpoint (the job, rerun, starts over)."""
    Path(ckpt).unlink(missing_ok=True)
    for path in beside:
        Path(path).unlink(missing_ok=True)
