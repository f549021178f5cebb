"""The import graph runs one way: cli -> jobs/batch -> methods -> core -> models (read from the source, lazy
imports inside functions included)."""

import ast
import re
import sys
from pathlib import Path

import pytest

VGEN = Path(__file__).resolve().parents[1] / "vgen"


def _module(path: Path) -> str:
    parts = path.relative_to(VGEN.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("vgen"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("vgen"))
    return out


GRAPH = {_module(p): _imports(p) for p in VGEN.rglob("*.py")}
KNOWN: set[tuple[str, str]] = set()


@pytest.mark.parametrize("package,forbidden", [
    ("vgen.models", ("vgen.core", "vgen.methods", "vgen.jobs", "vgen.batch", "vgen.cli")),
    ("vgen.core", ("vgen.methods", "vgen.jobs", "vgen.batch", "vgen.cli")),
    ("vgen.methods", ("vgen.jobs", "vgen.batch", "vgen.cli")),
])
def test_layers_import_only_downwards(package, forbidden):
    bad = sorted(
        (module, target)
        for module, targets in GRAPH.items() if module == package or module.startswith(package + ".")
        for target in targets if target.startswith(forbidden) and (module, target.rsplit(".", 1)[0]) not in KNOWN
        and (module, target) not in KNOWN
    )
    assert bad == []


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module-level", "lazy-included"])
def test_no_cycle_among_imports(top_level_only):
    """No cycle, not even through an import inside a function (a lazy import hides a cycle; it does not remove it)."""
    modules = {_module(p): p for p in VGEN.rglob("*.py")}
    edges = {m: {t for t in _imports(p, top_level_only=top_level_only) if t in modules and t != m}
             for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in edges[m]:
            if state.get(t) == 1:
                raise AssertionError(" -> ".join(stack[stack.index(t):] + [t]) if t in stack else f"{m} -> {t}")
            if t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])


def test_config_reaches_a_method_only_through_its_config_module():
    """vgen.config takes each method's section from vgen.methods.<name>.config (besides the registry lookup it
    already makes lazily); those modules stay torch-free and never import vgen.config back."""
    registry = {"vgen.methods", "vgen.methods.get_method"}
    section = re.compile(r"vgen\.methods\.\w+\.config(\.\w+)?")
    assert sorted(t for t in GRAPH["vgen.config"]
                  if t.startswith("vgen.methods") and t not in registry and not section.fullmatch(t)) == []
    for module in (m for m in GRAPH if re.fullmatch(r"vgen\.methods\.\w+\.config", m)):
        tree = ast.parse((VGEN.parent / (module.replace(".", "/") + ".py")).read_text())
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        vgen_targets = {t if t in GRAPH else t.rsplit(".", 1)[0] for t in GRAPH[module]}
        assert vgen_targets <= {"vgen.errors", "vgen.config_io"}, module
        assert "torch" not in roots and roots - {"vgen"} <= set(sys.stdlib_module_names) | {"omegaconf"}, module


METHOD_WORDS = ("vico", "zs2", "i4vgen", "streaming")


def test_core_names_no_method():
    """vgen/core is shared by the methods: no file under it names one (comments and docstrings included)."""
    named = sorted(f"{p.relative_to(VGEN)}: {w}" for p in (VGEN / "core").rglob("*.py")
                   for w in METHOD_WORDS if w in p.read_text().lower())
    assert named == []
