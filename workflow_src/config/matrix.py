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


def cross_product(m: Dict[str, Any]) -> List[Variant]:
    """Every combination of the `matrix` section's methods, granularities and widths."""
    return [Variant(method, pc, w, a) for method in m["methods"] for pc in m["per_channel"] for w in m["w_bits"] for a in m["a_bits"]]


def variants(cfg: Dict[str, Any]) -> List[Variant]:
    """The cross product less the variants that match an entry of `matrix.exclude`."""
    drop = cfg["matrix"].get("exclude") or []
    return [v for v in cross_product(cfg["matrix"]) if not any(excluded(v, e) for e in drop)]


def imported_archs(cfg: Dict[str, Any]) -> List[str]:
    """Archs of the matrix whose FP networks come from a published checkpoint (rule import_fp)."""
    return [a for a in cfg["matrix"]["archs"] if cfg["archs"][a].get("fp_checkpoint")]


def arch_dataset(cfg: Dict[str, Any], arch: str) -> Dict[str, Any]:
    return cfg["datasets"][cfg["archs"][arch]["dataset"]]

