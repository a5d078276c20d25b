"""Which params keys a job reads, recorded as it runs.

A stage declares the params keys it reads (:mod:`workflow_src.workflow.stages`); Snakemake and DVC
rerun a job when one of them changes.  A key the stage reads but does not declare is a missed rerun,
one it declares but never reads a needless one.  With ``$QGAN_TRACE_PARAMS`` naming a directory,
``python -m workflow_src`` hands its stage the params as :class:`Traced` and writes there, per job,
every dotted key the stage read (``tests/test_workflow.py`` compares them with the declarations).

A read is a leaf (a value that is not a section) handed out by ``[]``, ``get``, ``items``,
``values``, ``**`` or ``dict(...)``, a lookup of an absent key (its default is a read of that key),
or a section's list of keys (iterating it); ``copy.deepcopy`` reads every leaf below.  A section
handed out is not yet a read: the leaves taken from it are.  :func:`plain` unwraps the params
unrecorded, for what is no input to a stage's computation: the provenance digest on the results page,
and deciding which keys a job declares and their values (:func:`..workflow.stages.param_keys`).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Set

TRACE_ENV = "QGAN_TRACE_PARAMS"


class Traced(dict):
    """The params (or a section of them, at ``prefix``) recording the keys read into ``reads``."""

    def __init__(self, data: Mapping[str, Any], reads: Set[str], prefix: str = ""):
        super().__init__({k: Traced(v, reads, f"{prefix}{k}.") if isinstance(v, dict) else v for k, v in data.items()})
        self._reads, self._prefix = reads, prefix

    def _handed(self, key: Any, value: Any) -> Any:
        if not isinstance(value, Traced):
            self._reads.add(f"{self._prefix}{key}")
        return value

    def __getitem__(self, key: Any) -> Any:
        return self._handed(key, super().__getitem__(key))

    def get(self, key: Any, default: Any = None) -> Any:
        if dict.__contains__(self, key):
            return self[key]
        self._reads.add(f"{self._prefix}{key}")
        return default

    def __contains__(self, key: Any) -> bool:
        found = dict.__contains__(self, key)
        if not found:
            self._reads.add(f"{self._prefix}{key}")
        return found

    def _listed(self) -> list:
        """The section's keys, handed out: which keys it has is a read of the section (an empty one too)."""
        if self._prefix:
            self._reads.add(self._prefix[:-1])
        return list(dict.keys(self))

    def __len__(self) -> int:  # `if section:`, `section or {}`: whether it is empty is a read of it
        return len(self._listed())

    # overriding __iter__ also makes `dict(t)` and `{**t}` go through keys() and __getitem__
    def __iter__(self) -> Iterator[Any]:
        return iter(self._listed())

    def keys(self):  # type: ignore[override]
        return self._listed()

    def items(self):  # type: ignore[override]
        return [(k, self[k]) for k in self._listed()]

    def values(self):  # type: ignore[override]
        return [self[k] for k in self._listed()]

    def __deepcopy__(self, memo: Dict[int, Any]) -> Dict[str, Any]:
        return {k: copy.deepcopy(v, memo) for k, v in self.items()}

    def __copy__(self) -> Dict[str, Any]:
        return dict(self.items())

    def __reduce__(self):  # pickled (a worker process): plain, every leaf read
        return (dict, (copy.deepcopy(self),))


def plain(cfg: Mapping[str, Any]) -> Any:
    """``cfg`` as plain dicts, nothing recorded (the params as loaded are returned as they are: the
    Snakefile asks for every job's keys)."""
    if isinstance(cfg, Traced):
        return {k: plain(v) for k, v in dict.items(cfg)}
    return cfg


def write_reads(directory: str | Path, name: str, rule: str, wildcards: Mapping[str, str], reads: Set[str]) -> Path:
    """``directory/name.json``: the job's rule, wildcards and the sorted keys it read."""
    path = Path(directory) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rule": rule, "wildcards": dict(wildcards), "reads": sorted(reads)}, indent=1) + "\n")
    return path
