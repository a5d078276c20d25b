"""What each quantization method and each GAN architecture is: the one place the rest of the
project asks (rules, CLI, config validation, the params schema, DVC generation, report tables,
tests).  No torch: the Snakefile's parse reads it.

A method or an arch is ONE file, which declares itself with literals at its top level:

* ``workflow_src/methods/<file>.py``: ``METHODS = [{...}, ...]`` (one entry per method the file
  implements) and, optionally, ``PARAMS = {...}`` (the params sections these methods own);
* ``workflow_src/archs/<file>.py``: ``ARCH = {...}``.

The registry reads those literals with :mod:`ast` without importing the file (so reading what a
method is never imports torch); :meth:`Method.implementation` and :meth:`Arch.implementation`
import the file when the workflow runs it.  The keys of each literal are checked here and every
mistake names the file and the key.

Method entry (``METHODS``)::

    name     results.csv's ``method`` and the variant prefix, e.g. "ptq-minmax"
    kind     "ptq" (calibrated ranges), "reconstruction" (block reconstruction) or "qat"
             (trains against the FP generator: rule ``qat``, with a per-step loss log)
    title    its row title in the tables
    run      the function in the file: run(generator, calib_inputs, variant, arch_cfg, cfg, *,
             arch, ckpt, tracker, [distill, discriminator, perceptual, losses_out]) -> (model, QuantSpec, info)
    needs    what it needs besides the FP generator and the calibration inputs (NEEDS); an entry
             is a name or {"need": name, "when": {"<section>.<key>": value}} (per-arch sections merged)
    reads    params keys it reads besides COMMON_READS and those its needs imply (NEED_READS):
             the keys whose change reruns its jobs ("{arch}" is the arch)
    tables   optional: the tables it appears in (default: by kind, TABLES)
    requires optional: params keys that must be set when it is in matrix.methods
    sweep    optional, true for one method: the quantile sweep (paper Figure 1) runs it for every
             quantile pair and ``archs.<arch>.quantiles: sweep`` takes the best
    budgets  optional, mixed precision: the params key listing its size budgets (average bits per
             weight), which replace matrix.w_bits as its variants' ``w_bits``
    widths   with ``budgets``: the params key listing the widths its layers take (the quantile sweep
             runs at each, and the method reads every one's pair)

File-level ``PARAMS`` (optional)::

    sections  {name: JSON schema}: top-level params sections the file's methods own
    always    [name, ...]: of those, the ones every params file must hold (other stages read them)
    per_arch  [name, ...]: of those, the ones ``archs.<arch>.<name>`` may override key by key
    requires  params keys that must be set when one of the file's methods is in matrix.methods
    at_most   [[key, bound_key, why], ...]: key <= bound_key when one of them is in the matrix

Arch entry (``ARCH``)::

    name     the arch's key under ``archs:`` and in matrix.archs
    class    the GANArch subclass in the file
    title    its column title in the tables
    model    JSON schema properties of ``archs.<name>.model``
    per_level  optional: model keys that list one width per resolution level (4 .. resolution)
    levels_above  optional: levels between the last per-level width and the output resolution (0;
             1 when the last layer upsamples to the full resolution: widths for 4 .. resolution/2)
    checkpoint_formats  optional: {format: {"layout": model.layout it imports into}
             or {"refused": why it cannot be imported}} (``archs.<name>.fp_checkpoint.format``)
"""
from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple

PACKAGE = Path(__file__).resolve().parent

KINDS = ("ptq", "reconstruction", "qat")
NEEDS = ("quantiles", "discriminator", "perceptual", "distill", "validation", "sensitivity")
# Which kinds each table shows by default (the paper's Table 3: post-training methods; Table 4:
# vanilla PTQ against QAT).
TABLES = {"table3": ("ptq", "reconstruction"), "table4": ("ptq", "qat")}
# Every method calibrates the arch's generator on the first calibration.images inputs of the
# distillation set; those that feed them in batches of distill.batch_size name it in their own
# `reads` (BRECQ batches by brecq.batch_size).
COMMON_READS = ("calibration.images", "archs.{arch}.model", "archs.{arch}.resolution")
# What a need implies the method reads: the quantile pair (or the sweep's best pair) and the
# quantile observer's moving-average momentum; the perceptual network's section; the validation
# inputs (workflow/distill.py: validation_inputs), the feature space a validation qFID is measured in, and
# the batch size and bootstrap count it is scored with (the spread a new epoch must beat: qat.select_spreads).
NEED_READS = {"quantiles": ("calibration.momentum", "archs.{arch}.quantiles"), "perceptual": ("perceptual",),
              "validation": ("sweep.validation_samples", "features", "eval.batch_size", "eval.bootstrap")}


