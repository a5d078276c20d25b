"""The experiment matrix: which quantized variants of each generator exist.  Computed here and
nowhere else: the Snakefile, the CLI, the DVC generation and the report all call :func:`variants`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

from .errors import ConfigError

FP = "fp"  # the full-precision generator's "variant" and "method" in file names and results


@dataclass(frozen=True)
class Variant:
    """One quantized configuration of one generator."""

    method: str
    per_channel: bool
    w_bits: int
    a_bits: int

    @property
    def granularity(self) -> str:
        return "channel" if self.per_channel else "tensor"

    @property
    def name(self) -> str:
        return f"{self.method}-{self.granularity}-w{self.w_bits}a{self.a_bits}"

    @classmethod
    def parse(cls, name: str) -> "Variant":
        """Inverse of :attr:`name`; raises ``ConfigError`` naming the bad value."""
        try:
            method, gran, bits = name.rsplit("-", 2)
            w, a = bits[1:].split("a")
            if gran not in ("channel", "tensor") or not bits.startswith("w"):
                raise ValueError
            return cls(method, gran == "channel", int(w), int(a))
        except ValueError:
            raise ConfigError(f"variant {name!r} is not of the form METHOD-(channel|tensor)-wWaA") from None


def excluded(v: Variant, entry: Dict[str, Any]) -> bool:
    """Whether ``v`` matches every key of one `matrix.exclude` entry (GitHub Actions' matrix
    semantics; the schema allows only Variant's field names as keys)."""
    return all(getattr(v, k) == val for k, val in entry.items())


def cross_product(cfg: Dict[str, Any], m: Dict[str, Any] | None = None) -> List[Variant]:
    """Every combination of a matrix's methods, granularities and widths (default: the `matrix`
    section; a mixed-precision method's widths are its budgets, registry ``budgets``)."""
    from .. import registry

    m = cfg["matrix"] if m is None else m
    return [Variant(method, pc, w, a) for method in m["methods"] for pc in m["per_channel"]
            for w in (registry.method(method).variant_widths(cfg, m["w_bits"]) if method in registry.methods() else m["w_bits"])
            for a in m["a_bits"]]


def included(cfg: Dict[str, Any]) -> List[List[Variant]]:
    """The variants each `matrix.include` entry adds: its own cross product, a key it leaves out
    taking the matrix's list, of the methods `matrix.methods` lists (the one list of what runs: a
    config that drops a method drops its includes too)."""
    m = cfg["matrix"]
    keys = ("per_channel", "w_bits", "a_bits")  # read one by one: which matrix keys the variant list reads is traced
    return [cross_product(cfg, {"methods": [x for x in sub.get("methods", m["methods"]) if x in m["methods"]], **{k: sub.get(k) or m[k] for k in keys}})
            for sub in m.get("include") or []]


def variants(cfg: Dict[str, Any]) -> List[Variant]:
    """The cross product less the variants that match an entry of `matrix.exclude`, then those each
    `matrix.include` entry adds (GitHub Actions' matrix semantics: include comes after exclude)."""
    drop = cfg["matrix"].get("exclude") or []
    found = [v for v in cross_product(cfg) if not any(excluded(v, e) for e in drop)]
    return list(dict.fromkeys(found + [v for vs in included(cfg) for v in vs]))


def imported_archs(cfg: Dict[str, Any]) -> List[str]:
    """Archs of the matrix whose FP networks come from a published checkpoint (rule import_fp)."""
    return [a for a in cfg["matrix"]["archs"] if cfg["archs"][a].get("fp_checkpoint")]


def arch_dataset(cfg: Dict[str, Any], arch: str) -> Dict[str, Any]:
    return cfg["datasets"][cfg["archs"][arch]["dataset"]]

