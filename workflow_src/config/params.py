"""Loading, merging and validating the params.

``params.yaml`` is the single source of truth.  Other files (``configs/paper.yaml``) are merged over
it key by key, exactly like Snakemake's ``--configfile``.  Every config is checked against one JSON
schema (:mod:`.schema`) plus the semantic rules a schema cannot state (:mod:`.checks`); every error
names the offending key and value.
"""
from __future__ import annotations

import hashlib

import copy
import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Sequence

import yaml

from ..files import atomic_write_text
from . import checks
from .errors import ConfigError
from .trace import plain
from .schema import SAFE_LOADER, schema


def deep_merge(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    """Recursive dict update (lists and scalars in ``override`` replace those in ``base``)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path) -> Dict[str, Any]:
    path = Path(path)
    try:
        with open(path) as fh:
            data = yaml.load(fh, Loader=SAFE_LOADER)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def load(paths: Iterable[str | Path], extra_checks: Sequence[Callable[[Dict[str, Any]], List[str]]] = ()) -> Dict[str, Any]:
    """Merge the given YAML files in order and validate the result."""
    cfg: Dict[str, Any] = {}
    for p in paths:
        cfg = deep_merge(cfg, load_yaml(p))
    validate(cfg, extra_checks)
    return cfg


def _key(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate(cfg: Dict[str, Any], extra_checks: Sequence[Callable[[Dict[str, Any]], List[str]]] = ()) -> None:
    """Raise :class:`ConfigError` listing every problem, each with its key and value.  ``extra_checks``:
    problems only a higher layer can see (the workflow's rule names in ``resources.rules``)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    problems: List[str] = []
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        while err.context:  # oneOf/anyOf: report the alternative that got furthest into the value
            err = max(err.context, key=lambda e: len(e.absolute_path))
        key = _key(err.absolute_path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            extra = [e for e in extra if not any(re.match(p, e) for p in err.schema.get("patternProperties", {}))]
            problems.append(f"unknown key(s) {', '.join(repr(e) for e in extra)} under {key!r}")
        elif err.validator == "required":
            problems.append(f"{key!r}: {err.message}")
        else:
            problems.append(f"key {key!r} = {json.dumps(err.instance, default=str)}: {err.message}")
    if not problems:
        problems = checks.problems(cfg) + [p for check in extra_checks for p in check(cfg)]
    if problems:
        raise ConfigError("invalid params:\n  - " + "\n  - ".join(problems))


def rule_resources(cfg: Dict[str, Any], rule: str) -> Dict[str, int]:
    """What one job of ``rule`` asks a cluster for: ``cpus`` (the rule's threads), ``mem_mb`` and
    ``runtime`` (minutes); ``resources.default`` overridden key by key by ``resources.rules.<rule>``."""
    res = cfg["resources"]
    return {**res["default"], **(res.get("rules") or {}).get(rule, {})}


def resolved_digest(cfg: Dict[str, Any]) -> str:
    """sha256 of the merged ``cfg`` as :func:`dump_resolved` writes it (its file name carries the
    first 16 digits).  Provenance, not a read of the params (:func:`.trace.plain`)."""
    return hashlib.sha256(yaml.safe_dump(plain(cfg), sort_keys=False).encode()).hexdigest()


def dump_resolved(cfg: Dict[str, Any], directory: str | Path) -> Path:
    """The merged ``cfg`` as ``directory/params-<sha256 prefix of its content>.yaml``: written once
    (atomically) and never changed, so each invocation's jobs read their own params, whatever
    another invocation (a dry run of another config) writes beside them."""
    text = yaml.safe_dump(cfg, sort_keys=False)
    path = Path(directory) / f"params-{resolved_digest(cfg)[:16]}.yaml"
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)
    return path