class RegistryError(ValueError):
    """A method or arch file declares itself wrongly; the message names the file and the key."""


# ------------------------------------------------------------------------------ reading literals
def _literals(path: Path, names: Tuple[str, ...]) -> Dict[str, Any]:
    """The values of the top-level assignments ``NAME = <literal>`` in ``path`` (without importing it)."""
    found: Dict[str, Any] = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in names:
                try:
                    found[name] = ast.literal_eval(node.value)
                except ValueError:
                    raise RegistryError(f"{_rel(path)}: {name} must be a literal (the registry reads it without importing the file)") from None
    return found


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def _keys(where: str, entry: Any, required: Tuple[str, ...], optional: Tuple[str, ...]) -> Dict[str, Any]:
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: must be a dict, got {type(entry).__name__}")
    missing = [k for k in required if k not in entry]
    unknown = sorted(set(entry) - set(required) - set(optional))
    if missing or unknown:
        raise RegistryError(f"{where}: " + "; ".join(([f"lacks {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])))
    return entry


# ------------------------------------------------------------------------------ methods
@dataclass(frozen=True)
class Need:
    """A need, possibly conditional on a params value (``when``: {"<section>.<key>": value})."""

    name: str
    when: Tuple[Tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class MethodFile:
    """One file of ``workflow_src/methods`` and the params sections its methods own."""

    module: str
    path: Path
    sections: Dict[str, Any] = field(default_factory=dict)
    always: Tuple[str, ...] = ()
    per_arch: Tuple[str, ...] = ()
    requires: Tuple[str, ...] = ()
    at_most: Tuple[Tuple[str, str, str], ...] = ()
    methods: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Method:
    name: str
    kind: str
    title: str
    module: str
    run: str
    needs: Tuple[Need, ...]
    reads: Tuple[str, ...]
    tables: Tuple[str, ...]
    requires: Tuple[str, ...]
    file: MethodFile
    sweep: bool = False
    budgets: str = ""  # mixed precision: the params key of its budgets (its variants' w_bits)
    widths: str = ""  # mixed precision: the params key of its layers' widths

    @property
    def mixed(self) -> bool:
        return bool(self.budgets)

    def variant_widths(self, cfg: Mapping[str, Any], w_bits: List[int]) -> List[int]:
        """Its variants' ``w_bits`` in a matrix of weight widths ``w_bits``: those, or a mixed-precision method's budgets."""
        return [int(b) for b in lookup(cfg, self.budgets) or ()] if self.budgets else list(w_bits)

    def layer_widths(self, cfg: Mapping[str, Any], w_bits: int) -> List[int]:
        """The weight widths a variant of ``w_bits`` gives its layers: that one, or a mixed method's widths."""
        return sorted(int(b) for b in lookup(cfg, self.widths) or ()) if self.budgets else [int(w_bits)]

    @property
    def trains(self) -> bool:
        """QAT-like: trained against the FP generator (rule ``qat``, a per-step loss log)."""
        return self.kind == "qat"

    @property
    def rule(self) -> str:
        return "qat" if self.trains else "quantize"

    def may_need(self, need: str) -> bool:
        return any(n.name == need for n in self.needs)

    def needs_for(self, cfg: Mapping[str, Any], arch: str) -> frozenset:
        """The needs that hold for ``arch`` under ``cfg`` (conditions read per-arch sections merged)."""
        return frozenset(n.name for n in self.needs
                         if all(section_value(cfg, arch, key, self.file.per_arch) == value for key, value in n.when))

    def params_keys(self, cfg: Mapping[str, Any], arch: str) -> List[str]:
        """The params keys a job of this method reads for ``arch`` under ``cfg``, in order ("{arch}"
        to be filled): those of the needs that hold there (a QAT that keeps its last epoch reads
        nothing the validation scorer would).  The keys a need's condition tests are the method's
        own section, which ``reads`` names."""
        held = self.needs_for(cfg, arch)
        keys = list(COMMON_READS)
        for n in self.needs:
            if n.name in held:
                keys += NEED_READS.get(n.name, ())
        keys += self.reads
        if "quantiles" in held and (own := own_quantiles(cfg, arch, self.name)[1]):
            keys.append(own)  # the method's own pair, where its section sets one (the paper's QAT pairs)
        return list(dict.fromkeys(keys))

    def implementation(self) -> Callable:
        # Imported on use only: reading the registry (the Snakefile's parse, the CLI's start-up,
        # config validation) must not import torch.
        return getattr(importlib.import_module(self.module), self.run)


def lookup(cfg: Mapping[str, Any], key: str) -> Any:
    """``cfg``'s value at the dotted ``key``; None when unset (config validation names the missing key)."""
    cur: Any = cfg
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def section_value(cfg: Mapping[str, Any], arch: str, key: str, per_arch: Tuple[str, ...] = ()) -> Any:
    """``cfg[<section>][...]``, with ``archs.<arch>.<section>`` merged over it when the section is
    per-arch; None when absent."""
    section, _, rest = key.partition(".")
    cur: Any = cfg.get(section)
    if section in per_arch:
        override: Any = (cfg["archs"][arch].get(section) or {})
        for part in rest.split("."):
            override = override.get(part) if isinstance(override, dict) else None
        if override is not None:
            return override
    for part in rest.split(".") if rest else ():
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def own_quantiles(cfg: Mapping[str, Any], arch: str, name: str) -> Tuple[Any, str]:
    """``(pair, key)`` when method ``name``'s own params section sets its own quantile pair (QAT:
    ``qat.quantiles``, overridable as ``archs.<arch>.qat.quantiles``: the paper's QAT pairs differ
    from its PTQ pairs), else ``(None, "")``: the method uses the arch's PTQ pair."""
    m = method(name)
    for section in m.file.sections:
        value = section_value(cfg, arch, f"{section}.quantiles", m.file.per_arch)
        if isinstance(value, dict):
            per_arch = section in m.file.per_arch and isinstance((cfg["archs"][arch].get(section) or {}).get("quantiles"), dict)
            return value, f"archs.{arch}.{section}.quantiles" if per_arch else f"{section}.quantiles"
    return None, ""


def _need(where: str, entry: Any) -> Need:
    if isinstance(entry, str):
        entry = {"need": entry}
    entry = _keys(where, entry, ("need",), ("when",))
    if entry["need"] not in NEEDS:
        raise RegistryError(f"{where}: need {entry['need']!r} is not one of {list(NEEDS)}")
    return Need(entry["need"], tuple(sorted((entry.get("when") or {}).items())))


def _method_file(path: Path) -> Tuple[MethodFile, List[Method]]:
    module = f"{PACKAGE.name}.methods.{path.stem}"
    lits = _literals(path, ("METHODS", "PARAMS"))
    if "METHODS" not in lits:
        return MethodFile(module, path), []
    where = _rel(path)
    params = _keys(f"{where}: PARAMS", lits.get("PARAMS", {}), (), ("sections", "always", "per_arch", "requires", "at_most"))
    entries = lits["METHODS"]
    if not isinstance(entries, list) or not entries:
        raise RegistryError(f"{where}: METHODS must be a non-empty list of dicts")
    mfile = MethodFile(module, path, dict(params.get("sections", {})), tuple(params.get("always", ())), tuple(params.get("per_arch", ())),
                       tuple(params.get("requires", ())), tuple(tuple(c) for c in params.get("at_most", ())),
                       tuple(e.get("name", "?") for e in entries if isinstance(e, dict)))
    for key in ("always", "per_arch"):
        unknown = sorted(set(getattr(mfile, key)) - set(mfile.sections))
        if unknown:
            raise RegistryError(f"{where}: PARAMS {key} names {unknown}, which are not in its sections")
    methods = []
    for i, e in enumerate(entries):
        w = f"{where}: METHODS[{i}]"
        e = _keys(w, e, ("name", "kind", "title", "run"), ("needs", "reads", "tables", "requires", "sweep", "budgets", "widths"))
        if bool(e.get("budgets")) != bool(e.get("widths")):
            raise RegistryError(f"{w}: 'budgets' and 'widths' go together (a mixed-precision method)")
        if e["kind"] not in KINDS:
            raise RegistryError(f"{w}: kind {e['kind']!r} is not one of {list(KINDS)}")
        tables = tuple(e.get("tables", [t for t, kinds in TABLES.items() if e["kind"] in kinds]))
        bad = sorted(set(tables) - set(TABLES))
        if bad:
            raise RegistryError(f"{w}: tables {bad} unknown (known: {sorted(TABLES)})")
        methods.append(Method(e["name"], e["kind"], e["title"], module, e["run"], tuple(_need(w, n) for n in e.get("needs", ())),
                              tuple(e.get("reads", ())), tables, tuple(e.get("requires", ())), mfile, bool(e.get("sweep", False)),
                              str(e.get("budgets", "")), str(e.get("widths", ""))))
    return mfile, methods


@lru_cache(maxsize=None)
def _methods() -> Tuple[Tuple[MethodFile, ...], Dict[str, Method]]:
    files, found = [], []
    for path in sorted((PACKAGE / "methods").glob("*.py")):
        mfile, ms = _method_file(path)
        if ms:
            files.append(mfile)
            found += ms
    by_name: Dict[str, Method] = {}
    for m in sorted(found, key=lambda m: KINDS.index(m.kind)):  # stable: files, then their order
        if m.name in by_name:
            raise RegistryError(f"method {m.name!r} is declared twice ({by_name[m.name].module}, {m.module})")
        by_name[m.name] = m
    return tuple(files), by_name


def methods() -> Dict[str, Method]:
    """Every method by name, in report order (by kind, then file, then declaration)."""
    return dict(_methods()[1])


def method_files() -> Tuple[MethodFile, ...]:
    return _methods()[0]


def method(name: str) -> Method:
    try:
        return _methods()[1][name]
    except KeyError:
        raise KeyError(f"method {name!r} is not implemented; implemented methods: {sorted(_methods()[1])}") from None


def methods_in_table(table: str) -> List[str]:
    return [m.name for m in _methods()[1].values() if table in m.tables]


def swept_method() -> Method:
    """The method the quantile sweep runs (the one declared with ``"sweep": True``)."""
    swept = [m for m in _methods()[1].values() if m.sweep]
    if len(swept) != 1:
        raise RegistryError(f"exactly one method must declare \"sweep\": True, found {[m.name for m in swept]}")
    return swept[0]


def trained_methods() -> List[str]:
    return [m.name for m in _methods()[1].values() if m.trains]


# ------------------------------------------------------------------------------ archs
@dataclass(frozen=True)
class Arch:
    name: str
    title: str
    module: str
    cls: str
    model: Dict[str, Any]
    per_level: Tuple[str, ...]
    checkpoint_formats: Dict[str, Dict[str, str]]
    levels_above: int = 0

    def implementation(self) -> type:
        """The GANArch subclass (its ``name`` set to the registered name)."""
        # Imported on use only: reading the registry must not import torch.
        cls = getattr(importlib.import_module(self.module), self.cls)
        cls.name = self.name
        return cls


@lru_cache(maxsize=None)
def _archs() -> Dict[str, Arch]:
    found: Dict[str, Arch] = {}
    for path in sorted((PACKAGE / "archs").glob("*.py")):
        lits = _literals(path, ("ARCH",))
        if "ARCH" not in lits:
            continue
        where = f"{_rel(path)}: ARCH"
        e = _keys(where, lits["ARCH"], ("name", "class", "title", "model"), ("per_level", "checkpoint_formats", "levels_above"))
        for fmt, how in e.get("checkpoint_formats", {}).items():
            _keys(f"{where}: checkpoint_formats.{fmt}", how, (), ("layout", "refused"))
            if len(how) != 1:
                raise RegistryError(f"{where}: checkpoint_formats.{fmt} needs exactly one of 'layout', 'refused'")
        if e["name"] in found:
            raise RegistryError(f"arch {e['name']!r} is declared twice ({found[e['name']].module}, {path.stem})")
        found[e["name"]] = Arch(e["name"], e["title"], f"{PACKAGE.name}.archs.{path.stem}", e["class"], dict(e["model"]),
                                tuple(e.get("per_level", ())), dict(e.get("checkpoint_formats", {})),
                                int(e.get("levels_above", 0)))
    return dict(sorted(found.items()))


def archs() -> Dict[str, Arch]:
    """Every arch by name (sorted by name: the column order of the tables)."""
    return dict(_archs())


def arch(name: str) -> Arch:
    try:
        return _archs()[name]
    except KeyError:
        raise KeyError(f"unknown arch {name!r}; known: {sorted(_archs())}") from None


def refused_checkpoint_formats() -> Dict[str, str]:
    """Published checkpoint formats no arch can import, with the reason."""
    return {fmt: how["refused"] for a in _archs().values() for fmt, how in a.checkpoint_formats.items() if "refused" in how}
