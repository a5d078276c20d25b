"""Dependencies point one way: the import graph of workflow_src has no cycle (function-local imports
included, so none of them can be hiding one), the bottom layer (registry, config, files) imports no
torch and nothing above it, the library never imports the workflow layer, and parsing the Snakefile
or starting the CLI imports no torch."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workflow_src"

BOTTOM = ("registry", "config", "files", "datasets.kinds")  # no torch, imports only each other
LIBRARY = ("archs", "quant", "methods", "quality", "deploy", "datasets", "utils")
WORKFLOW = ("workflow",)
REPORTING = ("reporting",)


def _modules() -> Dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def import_graph() -> Dict[str, Set[str]]:
    """``{module: modules it imports}``, every import statement counted (top level or inside a
    function).  Importing ``a.b.c`` imports the packages ``a`` and ``a.b`` first, so those count too
    (except the module's own parent packages: they are imported before it, whatever it imports)."""
    mods = _modules()
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}  # imported before this module
            for t in targets:
                parts = t.split(".")
                for i in range(1, len(parts) + 1):  # the packages on the way, and the module itself
                    prefix = ".".join(parts[:i])
                    if prefix in mods and prefix != name and prefix not in ancestors:
                        graph[name].add(prefix)
    return graph


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle of ``graph`` as a path, or [] (depth-first search)."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(n: str) -> List[str]:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def _in(module: str, layer: Tuple[str, ...]) -> bool:
    rel = module.split(".", 1)[1] if "." in module else ""
    return any(rel == p or rel.startswith(p + ".") for p in layer)


def test_the_import_graph_has_no_cycle():
    cycle = _cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_layers_point_one_way():
    wrong = []
    for module, imported in import_graph().items():
        for m in imported:
            if _in(module, BOTTOM) and not _in(m, BOTTOM) and m != "workflow_src":
                wrong.append(f"{module} (bottom layer) imports {m}")
            if _in(module, LIBRARY) and not _in(module, BOTTOM) and _in(m, WORKFLOW + REPORTING):
                wrong.append(f"{module} (library) imports {m} (workflow layer)")
            if _in(module, WORKFLOW) and _in(m, REPORTING):
                wrong.append(f"{module} (workflow) imports {m} (report, above it)")
    assert not wrong, "\n".join(sorted(wrong))


def _imported_modules(args: List[str], cwd: Path) -> Set[str]:
    """The modules a Python command imports (``-X importtime`` lists every one)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "QGAN_TRACKING": "off"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:") and "|" in line}


@pytest.mark.parametrize("configfiles", [[], ["configs/paper.yaml"]], ids=["tiny", "paper"])
def test_parsing_the_snakefile_imports_no_torch(tmp_path, configfiles):
    # as on a fresh clone: the paper profile's published StyleGAN checkpoint is not there yet
    args = ["-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "1", "report"]
    args += ["--configfile", *[str(ROOT / c) for c in configfiles]] if configfiles else []
    mods = _imported_modules(args, ROOT)
    assert "workflow_src.registry" in mods and "snakemake" in mods  # it did parse the workflow
    heavy = sorted(m for m in mods if m.split(".")[0] in ("torch", "mlflow", "onnx", "onnxruntime", "torchvision"))
    assert not heavy, f"parsing the Snakefile imported {heavy[:5]}"


def test_cli_start_up_imports_no_torch():
    for args in (["--help"], ["validate"], ["quantize", "--help"]):
        mods = _imported_modules(["-m", "workflow_src", *args], ROOT)
        assert "workflow_src.workflow.cli" in mods and not any(m.split(".")[0] == "torch" for m in mods), args
