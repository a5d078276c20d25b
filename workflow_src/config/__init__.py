"""The params (no torch): load, merge and validate them (:mod:`.params`, :mod:`.schema`,
:mod:`.checks`), and the experiment matrix (:mod:`.matrix`)."""
from .errors import ConfigError
from .matrix import FP, Variant, arch_dataset, imported_archs, variants
from .params import deep_merge, dump_resolved, load, load_yaml, rule_resources, validate
from .schema import schema

__all__ = ["ConfigError", "FP", "Variant", "arch_dataset", "imported_archs", "variants", "deep_merge", "dump_resolved", "load",
           "load_yaml", "rule_resources", "validate", "schema"]
