"""The params' JSON schema: ``params.schema.yaml`` (what no method or arch owns) completed from
the registry (the names of methods and archs, each arch's entry with its own ``model`` keys and
checkpoint formats, the params sections methods own and their per-arch overrides)."""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict

import yaml

from .. import registry

BASE_PATH = Path(__file__).with_name("params.schema.yaml")
# libyaml's parser where PyYAML has it (its wheels do): the same safe documents, several times faster
# than the pure-Python one, which took 0.17 s of every Snakefile parse reading this schema.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _without_required(schema: Dict[str, Any]) -> Dict[str, Any]:
    """An override of a section: the same keys, none of them required."""
    return {k: v for k, v in schema.items() if k != "required"}


@lru_cache(maxsize=None)
def _schema() -> Dict[str, Any]:
    schema = yaml.load(BASE_PATH.read_text(), Loader=SAFE_LOADER)
    defs, props = schema["$defs"], schema["properties"]
    defs["method_name"] = {"enum": list(registry.methods())}
    defs["arch_name"] = {"enum": list(registry.archs())}
    per_arch: Dict[str, Any] = {}
    for f in registry.method_files():
        for name, section in f.sections.items():
            if name in props:
                raise registry.RegistryError(f"{f.path.name}: PARAMS section {name!r} is already a params section")
            props[name] = section
            if name in f.per_arch:
                per_arch[name] = _without_required(section)
        schema["required"] += [name for name in f.always if name not in schema["required"]]
    entries = {}
    for a in registry.archs().values():
        entry = copy.deepcopy(defs["arch_entry"])
        entry["properties"]["model"] = {"type": "object", "additionalProperties": False, "properties": copy.deepcopy(a.model)}
        ck = entry["properties"]["fp_checkpoint"]
        if a.checkpoint_formats:
            ck["oneOf"][1]["properties"]["format"]["enum"] = list(a.checkpoint_formats)
        else:
            entry["properties"]["fp_checkpoint"] = {"description": ck["description"] + f" ({a.name} has no importer)", "type": "null"}
        entry["properties"].update(copy.deepcopy(per_arch))
        entries[a.name] = entry
    props["archs"].update(additionalProperties=False, properties=entries)
    return schema


def schema() -> Dict[str, Any]:
    """The complete params schema (a fresh copy)."""
    return copy.deepcopy(_schema())
